"""Per-frame cost and exactness of the Mimi backends: MLX (float32, bfloat16, float16) and rustymimi (float32).

    python benchmarks/mimi_bench.py [--frames 25] [--mimi-weights W] [--backends mlx-float32,mlx-bfloat16,rust]

Runs the 25 frames of tests/fixtures/mimi_pytorch.safetensors (Kyutai's PyTorch Mimi on the random test
weights, seed 0), so without --mimi-weights it writes those weights to a temporary folder and also reports
agreement: codes equal to PyTorch's, and the decode's max error relative to PyTorch's output (decoding
PyTorch's codes). Prints the median and p90 ms per frame, after one warm-up frame (the first call allocates,
and compiles on a GPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from safetensors.numpy import load_file

from moshi_mlx import FRAME_SIZE, load_codec
from moshi_mlx.codec import FRAME_MS, rustymimi_installed

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "mimi_pytorch.safetensors"
BACKENDS = ("mlx-float32", "mlx-bfloat16", "mlx-float16", "rust")


def measure(codec, audio: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[float], list[float]]:
    frames = len(audio) // FRAME_SIZE
    codec.decode(codec.encode(audio[:FRAME_SIZE]))  # warm-up
    codec.reset()
    encoded, decoded, enc_ms, dec_ms = [], [], [], []
    for i in range(frames):
        t0 = time.perf_counter()
        encoded.append(codec.encode(audio[i * FRAME_SIZE : (i + 1) * FRAME_SIZE]))
        enc_ms.append(1000 * (time.perf_counter() - t0))
    for i in range(frames):
        t0 = time.perf_counter()
        decoded.append(codec.decode(codes[:, i]))
        dec_ms.append(1000 * (time.perf_counter() - t0))
    return np.stack(encoded, axis=1), np.concatenate(decoded), enc_ms, dec_ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=25, help="frames of the fixture to run (at most 25)")
    parser.add_argument("--mimi-weights", default=None, help="a Mimi checkpoint (default: the random test weights)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args(argv)

    golden = load_file(str(GOLDEN))
    frames = min(args.frames, golden["codes"].shape[1])
    audio, codes = golden["input"][: frames * FRAME_SIZE], golden["codes"][:, :frames]
    reference = golden["decoded"][: frames * FRAME_SIZE] if args.mimi_weights is None else None
    print(f"MLX device {mx.default_device()}; {frames} frames; ms per {FRAME_MS:.0f} ms frame, median (p90)")
    print(f"{'backend':14} {'encode':>15} {'decode':>15} {'codes = PyTorch':>16} {'decode error':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.mimi_weights
        if weights is None:
            from moshi_mlx.devtools.random_mimi import write_random_mimi

            weights = write_random_mimi(Path(tmp) / "mimi.safetensors")
        for name in args.backends.split(","):
            if name == "rust" and not rustymimi_installed():
                print(f"{name:14} (rustymimi not installed)")
                continue
            backend, _, dtype = name.partition("-")
            codec = load_codec(weights, backend=backend, dtype=getattr(mx, dtype or "float32"))
            encoded, decoded, enc_ms, dec_ms = measure(codec, audio, codes)
            codec.close()
            agree = error = "-"
            if reference is not None:
                agree = f"{np.mean(encoded == codes) * 100:.1f} %"
                error = f"{np.abs(decoded - reference).max() / np.abs(reference).max():.1e}"
            print(f"{name:14} {np.median(enc_ms):7.1f} ({np.percentile(enc_ms, 90):5.1f}) "
                  f"{np.median(dec_ms):7.1f} ({np.percentile(dec_ms, 90):5.1f}) {agree:>16} {error:>13}", flush=True)


if __name__ == "__main__":
    main()
