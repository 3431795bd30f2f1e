"""All ctypes access to the system libbpf (libbpf.so.1, version 1.0 or newer).

Every symbol used has argtypes and restype. libbpf's int functions return -errno and its
pointer functions return NULL with errno set; both become OSError with the errno text.

Over 300 lines because it is one binding: the ctypes prototypes of every libbpf call ebpflb
makes sit next to their thin wrappers, so a reader checks both against libbpf.h in one place."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Callable, Optional

XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_REPLACE = 16  # swap the attached program only if it is still old_prog_fd's


class BpfObjectOpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts of libbpf 1.1 (libbpf.h); later versions only append."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_unused_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_char_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (bpf.h)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class BpfXdpAttachOpts(ctypes.Structure):
    """struct bpf_xdp_attach_opts (libbpf.h): 16 bytes, old_prog_fd only."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("old_prog_fd", ctypes.c_int),
    ]


class XdpMd(ctypes.Structure):
    """struct xdp_md (uapi linux/bpf.h): the context BPF_PROG_TEST_RUN takes for an XDP program,
    to say which device a test packet arrives on."""

    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_SIGNATURES = {
    "bpf_object__open_file": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.POINTER(BpfObjectOpenOpts)]),
    "bpf_object__load": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_object__close": (None, [ctypes.c_void_p]),
    "bpf_object__find_program_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_object__find_map_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_program__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_program__pin": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_bool]),
    "bpf_map__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__value_size": (ctypes.c_uint32, [ctypes.c_void_p]),
    "bpf_map__initial_value": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]),
    "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]),
    "bpf_prog_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
    "bpf_xdp_attach": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]),
    "bpf_xdp_detach": (ctypes.c_int, [ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p]),
    "bpf_xdp_query_id": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]),
    "bpf_link_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]),
    "bpf_link_update": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]),
    "bpf_obj_pin": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p]),
    "bpf_prog_test_run_opts": (ctypes.c_int, [ctypes.c_int, ctypes.POINTER(BpfTestRunOpts)]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "libbpf_set_print": (ctypes.c_void_p, [ctypes.c_void_p]),
    "libbpf_probe_bpf_prog_type": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    "libbpf_probe_bpf_helper": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]),
    "btf__load_vmlinux_btf": (ctypes.c_void_p, []),
    "btf__find_by_name_kind": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__free": (None, [ctypes.c_void_p]),
}


def _open_library() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise OSError("libbpf.so.1 not found: install libbpf 1.0 or newer (Debian: apt-get install libbpf1)")


class LibBpf:
    """The loaded library with typed symbols; use the module-level `lib()`."""

    bpf_object__open_file: Callable[..., Any]
    bpf_object__load: Callable[..., Any]
    bpf_object__close: Callable[..., Any]
    bpf_object__find_program_by_name: Callable[..., Any]
    bpf_object__find_map_by_name: Callable[..., Any]
    bpf_program__fd: Callable[..., Any]
    bpf_program__pin: Callable[..., Any]
    bpf_program__set_autoload: Callable[..., Any]
    bpf_map__fd: Callable[..., Any]
    bpf_map__value_size: Callable[..., Any]
    bpf_map__initial_value: Callable[..., Any]
    bpf_map_lookup_elem: Callable[..., Any]
    bpf_map_update_elem: Callable[..., Any]
    bpf_obj_get: Callable[..., Any]
    bpf_obj_get_info_by_fd: Callable[..., Any]
    bpf_prog_get_fd_by_id: Callable[..., Any]
    bpf_xdp_attach: Callable[..., Any]
    bpf_xdp_detach: Callable[..., Any]
    bpf_xdp_query_id: Callable[..., Any]
    bpf_link_create: Callable[..., Any]
    bpf_link_update: Callable[..., Any]
    bpf_obj_pin: Callable[..., Any]
    bpf_prog_test_run_opts: Callable[..., Any]
    libbpf_num_possible_cpus: Callable[..., Any]
    libbpf_set_print: Callable[..., Any]
    libbpf_probe_bpf_prog_type: Callable[..., Any]
    libbpf_probe_bpf_helper: Callable[..., Any]
    btf__load_vmlinux_btf: Callable[..., Any]
    btf__find_by_name_kind: Callable[..., Any]
    btf__free: Callable[..., Any]

    def __init__(self) -> None:
        self._dll = _open_library()
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self._dll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        self.log: list[str] = []
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.vasprintf.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_void_p]
        self._libc.free.argtypes = [ctypes.c_void_p]
        self._print_cb = PRINT_FN(self._collect)  # kept alive as long as libbpf may call it
        self._dll.libbpf_set_print(ctypes.cast(self._print_cb, ctypes.c_void_p))

    def _collect(self, level: int, fmt: bytes, args: int) -> int:
        """Keeps libbpf's messages for error reports instead of printing them to stderr. Each is
        kept whole: a failed load's whole verifier log comes as one message."""
        text = ctypes.c_void_p()
        size = self._libc.vasprintf(ctypes.byref(text), fmt, args)
        if size < 0:
            return 0
        try:
            self.log.append(ctypes.string_at(text.value or 0, size).decode(errors="replace").rstrip())
        finally:
            self._libc.free(text)
        del self.log[:-400]
        return 0


