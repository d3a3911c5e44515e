"""A long streaming run of Mimi: time per frame and memory, block by block, to show both stay flat.

    python benchmarks/mimi_soak.py [--frames 7500] [--backend mlx|rust] [--every 500] [--mimi-weights W]

7,500 frames are 10 minutes of audio, past rustymimi 0.4.1's 4,096-frame rotary table (it needs
`max_seq_len` raised there, and its attention cache then grows). Each frame is encoded, and the codes decoded,
on the same codec. Without --mimi-weights a random full-size Mimi is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE, load_codec
from moshi_mlx.codec import FRAME_S
from moshi_mlx.devtools.process_memory import current_rss_bytes


def rss_mb() -> float:
    return current_rss_bytes() / 2**20


def audio(index: int) -> np.ndarray:
    """Frame `index` of an endless voiced glide with noise, continuous across frames."""
    t = (index * FRAME_SIZE + np.arange(FRAME_SIZE)) / SAMPLE_RATE
    voiced = np.sin(2 * np.pi * (140 * t + 6 * np.sin(2 * np.pi * 0.5 * t))) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    noise = np.random.default_rng(index).standard_normal(FRAME_SIZE)
    return (0.3 * voiced + 0.01 * noise).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=7500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--backend", choices=["mlx", "rust"], default="mlx")
    parser.add_argument("--mimi-weights", default=None)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.mimi_weights
        if weights is None:
            from moshi_mlx.devtools.random_mimi import write_random_mimi

            weights = write_random_mimi(Path(tmp) / "mimi.safetensors")
        codec = load_codec(weights, backend=args.backend)
    minutes = args.frames * FRAME_S / 60
    print(f"{args.backend} Mimi, {args.frames} frames ({minutes:.1f} min of audio), device {mx.default_device()}")
    print(f"{'frames':>12} {'encode ms':>10} {'decode ms':>10} {'RSS MB':>8} {'MLX MB':>8}", flush=True)
    enc, dec = [], []
    for i in range(args.frames):
        frame = audio(i)
        t0 = time.perf_counter()
        codes = codec.encode(frame)
        t1 = time.perf_counter()
        pcm = codec.decode(codes)
        t2 = time.perf_counter()
        if not np.all(np.isfinite(pcm)):
            sys.exit(f"error: frame {i} decoded to non-finite samples")
        enc.append(t1 - t0)
        dec.append(t2 - t1)
        if (i + 1) % args.every == 0 or i + 1 == args.frames:
            start = i + 1 - len(enc)
            print(f"{start:>5}-{i + 1:<6} {1000 * np.median(enc):10.1f} {1000 * np.median(dec):10.1f} "
                  f"{rss_mb():8.0f} {mx.get_active_memory() / 2**20:8.0f}", flush=True)
            enc, dec = [], []


if __name__ == "__main__":
    main()
