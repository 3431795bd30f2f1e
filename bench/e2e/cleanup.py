"""One LIFO list of teardown actions that runs exactly once: on return, exception, exit or signal."""
from __future__ import annotations

import atexit
import signal
import sys
from typing import Callable


class Cleanup:
    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], None]]] = []

    def push(self, description: str, action: Callable[[], None]) -> None:
        self._actions.append((description, action))

    def run_all(self) -> None:
        while self._actions:
            description, action = self._actions.pop()
            try:
                action()
            except Exception as error:  # teardown must go on whatever one step does
                print(f"[cleanup] {description}: {error}", file=sys.stderr, flush=True)

    def install(self) -> None:
        """Run on interpreter exit, and turn SIGTERM/SIGHUP/SIGINT into SystemExit so finally blocks run."""
        atexit.register(self.run_all)

        def on_signal(signum, _frame):
            raise SystemExit(128 + signum)

        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, on_signal)
