"""Exit codes and the one exception type the command line turns into one line on stderr."""

from __future__ import annotations

import os
from enum import IntEnum

# Characters that must not reach a terminal or a log line raw: C0/C1 controls (newlines
# would split the one-line message; ESC starts terminal escape sequences) and the bidi
# overrides that make text display in another order than it is stored.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


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
        """The message as one printable line (file names may hold anything)."""
        return one_line(str(self))


class TruncatedCapture(TeardownError):
    """The capture ends mid-record; the packets before the cut are usable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.TRUNCATED)


def one_line(text: str) -> str:
    """`text` with control characters, bidi overrides and undecodable bytes escaped.

    File names are user input: a newline in one must not split an error message, an
    escape sequence must not reach the terminal. Bytes that were not UTF-8 (held as
    surrogates by Python) show as \\xNN.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in "\n\r\t":
            out.append(repr(ch)[1:-1])
        elif code < 0x20 or 0x7F <= code < 0xA0 or ch in _BIDI or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def display_path(path: os.PathLike[str] | str) -> str:
    """A path as the name stored for it (the `file` column, summary.json, filters.txt).

    Always valid UTF-8 on one line: undecodable bytes become \\xNN and control
    characters are escaped as in error messages, so a name cannot break a text file
    or a terminal that shows it. Ordinary names are unchanged.
    """
    return one_line(os.fspath(path))
