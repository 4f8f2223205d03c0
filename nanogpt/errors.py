"""What can go wrong for a user, and how entry points show it: one line, no traceback.

Library code raises UserError (a mistake the user can fix, the message says how) or
TrainingStopped (a run ended on purpose after saving). Entry points wrap their body in
run_guarded, which prints such errors as one line and returns the exit code; `--debug` or
NANOGPT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


def os_reason(e: OSError) -> str:
    """An OSError as a user reads it: 'No space left on device (path)'."""
    return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")


class UserError(Exception):
    """Something the user can fix (a bad option, a missing file); the message says how."""


class TrainingStopped(Exception):
    """Training ended early on purpose (a signal) after saving; exit_code says which."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """(argv without --debug, whether --debug or NANOGPT_DEBUG asks for tracebacks)."""
    debug = os.environ.get("NANOGPT_DEBUG", "") not in ("", "0")
    rest = [a for a in argv if a != "--debug"]
    return rest, debug or len(rest) != len(argv)


def out_of_memory(e: BaseException) -> bool:
    """Whether e is an allocation that failed: a device's out-of-memory, or torch's CPU
    allocator refusing a size the host cannot hold (a RuntimeError)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, oom) or (isinstance(e, RuntimeError)
                                  and "DefaultCPUAllocator: can't allocate memory" in str(e))


def run_guarded(body: Callable[[], int], debug: bool = False) -> int:
    """body()'s exit code; UserError, out-of-memory and Ctrl-C as one line on stderr."""
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun every rank ends the same way
    try:
        return body()
    except TrainingStopped as e:
        if rank0:
            print(str(e), file=sys.stderr)
        return e.exit_code
    except (UserError, RuntimeError) as e:
        if debug or not (isinstance(e, UserError) or out_of_memory(e)):
            raise
        if not isinstance(e, UserError):
            where = "the device" if "DefaultCPUAllocator" not in str(e) else "the host"
            e = UserError(f"out of memory on {where}; lower --batch_size (raise "
                          f"--gradient_accumulation_steps to keep the batch) or --block_size")
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # also during the imports at start-up
        if debug:
            raise
        print("aborted", file=sys.stderr)
        return 130
