"""Command-line options shared by several commands, declared once (typer `Annotated` types)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class Engine(StrEnum):
    AUTO = "auto"
    NATIVE = "native"
    TSHARK = "tshark"


IdleThreshold = Annotated[
    float, typer.Option(min=0.0, help="Seconds of silence before a close that make it idle_close.")
]
Msl = Annotated[float, typer.Option(min=0.0, help="Maximum segment lifetime in seconds (TIME_WAIT = 2·MSL).")]
EngineOption = Annotated[
    Engine, typer.Option(help="Capture reader: auto (native, tshark when it declines), native, or tshark.")
]
TsharkPath = Annotated[str | None, typer.Option(help="Path of the tshark binary to use.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
