"""Per-frame cost of `LmGen.step` on random-weight models (no weights needed).

    python benchmarks/lm_step.py [--sizes tiny small] [--frames 50] [--dtype bfloat16] [--quant none|q4|q8]

Sizes: tiny (dim 256, 2 layers; depth 128, 2 layers) and small (dim 1024, 8 layers; depth 512, 4 layers), the
configs used for the reference timings of Kyutai's moshi_mlx in shared/reference/README.md. Prints ms per frame
(median, p90) for the eager and the compiled step (`LmGen(compile=...)`), and their ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_map

from moshi_mlx import LmGen
from moshi_mlx.devtools.random_lm import random_lm, tiny_config

SIZES = {
    "tiny": dict(dim=256, num_heads=4, num_layers=2, depformer_dim=128, depformer_num_heads=4,
                 depformer_num_layers=2, depformer_dim_feedforward=512, text_card=32000, card=2048),
    "small": dict(dim=1024, num_heads=16, num_layers=8, depformer_dim=512, depformer_num_heads=8,
                  depformer_num_layers=4, depformer_dim_feedforward=2048, text_card=32000, card=2048),
}


def time_frames(gen: LmGen, frames: int) -> list[float]:
    user = np.random.default_rng(0).integers(0, 2048, size=(frames + 5, 8))
    for t in range(5):
        gen.step(user[t])
    times = []
    for t in range(5, frames + 5):
        start = time.perf_counter()
        gen.step(user[t])
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--quant", default="none", choices=["none", "q4", "q8"])
    args = parser.parse_args()
    dtype = getattr(mx, args.dtype)
    for size in args.sizes:
        lm = random_lm(tiny_config(**SIZES[size]), seed=0)
        lm.update(tree_map(lambda p: p.astype(dtype), lm.parameters()))
        if args.quant != "none":
            bits = int(args.quant[1:])
            nn.quantize(lm, group_size=32 if bits == 4 else 64, bits=bits)
        mx.eval(lm.parameters())
        results = {}
        for compiled in (False, True):
            gen = LmGen(lm, seed=0, compile=compiled)
            times = time_frames(gen, args.frames)
            results[compiled] = statistics.median(times)
            p90 = sorted(times)[int(0.9 * len(times))]
            label = "compiled" if compiled else "eager"
            print(f"{size:>6} {args.dtype} {args.quant:>4} {label:>8}: "
                  f"median {results[compiled]:7.2f} ms/frame, p90 {p90:7.2f} ms")
        print(f"{size:>6}: eager / compiled = {results[False] / results[True]:.2f}x")


if __name__ == "__main__":
    main()
