"""Ctrl-C and SIGTERM during training: finish the step, save, stop."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger("nanogpt")


class GracefulStop:
    """First SIGINT/SIGTERM sets `signum` (training saves and stops after the current step);
    a second SIGINT raises KeyboardInterrupt at once. Handlers are restored on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: finishing this step and saving a checkpoint "
                    "(Ctrl-C again to abort at once)", signal.Signals(signum).name)

    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name
