"""Option types shared by several commands and tools (argparse ``type=`` functions).

Torch-free, so that parsing a command line never imports torch."""

from __future__ import annotations

import argparse


def device_arg(text: str) -> str:
    """Every ``--device`` option: ``cpu``, ``cuda`` or ``cuda:N``."""
    kind, colon, index = text.partition(":")
    if text == "cpu" or (kind == "cuda" and (not colon or index.isascii() and index.isdigit())):
        return text
    raise argparse.ArgumentTypeError(f"expects cpu, cuda or cuda:N (N a GPU index), got '{text}'")


device_arg.__name__ = "device"  # argparse names the type in its message
