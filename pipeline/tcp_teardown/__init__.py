"""tcp-teardown: how every TCP connection in a capture opened and ended."""

from __future__ import annotations

# The one place the version is written (pyproject.toml reads it from here); a literal
# rather than importlib.metadata, which costs a CLI run 40 ms to import.
__version__ = "0.1.0"

# Public name -> the module that defines it; imported on first use so `--help` stays instant.
_LAZY = {
    "analyze": "api",
    "Result": "api",
    "load": "explore",
    "Loaded": "explore",
    "explain": "explore",
    "packets": "explore",
    "filter_for": "explore",
    "filters_by_file": "explore",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f"tcp_teardown.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["Loaded", "Result", "__version__", "analyze", "explain", "filter_for", "filters_by_file", "load", "packets"]