_lib: Optional[LibBpf] = None


def lib() -> LibBpf:
    global _lib
    if _lib is None:
        _lib = LibBpf()
    return _lib


def check(ret: int, what: str) -> int:
    """Raises OSError for a libbpf int return (-errno); returns it otherwise."""
    if ret < 0:
        err = -ret
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def check_ptr(ptr: Optional[int], what: str) -> int:
    """Raises OSError for a libbpf NULL pointer return (errno set)."""
    if not ptr:
        err = ctypes.get_errno() or 22
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ptr


class BpfObject:
    """An opened (and then loaded) BPF object file; closing it drops unpinned programs."""

    def __init__(self, path: str, pin_root: Optional[str] = None) -> None:
        self._lib = lib()
        opts = BpfObjectOpenOpts(sz=ctypes.sizeof(BpfObjectOpenOpts))
        if pin_root:
            opts.pin_root_path = pin_root.encode()
        self._ptr = check_ptr(self._lib.bpf_object__open_file(path.encode(), ctypes.byref(opts)), f"open {path}")

    def section(self, name: str) -> ctypes.Array:
        """Writable view of an internal map's initial value (.rodata.*), before load."""
        map_ptr = check_ptr(self._lib.bpf_object__find_map_by_name(self._ptr, name.encode()), f"map {name}")
        size = ctypes.c_size_t()
        data = check_ptr(self._lib.bpf_map__initial_value(map_ptr, ctypes.byref(size)), f"initial value of {name}")
        return (ctypes.c_char * size.value).from_address(data)

    def load(self) -> None:
        check(self._lib.bpf_object__load(self._ptr), "load BPF object")

    def program_fd(self, name: str) -> int:
        prog = check_ptr(self._lib.bpf_object__find_program_by_name(self._ptr, name.encode()), f"program {name}")
        return check(self._lib.bpf_program__fd(prog), f"fd of program {name}")

    def set_autoload(self, name: str, autoload: bool) -> None:
        """Before load: whether load() loads this program (off: it is left out, fd unavailable)."""
        prog = check_ptr(self._lib.bpf_object__find_program_by_name(self._ptr, name.encode()), f"program {name}")
        check(self._lib.bpf_program__set_autoload(prog, autoload), f"autoload of program {name}")

    def pin_program(self, name: str, path: str) -> None:
        prog = check_ptr(self._lib.bpf_object__find_program_by_name(self._ptr, name.encode()), f"program {name}")
        check(self._lib.bpf_program__pin(prog, path.encode()), f"pin {path}")

    def map_fd(self, name: str) -> int:
        map_ptr = check_ptr(self._lib.bpf_object__find_map_by_name(self._ptr, name.encode()), f"map {name}")
        return check(self._lib.bpf_map__fd(map_ptr), f"fd of map {name}")

    def value_size(self, name: str) -> int:
        map_ptr = check_ptr(self._lib.bpf_object__find_map_by_name(self._ptr, name.encode()), f"map {name}")
        return int(self._lib.bpf_map__value_size(map_ptr))

    def close(self) -> None:
        if self._ptr:
            self._lib.bpf_object__close(self._ptr)
            self._ptr = 0

    def __enter__(self) -> "BpfObject":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def obj_get(path: str) -> int:
    """Opens a pinned object; the caller closes the fd."""
    return check(lib().bpf_obj_get(path.encode()), f"open pin {path}")


def map_lookup(fd: int, key: int, value: ctypes.Array | ctypes.Structure) -> None:
    k = ctypes.c_uint32(key)
    ret = lib().bpf_map_lookup_elem(fd, ctypes.byref(k), ctypes.byref(value))
    if ret == -2:
        raise KeyError(key)
    check(ret, "map lookup")


class BpfProgInfoHead(ctypes.Structure):
    """The leading fields of struct bpf_prog_info (uapi, append-only); the kernel fills the rest
    of a larger zeroed buffer only up to the size passed."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
    ]


def obj_id(fd: int) -> int:
    """The kernel id of the program or map behind fd (both info structs start: type, id)."""
    info = (ctypes.c_uint32 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "object info")
    return int(info[1])


prog_id = obj_id


def map_value_size(fd: int) -> int:
    """Value size of the map behind fd (struct bpf_map_info: type, id, key_size, value_size)."""
    info = (ctypes.c_uint32 * 64)()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)), "map info")
    return int(info[3])


def prog_map_ids(program_id: int) -> list[int]:
    """Ids of the maps a loaded program uses."""
    fd = check(lib().bpf_prog_get_fd_by_id(program_id), f"open program {program_id}")
    try:
        ids = (ctypes.c_uint32 * 64)()
        info = BpfProgInfoHead(nr_map_ids=len(ids), map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "program info")
        return list(ids[: min(info.nr_map_ids, len(ids))])
    finally:
        os.close(fd)


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: Optional[int] = None) -> None:
    """Attaches prog_fd; with old_prog_fd, atomically replaces that program (EEXIST if another is attached)."""
    if old_prog_fd is None:
        check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, None), "attach XDP")
        return
    opts = BpfXdpAttachOpts(sz=ctypes.sizeof(BpfXdpAttachOpts), old_prog_fd=old_prog_fd)
    check(lib().bpf_xdp_attach(ifindex, prog_fd, flags | XDP_FLAGS_REPLACE, ctypes.byref(opts)), "replace XDP program")


def xdp_detach(ifindex: int, flags: int) -> None:
    check(lib().bpf_xdp_detach(ifindex, flags, None), "detach XDP")


BPF_TCX_EGRESS = 47  # enum bpf_attach_type (kernel 6.6 and later)


def tcx_egress_link(ifindex: int, prog_fd: int) -> int:
    """Attaches a tc program at the device's egress as a BPF link (no qdisc); returns the link fd."""
    return check(lib().bpf_link_create(prog_fd, ifindex, BPF_TCX_EGRESS, None), "attach tc egress")


