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


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one line: its first line, at most limit characters, or its
    type's name when it has no message."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


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


def compile_failure(e: BaseException) -> str | None:
    """What went wrong, in one line, when e is torch.compile's backend failing (a C compiler
    error, a broken cache); else None. Looks only when torch._dynamo was imported."""
    exc = sys.modules.get("torch._dynamo.exc")
    if exc is None or not isinstance(e, exc.BackendCompilerFailed):
        return None
    inner = getattr(e, "inner_exception", None) or e
    return f"{type(inner).__name__}: {first_line(inner)}"


def _as_user_error(e: RuntimeError) -> UserError | None:
    """The one line for a RuntimeError a user can act on (out of memory, a failed
    torch.compile); None for the others, which keep their traceback."""
    if out_of_memory(e):
        where = "the device" if "DefaultCPUAllocator" not in str(e) else "the host"
        return UserError(f"out of memory on {where}; lower --batch_size (raise "
                         f"--gradient_accumulation_steps to keep the batch) or --block_size")
    reason = compile_failure(e)
    if reason is not None:
        return UserError(f"torch.compile failed ({reason}); run again with --compile=False, "
                         f"or fix what the compiler's messages above say (--debug shows the "
                         f"traceback)")
    return None


def run_guarded(body: Callable[[], int], debug: bool = False) -> int:
    """body()'s exit code; UserError, out-of-memory, a failed torch.compile and Ctrl-C as one
    line on stderr."""
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun every rank ends the same way
    try:
        return body()
    except TrainingStopped as e:
        if rank0:
            print(str(e), file=sys.stderr)
        return e.exit_code
    except (UserError, RuntimeError) as e:
        error = e if isinstance(e, UserError) else _as_user_error(e)
        if debug or error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:  # also during the imports at start-up
        if debug:
            raise
        print("aborted", file=sys.stderr)
        return 130
