"""Per-frame LM step: moshi-mlx against Kyutai's moshi_mlx, same random weights, measured in one run.

Kyutai's package is also imported as `moshi_mlx`, so it lives in its own venv and runs in a subprocess:

    python3 -m venv /tmp/kmlx && /tmp/kmlx/bin/pip install moshi_mlx==0.3.0 "mlx[cpu]"   # [cpu] on Linux only
    python benchmarks/compare_kyutai.py --kyutai-python /tmp/kmlx/bin/python [--sizes tiny deep small]
        [--rounds 3] [--quant bf16|q8|q4] [--markdown]

Sizes: tiny (d 256, 2 layers; depth d 128, 2 layers), deep (the 7B's 32 temporal and 6 depth layers at d 256 /
128: the 7B's operation count at a fraction of its arithmetic) and small (d 1024, 8 layers; depth d 512, 4 layers).
Both programs load the same checkpoint (our MLX layout is Kyutai's; with --quant, the file `moshi-mlx quantize`
writes, which Kyutai's code loads strictly after its own `nn.quantize`), run with the same sampling settings, and
time `step` plus reading the tokens back on the host. Rounds alternate between the two to spread machine noise.

Operations per frame: `moshi_mlx/devtools/opcount.py` (loaded by path into Kyutai's venv too) counts the nodes of every
graph the step evaluates, at each host synchronisation (`mx.eval`, `.item()`, `if array:` ...), over a few
frames after the timed ones. On this CPU backend MLX's `mx.fast` kernels (RMS norm, RoPE, attention) count as
the few operations each of their fallbacks is made of, for both programs alike; on Metal each is one kernel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Depth feed-forward at 4.125 x dim: both implementations then size the gated MLP identically.
SIZES = {
    "tiny": dict(dim=256, num_heads=4, num_layers=2, depformer_dim=128, depformer_num_heads=4,
                 depformer_num_layers=2, depformer_dim_feedforward=528, text_card=32000, card=2048, context=3000),
    "deep": dict(dim=256, num_heads=4, num_layers=32, depformer_dim=128, depformer_num_heads=4,
                 depformer_num_layers=6, depformer_dim_feedforward=528, text_card=32000, card=2048, context=3000),
    "small": dict(dim=1024, num_heads=16, num_layers=8, depformer_dim=512, depformer_num_heads=8,
                  depformer_num_layers=4, depformer_dim_feedforward=2112, text_card=32000, card=2048, context=3000),
}
COUNTED_FRAMES = 3
WARMUP = 5


def _opcount():
    spec = importlib.util.spec_from_file_location("opcount", ROOT / "moshi_mlx" / "devtools" / "opcount.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker_ours(weights: str, config: str, frames: int, temp: float) -> dict:
    import numpy as np

    from moshi_mlx import LmGen, load_lm

    gen = LmGen(load_lm(weights, config), temp=temp, temp_text=temp * 7 / 8, seed=0)
    user = np.random.default_rng(0).integers(0, 2048, size=(frames + COUNTED_FRAMES, 8))

    def step(t: int) -> None:
        out = gen.step(user[t])
        _ = out.text_token, out.audio_codes

    result = _measure(step, frames, weights)
    if hasattr(gen, "submit"):  # an earlier version (--before) may not have it
        result["ahead_ms"] = streamed_ms(LmGen(gen.lm, temp=temp, temp_text=temp * 7 / 8, seed=0), user[:frames])
    return result


def streamed_ms(gen, user) -> float:
    """Median ms per frame when each step is submitted before the previous one is collected (the frame loop
    does this whenever the LM is its slowest stage), so that building a step overlaps computing the last."""
    times, pending, last = [], gen.submit(user[0]), time.perf_counter()
    for t in range(1, len(user)):
        ahead = gen.submit(user[t])
        out = gen.collect(pending)
        _ = out.text_token, out.audio_codes
        now = time.perf_counter()
        times.append((now - last) * 1000)
        pending, last = ahead, now
    gen.collect(pending)
    return statistics.median(times[WARMUP:])


def worker_kyutai(weights: str, config: str, frames: int, temp: float) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    from moshi_mlx import models, utils

    config_dict = json.loads(Path(config).read_text())
    model = models.Lm(models.LmConfig.from_config_dict(config_dict))
    model.set_dtype(mx.bfloat16)
    if "quantization" in config_dict:  # as Kyutai's own scripts load their q4 / q8 files
        q = config_dict["quantization"]
        nn.quantize(model, bits=q["bits"], group_size=q["group_size"])
    model.load_weights(weights, strict=True)
    mx.random.seed(0)
    gen = models.LmGen(
        model=model, max_steps=frames + COUNTED_FRAMES + 5,
        text_sampler=utils.Sampler(temp=temp * 7 / 8, top_k=25) if temp else utils.Sampler(temp=0),
        audio_sampler=utils.Sampler(temp=temp, top_k=250) if temp else utils.Sampler(temp=0),
    )
    user = np.random.default_rng(0).integers(0, 2048, size=(frames + COUNTED_FRAMES, 8))

    def step(t: int) -> None:
        text = gen.step(mx.array(user[t : t + 1]))
        _ = text[0].item()
        audio = gen.last_audio_tokens()
        if audio is not None:
            mx.eval(audio)  # what np.array does, made visible to the counter
            _ = np.array(audio)

    return _measure(step, frames, weights)


def matrix_floor_ms(weights: str, rounds: int = 20) -> float | None:
    """Milliseconds per frame of the step's matrix products alone, in this MLX: each weight matrix of the
    checkpoint (embedding tables aside) times one vector, as a frame does once, all in one graph.
    None for a quantized checkpoint."""
    import mlx.core as mx

    tensors = mx.load(weights)
    if any(name.endswith(".scales") for name in tensors):
        return None
    mats = [w for name, w in tensors.items() if w.ndim == 2 and "emb" not in name]
    vecs = [mx.random.normal((1, w.shape[1])).astype(w.dtype) for w in mats]
    mx.eval(mats, vecs)

    def frame() -> None:
        mx.eval([v @ w.T for v, w in zip(vecs, mats, strict=True)])

    for _ in range(3):
        frame()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        frame()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _measure(step, frames: int, weights: str) -> dict:
    opcount = _opcount()
    times = []
    for t in range(frames):
        start = time.perf_counter()
        step(t)
        times.append((time.perf_counter() - start) * 1000)
    with opcount.OpCounter() as counter:
        for t in range(frames, frames + COUNTED_FRAMES):
            step(t)
    return {
        "ms": statistics.median(times[WARMUP:]),  # the first frames include compilation and warm-up
        "ops": counter.ops / COUNTED_FRAMES,
        "syncs": counter.syncs / COUNTED_FRAMES,
        "by_name": {k: v / COUNTED_FRAMES for k, v in counter.by_name.most_common()},
        "floor_ms": matrix_floor_ms(weights),
    }


def run_worker(
    python: str, which: str, weights: Path, config: Path, frames: int, temp: float, source: str | None = None
) -> dict:
    """One program in a fresh process; `source`: a folder holding another version's `moshi_mlx` package."""
    cmd = [python, __file__, "--worker", which, str(weights), str(config), str(frames), str(temp)]
    env = {**os.environ, "PYTHONPATH": source} if source else None
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), check=False, env=env)
    if out.returncode != 0:
        sys.exit(f"{which} worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def beyond_floor(ours: list[dict], theirs: list[dict]) -> str:
    """Table cells: each program's matrix-product floor, and its step time beyond it (medians over rounds)."""
    floors = [[r["floor_ms"] for r in runs] for runs in (ours, theirs)]
    if None in floors[0] + floors[1]:
        return "- | -"
    fo, fk = (statistics.median(f) for f in floors)
    ro = statistics.median(r["ms"] - r["floor_ms"] for r in ours)
    rk = statistics.median(r["ms"] - r["floor_ms"] for r in theirs)
    return f"{fo:.1f} / {fk:.1f} | {ro:.1f} / {rk:.1f} ({ro / rk:.2f})"


def mlx_version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('mlx'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        which, weights, config, frames, temp = sys.argv[2:7]
        fn = worker_ours if which == "ours" else worker_kyutai
        print(json.dumps(fn(weights, config, int(frames), float(temp))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kyutai-python", required=True, help="python of a venv with Kyutai's moshi_mlx")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "deep", "small"], choices=list(SIZES))
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--temp", type=float, default=0.8, help="audio temperature (0: greedy)")
    parser.add_argument("--quant", choices=["bf16", "q8", "q4"], default="bf16",
                        help="quantize with moshi-mlx's quantizer first (Kyutai's default group sizes)")
    parser.add_argument("--ops", action="store_true", help="also print the operations per frame by primitive")
    parser.add_argument("--before", default=None,
                        help="folder with an earlier moshi-mlx's moshi_mlx package, timed in the same rounds")
    args = parser.parse_args()

    import mlx.core as mx
    from moshi_mlx.quantize.quantizer import quantize_checkpoint
    from moshi_mlx.quantize.recipes import make_plan

    from moshi_mlx import LmConfig
    from moshi_mlx.devtools.random_lm import tiny_config, write_random_lm

    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} {platform.system()}, "
          f"{platform.processor() or ''} mlx {mlx_version(sys.executable)} (ours) / "
          f"{mlx_version(args.kyutai_python)} (Kyutai's), {args.quant}, temp {args.temp}, {args.frames} frames, "
          f"median of {args.rounds} alternating rounds")
    print("| config | moshi-mlx ms/frame | moshi_mlx ms/frame | ratio | matrix products ms ours / Kyutai "
          "| the rest ms ours / Kyutai (ratio) | ops/frame ours | ops/frame Kyutai | ops ratio "
          "| syncs/frame ours | syncs/frame Kyutai |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            # In bf16, as Kyutai publishes it: its loader keeps the file's dtype (float32 would make it run float32).
            weights, config = write_random_lm(Path(tmp) / size, tiny_config(**SIZES[size]), dtype=mx.bfloat16)
            if args.quant != "bf16":
                plan = make_plan(LmConfig.from_json(config), bits=int(args.quant[1:]))
                done = quantize_checkpoint(weights, Path(tmp) / f"{size}-{args.quant}", LmConfig.from_json(config),
                                           plan)
                weights, config = done.weights, done.config
            ours, theirs, before = [], [], []
            for _ in range(args.rounds):
                ours.append(run_worker(sys.executable, "ours", weights, config, args.frames, args.temp))
                theirs.append(run_worker(args.kyutai_python, "kyutai", weights, config, args.frames, args.temp))
                if args.before:
                    before.append(run_worker(sys.executable, "ours", weights, config, args.frames, args.temp,
                                             args.before))
            o = statistics.median(r["ms"] for r in ours)
            k = statistics.median(r["ms"] for r in theirs)
            print(f"| {size} | {o:.1f} | {k:.1f} | {o / k:.2f} | {beyond_floor(ours, theirs)} | "
                  f"{ours[0]['ops']:.0f} | {theirs[0]['ops']:.0f} | "
                  f"{ours[0]['ops'] / theirs[0]['ops']:.2f} | {ours[0]['syncs']:g} | {theirs[0]['syncs']:g} |",
                  flush=True)
            print(f"<!-- {size} rounds ms: ours {[round(r['ms'], 1) for r in ours]}, "
                  f"Kyutai {[round(r['ms'], 1) for r in theirs]} -->", flush=True)
            if all("ahead_ms" in r for r in ours):
                a = statistics.median(r["ahead_ms"] for r in ours)
                print(f"<!-- {size} ours with the next step submitted before collecting: {a:.1f} ms/frame, ratio to "
                      f"Kyutai {a / k:.2f}; rounds {[round(r['ahead_ms'], 1) for r in ours]} -->", flush=True)
            if before:
                b = statistics.median(r["ms"] for r in before)
                print(f"<!-- {size} before ({args.before}): {b:.1f} ms/frame, ratio to Kyutai {b / k:.2f}, "
                      f"{before[0]['ops']:.0f} ops/frame, {before[0]['syncs']:g} syncs/frame; rounds "
                      f"{[round(r['ms'], 1) for r in before]} -->", flush=True)
            if args.ops:
                for name, result in (("ours", ours[0]), ("Kyutai", theirs[0])):
                    top = ", ".join(f"{n} {v:g}" for n, v in list(result["by_name"].items())[:25])
                    print(f"<!-- {size} {name}: {top} -->")


if __name__ == "__main__":
    main()
