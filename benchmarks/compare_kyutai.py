"""Per-frame LM step: moshi-mlx against Kyutai's moshi_mlx, same random weights, measured in one run.

Kyutai's package is also imported as `moshi_mlx`, so it lives in its own venv and runs in a subprocess:

    python3 -m venv /tmp/kmlx && /tmp/kmlx/bin/pip install moshi_mlx==0.3.0 "mlx[cpu]"   # [cpu] on Linux only
    python benchmarks/compare_kyutai.py --kyutai-python /tmp/kmlx/bin/python [--sizes tiny small] [--rounds 2]
        [--quant bf16|q8|q4]

Both load the same checkpoint (our MLX layout is Kyutai's; with --quant, the file `moshi-mlx quantize` writes,
which Kyutai's code loads strictly after its own `nn.quantize`), run with the same sampling settings, and time
`step` plus reading the tokens back on the host. Rounds alternate between the two to spread machine noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # Depth feed-forward at 4.125 x dim: both implementations then size the gated MLP identically.
    "tiny": dict(dim=256, num_heads=4, num_layers=2, depformer_dim=128, depformer_num_heads=4,
                 depformer_num_layers=2, depformer_dim_feedforward=528, text_card=32000, card=2048),
    "small": dict(dim=1024, num_heads=16, num_layers=8, depformer_dim=512, depformer_num_heads=8,
                  depformer_num_layers=4, depformer_dim_feedforward=2112, text_card=32000, card=2048),
}


def worker_ours(weights: str, config: str, frames: int, temp: float) -> list[float]:
    import numpy as np

    from moshi_mlx import LmGen, load_lm

    gen = LmGen(load_lm(weights, config), temp=temp, temp_text=temp * 7 / 8, seed=0)
    user = np.random.default_rng(0).integers(0, 2048, size=(frames, 8))
    times = []
    for t in range(frames):
        start = time.perf_counter()
        out = gen.step(user[t])
        _ = out.text_token, out.audio_codes
        times.append((time.perf_counter() - start) * 1000)
    return times


def worker_kyutai(weights: str, config: str, frames: int, temp: float) -> list[float]:
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
        model=model, max_steps=frames + 5,
        text_sampler=utils.Sampler(temp=temp * 7 / 8, top_k=25) if temp else utils.Sampler(temp=0),
        audio_sampler=utils.Sampler(temp=temp, top_k=250) if temp else utils.Sampler(temp=0),
    )
    user = np.random.default_rng(0).integers(0, 2048, size=(frames, 8))
    times = []
    for t in range(frames):
        start = time.perf_counter()
        text = gen.step(mx.array(user[t : t + 1]))
        _ = text[0].item()
        audio = gen.last_audio_tokens()
        if audio is not None:
            _ = np.array(audio)
        times.append((time.perf_counter() - start) * 1000)
    return times


def run_worker(python: str, which: str, weights: Path, config: Path, frames: int, temp: float) -> float:
    cmd = [python, __file__, "--worker", which, str(weights), str(config), str(frames), str(temp)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), check=False)
    if out.returncode != 0:
        sys.exit(f"{which} worker failed:\n{out.stderr[-2000:]}")
    times = json.loads(out.stdout.strip().splitlines()[-1])
    return statistics.median(times[5:])  # the first frames include compilation and warm-up


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        which, weights, config, frames, temp = sys.argv[2:7]
        fn = worker_ours if which == "ours" else worker_kyutai
        print(json.dumps(fn(weights, config, int(frames), float(temp))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kyutai-python", required=True, help="python of a venv with Kyutai's moshi_mlx")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--temp", type=float, default=0.8, help="audio temperature (0: greedy)")
    parser.add_argument("--quant", choices=["bf16", "q8", "q4"], default="bf16",
                        help="quantize with moshi-mlx's quantizer first (Kyutai's default group sizes)")
    args = parser.parse_args()

    from moshi_mlx.quantize.quantizer import quantize_checkpoint
    from moshi_mlx.quantize.recipes import make_plan

    from moshi_mlx import LmConfig
    from moshi_mlx.testing import tiny_config, write_random_lm

    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            weights, config = write_random_lm(Path(tmp) / size, tiny_config(**SIZES[size]))
            if args.quant != "bf16":
                plan = make_plan(LmConfig.from_json(config), bits=int(args.quant[1:]))
                done = quantize_checkpoint(weights, Path(tmp) / f"{size}-{args.quant}", LmConfig.from_json(config),
                                           plan)
                weights, config = done.weights, done.config
            ours, theirs = [], []
            for _ in range(args.rounds):
                ours.append(run_worker(sys.executable, "ours", weights, config, args.frames, args.temp))
                theirs.append(run_worker(args.kyutai_python, "kyutai", weights, config, args.frames, args.temp))
            o, k = statistics.median(ours), statistics.median(theirs)
            print(f"{size:>6} {args.quant}: moshi-mlx {o:7.2f} ms/frame, Kyutai moshi_mlx {k:7.2f} ms/frame, "
                  f"speed-up {k / o:.2f}x (rounds: ours {[round(x, 1) for x in ours]}, "
                  f"Kyutai {[round(x, 1) for x in theirs]})")


if __name__ == "__main__":
    main()
