"""Exceptions for user mistakes and stopped runs: the CLI shows them as one line, no traceback."""


class UserError(Exception):
    """Something the user can fix (a bad option, a missing file); the message says how."""


class TrainingStopped(Exception):
    """Training ended early on purpose (a signal) after saving; exit_code says which."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
