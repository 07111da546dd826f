"""Exceptions of the native reader (re-exported by `tcp_teardown.native`)."""

from __future__ import annotations


class NativeUnsupported(Exception):
    """The native reader declines this file; the caller should use tshark for it.

    Raised before the first batch whenever the reason is visible there (file format,
    link type, compression, a tunnel in the first window of 64 MiB). A reason found later
    in the file (a tunnel, an unsupported link type on a new pcapng interface) is raised
    after earlier batches were yielded: the caller must then discard what it received
    for this file.
    """


class TruncatedCapture(Exception):
    """The capture ends in the middle of a record (or at a damaged record).

    Everything complete before the cut has been yielded when this is raised, just as
    tshark prints every complete frame and then reports the file as cut short (or as
    having a bad record).
    """

    def __init__(self, packets_read: int, detail: str = "") -> None:
        self.packets_read = packets_read  # complete frames read (TCP or not)
        message = f"capture cut short after {packets_read} complete packets"
        super().__init__(f"{message}: {detail}" if detail else message)
