"""tcp-teardown: how every TCP connection in a capture opened and ended."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tcp-teardown")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"


def __getattr__(name: str):  # heavy imports only when used: `--help` stays instant
    if name in ("analyze", "Result"):
        from tcp_teardown import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["Result", "__version__", "analyze"]
