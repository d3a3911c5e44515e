"""Per-stage cost of a conversation frame (Mimi encode, LM step, Mimi decode), offline and live.

    python benchmarks/engine_bench.py [--frames 50] [--lm tiny|small] [--live SECONDS] [--virtual]
    python benchmarks/engine_bench.py --moshi-weights M --config C --mimi-weights W   # real models

Without model files it builds a random full-size Mimi and a random LM (the 7B's structure; `tiny` or `small`
dimensions). Offline, frames run back to back: median and p90 ms per stage, and the real-time factor. With
--live, the engine runs on the default sound devices for that long and prints the callback cadence, Moshi's
first-output latency in frames, and the lag policy's counters; --virtual starts a private PulseAudio server
(`moshi_mlx.devtools.virtual_audio`, Linux) and plays speech into its microphone.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from moshi_mlx import FRAME_SIZE, SAMPLE_RATE, Engine, FrameEvent, LmConfig, Pipeline, run_frames
from moshi_mlx.codec import FRAME_MS, FRAME_S
from moshi_mlx.devtools.random_lm import tiny_config, write_random_lm
from moshi_mlx.devtools.random_mimi import write_random_mimi
from moshi_mlx.devtools.virtual_audio import VirtualAudio, reinitialise_portaudio, speech_wav

SIZES = {
    "tiny": dict(card=2048),
    "small": dict(dim=1024, num_heads=16, num_layers=8, depformer_dim=512, depformer_num_heads=8,
                  depformer_num_layers=4, depformer_dim_feedforward=2048, text_card=32000, card=2048),
}


def random_model(directory: Path, size: str) -> tuple[Path, Path, Path]:
    weights, config = write_random_lm(directory, tiny_config(**SIZES[size]), seed=0)
    return weights, config, write_random_mimi(directory / "mimi.safetensors")


def test_audio(frames: int) -> np.ndarray:
    t = np.arange(frames * FRAME_SIZE) / SAMPLE_RATE
    voiced = np.sin(2 * np.pi * (140 + 40 * np.sin(2 * np.pi * 0.5 * t)) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    return (0.3 * voiced + 0.01 * np.random.default_rng(0).standard_normal(t.shape)).astype(np.float32)


def summary(name: str, values: list[float]) -> str:
    return f"{name} {np.median(values):6.1f} ms (p90 {np.percentile(values, 90):6.1f})"


def print_stages(events: list[FrameEvent]) -> None:
    speaking = [e for e in events if e.decode_ms > 0]
    print("  " + summary("encode", [e.encode_ms for e in events]))
    print("  " + summary("lm    ", [e.lm_ms for e in events]))
    print("  " + summary("decode", [e.decode_ms for e in speaking]))
    print("  " + summary("total ", [e.total_ms for e in speaking]) + f"  (budget {FRAME_MS:.0f} ms)")


def offline(pipeline: Pipeline, frames: int) -> None:
    """The file loop, stages one after the other and then overlapped, alternately (the machine is noisy)."""
    pipeline.warmup()
    audio = test_audio(frames)
    rtf: dict[bool, list[float]] = {False: [], True: []}
    events: dict[bool, list[FrameEvent]] = {}
    for _ in range(2):
        for overlap in (False, True):
            start = time.perf_counter()
            result = run_frames(pipeline, audio, overlap=overlap)
            rtf[overlap].append((time.perf_counter() - start) / (frames * FRAME_S))
            events[overlap] = result.events
    slowest = {o: np.median([max(e.encode_ms, e.lm_ms, e.decode_ms) for e in events[o][1:]]) for o in rtf}
    for overlap, name in ((False, "one after the other"), (True, "pipelined")):
        print(f"offline, {frames} frames back to back, {name}: real-time factor {min(rtf[overlap]):.2f} "
              f"(frame {min(rtf[overlap]) * FRAME_MS:.1f} ms; slowest stage {slowest[overlap]:.1f} ms)")
        print_stages(events[overlap])
    print(f"pipelined / one after the other: {min(rtf[True]) / min(rtf[False]):.2f}; pipelined frame / its slowest "
          f"stage: {min(rtf[True]) * FRAME_MS / slowest[True]:.2f}")


def live(pipeline: Pipeline, seconds: float, virtual: bool) -> None:
    server = None
    if virtual:
        server = VirtualAudio().start()
        os.environ["PULSE_SERVER"] = server.env["PULSE_SERVER"]
        reinitialise_portaudio()
    try:
        pipeline.reset()
        events: list[FrameEvent] = []
        with Engine(pipeline, on_event=events.append) as engine:
            if server is not None:
                text = "Hello Moshi. I would like to hear a story about the sea, told slowly, with many details. " * 3
                player = server.play(speech_wav(server.dir / "speech.wav", text))
            time.sleep(seconds)
            if server is not None:
                player.terminate()
        stats = engine.stats()
    finally:
        if server is not None:
            server.stop()
    for name, times in (("input", stats.input_times), ("output", stats.output_times)):
        d = stats.intervals_ms(times)[4 if name == "output" else 0 :]
        print(f"{name} callbacks: {len(d) + 1}, every {d.mean():.2f} ms (std {d.std():.2f}, min {d.min():.1f}, "
              f"max {d.max():.1f})")
    print(f"first output: {stats.first_output_frames:.2f} frames after the first input callback")
    print(f"frames: received {stats.received}, processed {stats.processed}, dropped {stats.dropped}; "
          f"speaker underruns {stats.underruns}; PortAudio flags in {stats.input_overflows} "
          f"out {stats.output_underflows}; longest callback {stats.callback_max_ms:.2f} ms")
    print_stages(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--lm", choices=list(SIZES), default="tiny")
    parser.add_argument("--live", type=float, default=0, metavar="SECONDS")
    parser.add_argument("--virtual", action="store_true", help="live on a private PulseAudio server (Linux)")
    parser.add_argument("--moshi-weights")
    parser.add_argument("--config")
    parser.add_argument("--mimi-weights")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.moshi_weights:
            weights, config, mimi = args.moshi_weights, args.config, args.mimi_weights
        else:
            weights, config, mimi = random_model(Path(tmp), args.lm)
        lm_config = LmConfig.from_json(config) if config else None
        pipeline = Pipeline.load(weights, mimi, None, lm_config, seed=0)
        offline(pipeline, args.frames)
        if args.live:
            live(pipeline, args.live, args.virtual)


if __name__ == "__main__":
    main()
