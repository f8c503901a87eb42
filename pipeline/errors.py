"""The one exception type stages turn into a clear message and a non-zero exit, and the wording of
JSON errors inside such messages."""

import json


class SftpackError(Exception):
    """A user-facing error: what went wrong, where (file:line, key) and how to fix it.

    Stages catch it, print the message without a traceback and exit with `exit_code`.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # a worker process's error keeps its exit code across the pickle
        return type(self), (str(self), self.exit_code)


def json_error_text(err: json.JSONDecodeError) -> str:
    """`Expecting ',' delimiter at column 12`, `Unterminated string starting at column 3` (one "at")."""
    return f"{err.msg} column {err.colno}" if err.msg.endswith(" at") else f"{err.msg} at column {err.colno}"
