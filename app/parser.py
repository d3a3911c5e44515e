"""Command-line parsing for the subcommands: argparse, with its errors on one line and values checked on entry."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from .checks import check_outputs  # noqa: F401 (re-exported: the subcommands' output check)

MAX_TEMPERATURE = 100.0  # far past uniform sampling; larger values only overflow to inf and NaN


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


def _number_within(text: str, largest: float, what: str) -> float:
    """A finite number from 0 to `largest`; else `text` "is not" `what`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not 0 <= value <= largest:
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def milliseconds(text: str) -> float:
    """A duration in ms: a number from 0 to 10000."""
    return _number_within(text, 10000, "a duration in ms (0 to 10000)")


def seed(text: str) -> int:
    """A random seed MLX takes: a whole number from 0 to 2**64 - 1."""
    value = non_negative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most {2**64 - 1})")
    return value


def temperature(text: str) -> float:
    """A sampling temperature: a number from 0 (greedy) to MAX_TEMPERATURE."""
    return _number_within(text, MAX_TEMPERATURE, f"a temperature (a number from 0 to {MAX_TEMPERATURE:g}; 0 = greedy, "
                          "1 = the model's own distribution)")


def repo_id(text: str) -> str:
    """A Hugging Face repo id (owner/name), checked as huggingface_hub checks it."""
    from moshi_mlx import MoshiError
    from moshi_mlx.hub import check_repo_id

    try:
        return check_repo_id(text)
    except MoshiError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
