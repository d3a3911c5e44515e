"""An hour of audio through `moshi-mlx transcribe FILE`: does its memory stay flat?

    python benchmarks/stt_soak.py --minutes 60 [--codec stand-in|rust|mlx] [--limit-minutes 15] [--json out.json]

Writes a synthetic input of `--minutes` (16 kHz stereo WAV, so that reading, mixing down and resampling run in
blocks as for any file), and the tiny random STT model with a full-size random Mimi, then runs the real command
(`moshi-mlx transcribe IN -o out.json --format json`) in a child process and samples its resident memory every
few seconds, with how far into the input it is (the end of the last word written to -o's temporary file).
`--codec stand-in` replaces Mimi by a codec that costs nothing (`devtools.stt_stand_ins.CheapCodec`), so a whole hour
goes through in minutes: the file path's own memory (reading, resampling, the model, the words, the writers);
`rust` and `mlx` run the real Mimi (slower than real time on a small CPU: `--limit-minutes` stops the run with
Ctrl-C, which also exercises the interrupted path). Reports the lows and highs of resident memory per quarter of
the run, and how far the lows moved from the second quarter to the last.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

RATE = 16000


def write_input(path: Path, minutes: float) -> Path:
    """Tones under noise, a minute at a time (the whole never in memory)."""
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(str(path), "w", samplerate=RATE, channels=2, subtype="PCM_16") as f:
        for minute in range(int(np.ceil(minutes))):
            n = int(min(1.0, minutes - minute) * 60 * RATE)
            t = (minute * 60 * RATE + np.arange(n)) / RATE
            tone = 0.2 * np.sin(2 * np.pi * (220 + 120 * np.sin(2 * np.pi * 0.3 * t)) * t)
            f.write(np.stack([tone + 0.03 * rng.standard_normal(n), tone], axis=1).astype(np.float32))
    return path


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def position(folder: Path) -> float | None:
    """The end of the last word in -o's temporary file (seconds of the input)."""
    for part in folder.glob(".out.json.*.part"):
        try:
            with part.open("rb") as f:
                f.seek(max(0, part.stat().st_size - 400))
                ends = re.findall(rb'"end": ([\d.]+)', f.read())
        except OSError:
            return None
        return float(ends[-1]) if ends else None
    return None


def child(argv: list[str]) -> None:
    """`moshi-mlx transcribe` with Mimi replaced by a codec that costs nothing (run in the child process)."""
    from moshi_mlx.app import cli, transcribe

    from moshi_mlx import Pipeline
    from moshi_mlx.devtools.stt_stand_ins import CheapCodec
    from moshi_mlx.model.stt import make_generator
    from moshi_mlx.model.weights import load_lm
    from moshi_mlx.stream.pipeline import load_text_tokenizer

    def load(args, files):
        lm = load_lm(files.moshi_weights, files.config)
        return Pipeline(make_generator(lm, temp_text=0.0), CheapCodec(32), load_text_tokenizer(files.tokenizer))

    transcribe.load_stt = load
    cli.main(argv)


def soak(minutes: float, codec: str, limit_minutes: float, every_s: float, folder: Path) -> dict:
    from moshi_mlx.devtools.tiny_stt import write_tiny_stt

    model = write_tiny_stt(folder / "model")
    source = write_input(folder / "in.wav", minutes)
    out = folder / "out" / "out.json"
    out.parent.mkdir()
    argv = ["transcribe", str(source), "-o", str(out), "--format", "json", "--quiet", *map(str, model.cli_args())]
    if codec == "stand-in":
        command = [sys.executable, __file__, "--child", json.dumps(argv)]
    else:
        command = [sys.executable, "-m", "moshi_mlx", *argv, "--mimi", codec]
    print(f"input {minutes:g} min ({source.stat().st_size / 2**20:.0f} MB), codec {codec}; running", flush=True)
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float, float | None]] = []  # (wall s, RSS MB, input position s)
    while process.poll() is None:
        elapsed = time.monotonic() - start
        if elapsed > limit_minutes * 60:
            process.send_signal(signal.SIGINT)
            break
        rss = rss_mb(process.pid)
        if rss is not None:
            samples.append((elapsed, rss, position(out.parent)))
            if len(samples) % max(1, int(60 / every_s)) == 0:
                print(f"  {elapsed / 60:5.1f} min: RSS {rss:7.1f} MB, input at {(samples[-1][2] or 0) / 60:5.1f} min",
                      flush=True)
        time.sleep(every_s)
    _, err = process.communicate(timeout=120)
    return report(samples, minutes, codec, process.returncode, err, out)


def report(samples: list, minutes: float, codec: str, code: int, err: str, out: Path) -> dict:
    """Lows and highs of resident memory per quarter of the run (Mimi's renewals make a sawtooth: a successor holds
    a second copy of its weights while it primes), and the growth of the lows over the second half."""
    placed = [(t, rss, pos) for t, rss, pos in samples if pos is not None]
    quarters = [placed[i * len(placed) // 4 : (i + 1) * len(placed) // 4] for i in range(4)] if len(placed) >= 8 else []
    windows = [(q[0][2] / 60, q[-1][2] / 60, min(r for _, r, _ in q), max(r for _, r, _ in q)) for q in quarters]
    lows = [low for _, _, low, _ in windows]
    words = len(json.loads(out.read_text())["words"]) if out.exists() else 0
    result = {
        "codec": codec, "input_minutes": minutes, "exit": code, "wall_minutes": samples[-1][0] / 60 if samples else 0,
        "reached_minutes": (placed[-1][2] / 60) if placed else 0, "words": words,
        "quarters": [dict(zip(("from_min", "to_min", "low_mb", "high_mb"), w, strict=True)) for w in windows],
        "rss_peak_mb": max((r for _, r, _ in samples), default=None),
        "lows_growth_mb": lows[-1] - lows[1] if len(lows) == 4 else None,
        "samples": samples, "stderr_tail": err.strip().splitlines()[-2:],
    }
    print(f"{codec}: {result['reached_minutes']:.1f} of {minutes:g} min of audio in {result['wall_minutes']:.1f} min "
          f"(exit {code}), {words} words; resident memory low-high per quarter of the run:")
    for start, end, low, high in windows:
        print(f"  audio {start:5.1f}-{end:5.1f} min: {low:7.1f} - {high:7.1f} MB")
    print(f"  peak {result['rss_peak_mb']:.1f} MB; the lows moved {result['lows_growth_mb']:+.1f} MB from the second "
          "quarter to the last")
    return result


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60, help="length of the input (default 60)")
    parser.add_argument("--codec", choices=["stand-in", "rust", "mlx"], default="stand-in")
    parser.add_argument("--limit-minutes", type=float, default=30, help="Ctrl-C the run after this long (default 30)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between memory samples (default 5)")
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument("--dir", default=None, help="folder for the model, the input and -o (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = soak(args.minutes, args.codec, args.limit_minutes, args.every, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
