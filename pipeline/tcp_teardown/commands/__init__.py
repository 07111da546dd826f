"""Command modules beyond `analyze` and `labels`, registered on the typer app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach every command module to `app`."""
    # Each module exposes `register(app)`; imports stay light (typer only).
    from importlib import import_module

    for name in ("wireshark_cmds", "batch_cmd"):
        try:
            module = import_module(f"tcp_teardown.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tcp_teardown.commands.{name}":
                raise
            continue
        module.register(app)
