"""Command-line parsing for the subcommands: argparse, with its errors on one line and values checked on entry."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

from moshi_mlx.errors import MoshiError


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes read like the app's other errors: one `error: ...` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block first; the options are one `--help` away instead.
        print(f"error: {message} (`{self.prog} --help` lists the options)", file=sys.stderr)
        sys.exit(2)


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def seed(text: str) -> int:
    """A random seed MLX takes: a whole number from 0 to 2**64 - 1."""
    value = non_negative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most {2**64 - 1})")
    return value


def temperature(text: str) -> float:
    """A sampling temperature: a finite number >= 0 (0 = greedy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a temperature (a number >= 0; 0 = greedy)")
    return value


def check_outputs(outputs: dict[str, str | None], source: str | None = None) -> None:
    """Output files (by option) that can be written, none of them the input or another output.

    Checked before the model loads, so a mistake costs no waiting (and never clobbers the input).
    """
    seen = {Path(source).expanduser().resolve(): "the input file"} if source is not None else {}
    for option, path in outputs.items():
        if path is None:
            continue
        target = Path(path).expanduser().resolve()
        if target in seen:
            raise MoshiError(f"{option} {path} is {seen[target]}: give another file name")
        if target.is_dir():
            raise MoshiError(f"cannot write {path}: it is a folder; give a file name")
        if not target.parent.is_dir():
            raise MoshiError(f"cannot write {path}: its folder does not exist")
        if not os.access(target if target.exists() else target.parent, os.W_OK):
            raise MoshiError(f"cannot write {path}: permission denied")
        seen[target] = f"also given to {option}"
