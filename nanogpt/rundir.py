"""A run's out_dir: one run at a time (a lock), log.jsonl, and train_config.json.

out_dir holds ckpt.pt (and last.pt, see nanogpt.checkpoint), log.jsonl (one JSON object per
line), train_config.json (the run's settings, read by --init_from=resume) and, while a run
trains, .lock. sample.py and export.py only read, and need no lock: every file they read is
replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from nanogpt.errors import UserError
from nanogpt.fileio import append_line, atomic_write

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None

log = logging.getLogger("nanogpt")

LOCK_NAME = ".lock"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "train_config.json"  # not config.json: export may write a HF one


class OutDirInUse(UserError):
    pass


class RunLock:
    """Held while a run trains in out_dir: a second run there is refused, naming the first.

    The lock is an flock on out_dir/.lock, which the kernel drops when the process ends
    however it ends, so the lock of a killed run is taken over by the next run. The file
    names its holder (pid, host, start time) for the error message, and is removed on exit,
    as is out_dir if the lock created it and nothing else was written there.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.fd: int | None = None
        self.created_dir = False

    def __enter__(self) -> "RunLock":
        if fcntl is None:
            return self
        self.created_dir = not self.out_dir.exists()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file of that name, no permission
            why = "it is a file" if self.out_dir.is_file() else e.strerror or e
            raise UserError(f"cannot use --out_dir {self.out_dir}: {why}; choose another "
                            f"--out_dir") from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                self._remove_created_dir()
                raise OutDirInUse(f"{self.out_dir} is in use by another training run ({holder});"
                                  f" wait for it to end, or choose another --out_dir") from None
            try:  # the previous holder may have removed the file between our open and flock
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
        if previous:
            log.info("taking over the lock of a run that ended without releasing it (%s)",
                     previous)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}"
                  .encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # before the unlock: a waiter re-checks the inode
        os.close(self.fd)
        self.fd = None
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        if self.created_dir:
            try:
                self.out_dir.rmdir()  # only if empty
            except OSError:
                pass


class RunLog:
    """out_dir/log.jsonl, written by rank 0: one JSON object per line, each line whole or not
    at all. A failed write (a full disk) drops that line with one warning; training goes on,
    since the checkpoint, not the log, is what a run must not lose."""

    def __init__(self, out_dir: str | os.PathLike | None, append: bool,
                 mirror: Callable[[dict], None] | None = None):
        self.path = Path(out_dir) / LOG_NAME if out_dir is not None else None
        self.mirror = mirror  # also gets every record (nanogpt.tracking.WandbLog)
        self.warned = False
        if self.path is not None and not append:
            atomic_write(self.path, lambda f: None)

    def write(self, **record) -> None:
        if self.path is None:
            return
        if self.mirror is not None:
            self.mirror(record)
        try:
            append_line(self.path, json.dumps(record))
        except OSError as e:
            if not self.warned:
                log.warning("could not write to %s (%s): log records are dropped until it "
                            "works again", self.path, e.strerror or e)
                self.warned = True


def remove_stale_files(out_dir: str | os.PathLike) -> None:
    """Temporary files left by a save that was killed part way."""
    for stale in Path(out_dir).glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)


def save_run_config(out_dir: str | os.PathLike, config: dict) -> None:
    """out_dir/train_config.json: the run's resolved TrainConfig, readable without torch."""
    text = json.dumps(config, indent=1).encode("utf-8")
    atomic_write(Path(out_dir) / CONFIG_NAME, lambda f: f.write(text))


def saved_run_config(out_dir: str | os.PathLike) -> dict | None:
    """The train_config.json a run left in out_dir, or None if there is none or unreadable."""
    try:
        return json.loads((Path(out_dir) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