def link_update(link_fd: int, prog_fd: int) -> None:
    """Atomically replaces the program of a link."""
    check(lib().bpf_link_update(link_fd, prog_fd, None), "replace the program of a link")


def obj_pin(fd: int, path: str) -> None:
    check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def xdp_query_id(ifindex: int, flags: int) -> int:
    prog = ctypes.c_uint32()
    check(lib().bpf_xdp_query_id(ifindex, flags, ctypes.byref(prog)), "query XDP")
    return prog.value


def test_run(
    prog_fd: int, data: bytes, repeat: int = 1, ctx: Optional[ctypes.Structure] = None
) -> tuple[int, bytes, int]:
    """Runs a packet program `repeat` times on data; returns (verdict, data out, ns per run)."""
    opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts), repeat=repeat)
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + 512)
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(data)
    opts.data_out = ctypes.cast(data_out, ctypes.c_void_p)
    opts.data_size_out = len(data_out)
    if ctx is not None:
        opts.ctx_in = opts.ctx_out = ctypes.addressof(ctx)
        opts.ctx_size_in = opts.ctx_size_out = ctypes.sizeof(ctx)
    check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test run")
    return opts.retval, data_out.raw[: opts.data_size_out], opts.duration


BPF_F_TEST_XDP_LIVE_FRAMES = 2  # uapi linux/bpf.h: act on the verdicts, as a driver would
XDP_LIVE_MAX_BATCH = 256  # TEST_XDP_MAX_BATCH of net/bpf/test_run.c


def test_run_live_frames(prog_fd: int, frame: bytes, repeat: int, batch_size: int, ingress_ifindex: int) -> None:
    """Runs an XDP program on `repeat` copies of frame as if they arrived on ingress_ifindex
    (a device of the caller's network namespace): XDP_PASS frames go up the stack as skbs,
    XDP_TX and XDP_REDIRECT are carried out. The kernel returns no data, context or verdict."""
    if not 1 <= batch_size <= XDP_LIVE_MAX_BATCH:
        raise ValueError(f"batch_size {batch_size} is out of range 1-{XDP_LIVE_MAX_BATCH}")
    opts = BpfTestRunOpts(
        sz=ctypes.sizeof(BpfTestRunOpts), repeat=repeat, flags=BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=batch_size
    )
    data_in = ctypes.create_string_buffer(frame, len(frame))
    ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
    opts.data_in = ctypes.cast(data_in, ctypes.c_void_p)
    opts.data_size_in = len(frame)
    opts.ctx_in = ctypes.addressof(ctx)
    opts.ctx_size_in = ctypes.sizeof(ctx)
    check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test run (live frames)")


def run_syscall(prog_fd: int, ctx: ctypes.Structure) -> int:
    """Runs a syscall program once with ctx (written back in place); returns its return value."""
    opts = BpfTestRunOpts(sz=ctypes.sizeof(BpfTestRunOpts))
    opts.ctx_in = ctypes.addressof(ctx)
    opts.ctx_size_in = ctypes.sizeof(ctx)
    check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "run control program")
    return ctypes.c_int32(opts.retval).value


def num_possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "count possible CPUs")


def probe_prog_type(prog_type: int) -> int:
    """1 if the kernel loads programs of this type (enum bpf_prog_type), 0 if not."""
    return check(lib().libbpf_probe_bpf_prog_type(prog_type, None), f"probe program type {prog_type}")


def probe_helper(prog_type: int, helper_id: int) -> int:
    """1 if programs of this type may call this helper (enum bpf_func_id), 0 if not."""
    return check(lib().libbpf_probe_bpf_helper(prog_type, helper_id, None), f"probe helper {helper_id}")


BTF_KIND_FUNC = 12


def kernel_has_function(name: str) -> bool:
    """Whether the kernel's BTF (/sys/kernel/btf/vmlinux) lists this function, e.g. a kfunc."""
    btf = lib().btf__load_vmlinux_btf()
    if not btf:
        return False
    try:
        return bool(lib().btf__find_by_name_kind(btf, name.encode(), BTF_KIND_FUNC) > 0)
    finally:
        lib().btf__free(btf)
