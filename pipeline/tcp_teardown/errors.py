"""Exit codes and the one exception type the command line turns into one line on stderr."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (README.md, "Exit codes")."""

    OK = 0
    FAILED = 1  # an unexpected internal error (a bug: please report it)
    USAGE = 2  # bad command-line arguments (typer's own code)
    INPUT_MISSING = 3  # a capture path does not exist or is a directory
    NOT_A_CAPTURE = 4  # the file is not a capture tshark (or the native reader) can read
    EMPTY_CAPTURE = 5  # the file is empty (zero bytes or no packets at all)
    TRUNCATED = 6  # the capture is cut short: what could be read was labelled and written
    OUTPUT_UNWRITABLE = 7  # --out cannot be created or written (earlier results are kept)
    TSHARK_MISSING = 8  # no tshark binary found
    TSHARK_TOO_OLD = 9  # tshark older than the minimum version
    TSHARK_FAILED = 10  # tshark crashed or was killed mid-file
    INTERRUPTED = 130  # SIGINT / SIGTERM


class TeardownError(Exception):
    """An error the user can act on: one line of text and its exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


class TruncatedCapture(TeardownError):
    """The capture ends mid-record; the packets before the cut are usable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.TRUNCATED)
