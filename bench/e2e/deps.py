"""Install what the benchmark needs on demand: Debian packages and PyPI packages."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys

# Debian package -> a file it provides (checked first, so an installed tool costs nothing).
DEBIAN_PACKAGES = {
    "gcc": "/usr/bin/gcc",
    "iproute2": "/usr/sbin/ip",  # ip, nstat
    "ethtool": "/usr/sbin/ethtool",
    "nftables": "/usr/sbin/nft",
    "nginx": "/usr/sbin/nginx",
    "libnginx-mod-stream": "/usr/lib/nginx/modules/ngx_stream_module.so",
    "util-linux": "/usr/bin/nsenter",
    "linux-perf": "/usr/bin/perf",  # for the profile that explains the gaps
}

POLICY_RC_D = "/usr/sbin/policy-rc.d"


def _dpkg_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.strip() == "install ok installed"


def ensure_debian_packages(packages: dict[str, str] = DEBIAN_PACKAGES) -> None:
    missing = [
        name for name, path in packages.items()
        if not os.path.exists(path) or not _dpkg_installed(name)
    ]
    if not missing:
        return
    print(f"[deps] installing Debian packages: {' '.join(missing)}", flush=True)
    # policy-rc.d exit 101 keeps the nginx package from starting a system-wide nginx.
    created_policy = False
    if not os.path.exists(POLICY_RC_D):
        with open(POLICY_RC_D, "w") as handle:
            handle.write("#!/bin/sh\nexit 101\n")
        os.chmod(POLICY_RC_D, 0o755)
        created_policy = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    finally:
        if created_policy:
            os.unlink(POLICY_RC_D)


def ensure_python_module(module: str, pip_name: str | None = None) -> None:
    try:
        importlib.import_module(module)
        return
    except ImportError:
        pass
    print(f"[deps] pip installing {pip_name or module} into {sys.executable}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", pip_name or module], check=True)
    importlib.invalidate_caches()
    importlib.import_module(module)


def ensure_all() -> None:
    ensure_debian_packages()
    ensure_python_module("matplotlib")
    if shutil.which("nsenter") is None:
        raise SystemExit("nsenter not found after installing util-linux")
