"""Does the model fit? Choosing the quantization from the machine's memory."""

from __future__ import annotations

import math
import os
from pathlib import Path

from moshi_mlx import MoshiError

GIB = 1024**3
# Tensor sizes of the 7B checkpoints (Kyutai's MLX files).
WEIGHTS_GIB = {"bf16": 14.3, "q8": 7.6, "q4": 4.5}
WEIGHTS_GIB["float32"] = 2 * WEIGHTS_GIB["bf16"]  # the bf16 weights loaded as float32 (bench --dtype float32)
# Beyond the weights: the KV cache of a full 3000-frame context (bf16, ~1.5 GiB for the 7B), Mimi, activations.
WORKING_GIB = 1.5
# Left to the operating system and the apps a person keeps open while talking.
SYSTEM_GIB = 2.0
# Best first: q8 is close to bf16 in quality at half the memory traffic per frame; q4 when q8 does not fit.
PREFERENCE = ("q8", "q4")
MEMORY_ENV = "MOSHI_MLX_TOTAL_MEMORY_GB"


def total_memory_gib() -> float:
    """Physical memory in GiB; the environment variable MOSHI_MLX_TOTAL_MEMORY_GB overrides it (for tests)."""
    override = os.environ.get(MEMORY_ENV)
    if override:
        try:
            value = float(override)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise MoshiError(f"{MEMORY_ENV}={override!r} is not a number of GiB")
        return value
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def needed_gib(weights_gib: float) -> float:
    """Memory a conversation needs with weights of this size, the system's share included."""
    return weights_gib + WORKING_GIB + SYSTEM_GIB


def choose_quant(total_gib: float | None = None) -> tuple[str, str]:
    """The quantization to use on this machine and one line saying why."""
    total = total_memory_gib() if total_gib is None else total_gib
    for quant in PREFERENCE:
        if needed_gib(WEIGHTS_GIB[quant]) <= total:
            why = (
                f"{quant}: {total:.0f} GiB of memory fits its {WEIGHTS_GIB[quant]} GiB of weights "
                f"(-q bf16 / 8 / 4 to choose)"
            )
            return quant, why
    smallest = PREFERENCE[-1]
    raise MoshiError(
        f"not enough memory: Moshi {smallest} needs about {needed_gib(WEIGHTS_GIB[smallest]):.1f} GiB "
        f"and this machine has {total:.1f} GiB"
    )


def check_fits(quant: str, weights: str | Path | None = None, total_gib: float | None = None) -> None:
    """Fail with one line when the chosen quantization (or a local weights file) cannot fit in memory."""
    total = total_memory_gib() if total_gib is None else total_gib
    if weights is not None:
        size, what = Path(weights).stat().st_size / GIB, Path(weights).name
    else:
        size, what = WEIGHTS_GIB[quant], f"Moshi {quant}"
    need = needed_gib(size)
    if need > total:
        fits = [q for q in PREFERENCE if needed_gib(WEIGHTS_GIB[q]) <= total]
        hint = f"; use -q {fits[0].removeprefix('q')}" if fits else ""
        raise MoshiError(
            f"not enough memory for {what}: it needs about {need:.1f} GiB and this machine has {total:.1f} GiB{hint}"
        )
