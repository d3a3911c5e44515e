"""Cost of PersonaPlex's prompt prefill at the 7B's width, extrapolated from a few layers (random weights).

    python benchmarks/persona_prefill.py [--layers 1 2] [--voice-frames 125] [--text-tokens 40] [--dtype bfloat16]

Builds `LmConfig.personaplex_7b()` with fewer temporal layers (the depth transformer is not run by a prefill, so
its weights are never made), times `prefill` of a voice of N frames plus a role of M tokens (and the 12 silence
steps) for each layer count, fits time = a + b * layers and prints the 32-layer figure; then, for comparison, the
per-step cost of running the same steps one by one (one `PersonaGen.step_forced`-like temporal step each).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

from moshi_mlx import Lm, LmConfig
from moshi_mlx.model.persona_gen import PersonaGen
from moshi_mlx.persona.prompt import PersonaPrompt, prefill, prompt_steps

FULL_LAYERS = 32


def model(layers: int, dtype: mx.Dtype) -> Lm:
    lm = Lm(dataclasses.replace(LmConfig.personaplex_7b(), num_layers=layers))
    lm.update(tree_map(lambda p: p.astype(dtype), lm.parameters()))  # lazy: only what a prefill reads is made
    return lm


def time_prefill(lm: Lm, prompt: PersonaPrompt, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run allocates
        gen = PersonaGen(lm, temp=0, temp_text=0, compile=False)
        start = time.perf_counter()
        prefill(gen, prompt)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def time_one_step(lm: Lm, steps: int = 4) -> float:
    """Seconds of one temporal step taken alone (what a prompt step costs when run one call at a time)."""
    cache = lm.make_cache()
    x = mx.zeros((1, 17, 1), mx.int32)
    for _ in range(2):
        mx.eval(lm.transformer(lm.embed_inputs(x), cache))
    start = time.perf_counter()
    for _ in range(steps):
        mx.eval(lm.transformer(lm.embed_inputs(x), cache))
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--voice-frames", type=int, default=125)
    parser.add_argument("--text-tokens", type=int, default=40)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    dtype = getattr(mx, args.dtype)
    rng = np.random.default_rng(0)
    prompt = PersonaPrompt(text_tokens=list(rng.integers(4, 32000, size=args.text_tokens)),
                           voice_codes=rng.integers(0, 2048, size=(8, args.voice_frames)))
    steps = prompt_steps(prompt)
    batched, single = [], []
    for layers in args.layers:
        lm = model(layers, dtype)
        batched.append(time_prefill(lm, prompt))
        single.append(time_one_step(lm))
        print(f"{layers} layers: prefill of {steps} steps {batched[-1]:.2f} s; "
              f"one step alone {single[-1] * 1000:.0f} ms")
        del lm
        mx.clear_cache()
    b, a = np.polyfit(args.layers, batched, 1) if len(args.layers) > 1 else (batched[0] / args.layers[0], 0.0)
    sb, sa = np.polyfit(args.layers, single, 1) if len(args.layers) > 1 else (single[0] / args.layers[0], 0.0)
    full, one_by_one = a + b * FULL_LAYERS, (sa + sb * FULL_LAYERS) * (steps - 1)
    print(f"7B structure ({FULL_LAYERS} layers, {args.dtype}), extrapolated: prefill of {steps} steps {full:.1f} s "
          f"({full / steps * 1000:.0f} ms a step); one call per step would take {one_by_one:.1f} s")


if __name__ == "__main__":
    main()
