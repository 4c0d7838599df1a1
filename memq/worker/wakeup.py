"""What the worker sleeps on: its supervisors' pipes, and SIGTERM/SIGINT through a wake-up pipe, in
one selector (the loop is single-threaded; a signal must end its sleep at once)."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections.abc import Callable, Iterator
from typing import IO, Any

Handler = Callable[[int, Any], None]


class Wakeup:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()

    def watch(self, pipe: IO[bytes], data: object) -> None:
        self.sel.register(pipe, selectors.EVENT_READ, data)

    def forget(self, pipe: IO[bytes]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(pipe)

    @contextlib.contextmanager
    def signals(self, handler: Handler) -> Iterator[None]:
        """Call ``handler`` on SIGTERM and SIGINT, and let them wake :meth:`wait`, until the block ends."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        self.sel.register(wake_r, selectors.EVENT_READ, None)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handlers = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, old in handlers.items():
                signal.signal(sig, old)
            self.sel.unregister(wake_r)
            os.close(wake_r)
            os.close(wake_w)

    def wait(self, timeout: float) -> list[tuple[selectors.SelectorKey, Any]]:
        """Sleep up to ``timeout`` seconds; the watched pipes that can be read (their ``data``)."""
        ready = []
        for key, _ in self.sel.select(timeout=timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(key.fd, 512)
            else:
                ready.append((key, key.data))
        return ready
