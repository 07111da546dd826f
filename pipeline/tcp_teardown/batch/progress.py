"""A one-line progress bar on stderr: files, packets, packets/s and ETA.

Drawn only on a terminal (a log file or a pipe gets no carriage-return noise) and at
most a few times a second. The ETA is by bytes of capture, not by files: archives mix
tiny and huge captures.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_S = 0.2
BAR_WIDTH = 24


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Counts what the run has done and redraws the line when asked."""

    def __init__(self, files: int, total_bytes: int, enabled: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = (self.stream.isatty() if enabled is None else enabled) and files > 0
        self.files_total = files
        self.bytes_total = max(total_bytes, 1)
        self.files = 0
        self.bytes = 0
        self.packets = 0
        self.failed = 0
        self.started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def add(self, files: int = 0, bytes_done: int = 0, packets: int = 0, failed: int = 0) -> None:
        self.files += files
        self.bytes += bytes_done
        self.packets += packets
        self.failed += failed
        self.refresh()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.packets / elapsed if elapsed > 0 else 0.0
        share = min(self.bytes / self.bytes_total, 1.0)
        eta = elapsed * (1 - share) / share if share > 0 else None
        filled = int(share * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        failed = f"  {self.failed} failed" if self.failed else ""
        return (f"[{bar}] {self.files}/{self.files_total} files  {_si(self.packets)} packets  "
                f"{_si(rate)} packets/s  ETA {_clock(eta) if eta is not None else '?'}{failed}")

    def refresh(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < REDRAW_S:
            return
        self._drawn = now
        text = self.line()
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.refresh(force=True)
            self.stream.write("\n")
            self.stream.flush()
