"""`moshi-mlx bench`: how fast Moshi runs on this machine, before downloading anything.

Random weights of the exact shapes, built in memory (lazily, module by module, so the 7B in q4 needs no more
than its q4 size), and a random full-size Mimi written to a temporary file. Three passes over the same audio:
a profiling pass that syncs after each stage (encode, temporal, depth, decode: median and p90), a count of the
LM step's operations and host synchronisations, and the real frame loop (`moshi_mlx.stream.filemode.run_frames`),
whose wall time gives the real-time factor and during which peak memory is measured. Then the live loop
(`Engine`) in real time on simulated sound devices of a given buffering, for the mouth-to-ear latency.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from moshi_mlx import FRAME_SIZE, Codec, Engine, Lm, LmConfig, Pipeline, load_codec, run_frames
from moshi_mlx.codec import BACKENDS, FRAME_MS, FRAME_S, choose_backend
from moshi_mlx.devtools.opcount import OpCounter
from moshi_mlx.devtools.process_memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from moshi_mlx.devtools.profiling import StepProfiler
from moshi_mlx.devtools.random_mimi import write_random_mimi
from moshi_mlx.devtools.stand_ins import SimulatedDevices
from moshi_mlx.model.stt import make_generator
from moshi_mlx.stream.audio_io import BLOCKS_PER_FRAME

from .memory import check_fits
from .model_args import DTYPES, add_dtype_arg, codec_line, dtype_note
from .parser import Parser, milliseconds

GIB = 1024**3
BUDGET_EXTRA = 500 * 1024**2  # beyond weights + KV cache: Mimi, activations, the interpreter
# The 7B's structure (16 streams, 8 depth steps, its delays and context) at smaller widths and depths.
MODELS: dict[str, dict] = {
    "tiny": dict(dim=256, num_heads=4, num_layers=2, depformer_dim=128, depformer_num_heads=4,
                 depformer_num_layers=2, depformer_dim_feedforward=528),
    "small": dict(dim=1024, num_heads=16, num_layers=8, depformer_dim=512, depformer_num_heads=8,
                  depformer_num_layers=4, depformer_dim_feedforward=2112),
    "7b": {},
    "personaplex": dict(dep_q=16, model_type="personaplex"),  # NVIDIA's PersonaPlex 7B (LmConfig.personaplex_7b)
}
# --mimi: "rust" is rustymimi; "auto" takes the codec package's default backend.
STAGES = ("encode", "temporal", "depth", "decode")
LIVE_FRAMES = 25  # the live pass's least length: 2 s, for a latency figure past the start


def random_lm(model: str, quant: str, dtype: mx.Dtype = mx.bfloat16) -> Lm:
    """Moshi's LM with random weights of the model's shapes in `dtype`, quantized as Kyutai's q4 / q8 files (their
    scales in `dtype`, as `load_lm` loads them)."""
    from moshi_mlx.quantize.recipes import make_plan

    config = LmConfig(**MODELS[model])
    mx.random.seed(0)
    lm = Lm(config)  # parameters are lazy: nothing is computed yet
    lm.set_dtype(dtype)
    if quant != "bf16":
        plan = make_plan(config, bits=int(quant))
        nn.quantize(lm, class_predicate=lambda path, _: plan[path].to_dict() if plan.get(path) else False)
    for _, value in tree_flatten(lm.parameters()):
        mx.eval(value)  # one tensor at a time: the float32 draws are freed as they go
    lm.eval()
    mx.clear_cache()
    return lm


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def profile(pipeline: Pipeline, audio: np.ndarray, trace: list[dict], origin: float) -> dict[str, list[float]]:
    """Each frame's stages one after the other, each ended by a host sync; trace events on thread 1."""
    times: dict[str, list[float]] = {stage: [] for stage in STAGES}
    profiler = StepProfiler(pipeline.gen)
    for t in range(len(audio) // FRAME_SIZE):
        t0 = time.perf_counter()
        codes = pipeline.codec.encode(audio[t * FRAME_SIZE : (t + 1) * FRAME_SIZE])
        t1 = time.perf_counter()
        out, temporal_ms, depth_ms = profiler.step(codes)
        first_call = temporal_ms == depth_ms == 0  # PersonaPlex's first call computes nothing
        t2 = time.perf_counter()
        if out.audio_codes is not None:
            pipeline.codec.decode(out.audio_codes)
        t3 = time.perf_counter()
        spans = {"encode": (t0, (t1 - t0) * 1000), "temporal": (t1, temporal_ms),
                 "depth": (t1 + temporal_ms / 1000, depth_ms), "decode": (t2, (t3 - t2) * 1000)}
        for stage, (start, ms) in spans.items():
            if stage == "decode" and out.audio_codes is None or stage in ("temporal", "depth") and first_call:
                continue
            times[stage].append(ms)
            trace.append({"name": stage, "ph": "X", "pid": 1, "tid": 1, "ts": (start - origin) * 1e6,
                          "dur": ms * 1000, "args": {"frame": t}})
    return times


def echo_cost(frames: int) -> tuple[float, float] | None:
    """Median and p90 ms of cleaning one microphone frame (WebRTC AEC3), on speech-like echo; None without livekit."""
    from moshi_mlx.stream.echo.canceller import make_echo_canceller
    from moshi_mlx.stream.echo.simulator import speech_like

    canceller = make_echo_canceller(True)
    if canceller is None:
        return None
    voice = speech_like(max(frames, 25) * FRAME_MS / 1000 + 1, seed=1)
    rng = np.random.default_rng(1)
    costs = []
    for t in range(max(frames, 25)):
        played = voice[t * FRAME_SIZE : (t + 1) * FRAME_SIZE]
        canceller.add_reference(played)
        mic = 0.5 * np.roll(played, 480) + 0.003 * rng.standard_normal(FRAME_SIZE).astype(np.float32)
        start = time.perf_counter()
        canceller.clean(mic.astype(np.float32))
        costs.append((time.perf_counter() - start) * 1000)
    return stats(costs)


def verdict(name: str, rtf: float, medians: dict[str, float], quant: str) -> str:
    """One line: real time with how much headroom, or what to try instead."""
    if rtf <= 1:
        return f"{name} runs in real time on this machine with {100 * (1 - rtf):.0f} % headroom"
    lm_ms = medians["temporal"] + medians["depth"]
    mimi_ms = medians["encode"] + medians["decode"]
    if mimi_ms > lm_ms:
        advice = f"Mimi's encoder and decoder take {mimi_ms:.0f} ms a frame here, more than the language model"
    elif quant in ("bf16", "8"):
        advice = f"the language model takes {lm_ms:.0f} ms a frame; try {'-q 8 or ' if quant == 'bf16' else ''}-q 4"
    else:
        advice = f"the language model alone takes {lm_ms:.0f} ms of each 80 ms frame: this machine is too slow for it"
    return f"{name} does not run in real time on this machine (real-time factor {rtf:.2f}): {advice}"


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="moshi-mlx bench",
        description="Measure Moshi on this machine before downloading it: random weights of the exact shapes, "
        "built in memory; per-stage milliseconds, operations and host syncs per frame, peak memory, the "
        "real-time factor of the frame loop and a verdict.",
    )
    parser.add_argument("--model", choices=[*MODELS, "stt-1b", "stt-2.6b", "tts-1.6b", "tts-tiny"], default="7b",
                        help="7b (Moshi), small / tiny (the 7B's structure, narrower and shallower), personaplex "
                        "(NVIDIA's PersonaPlex 7B, 16 depth steps), Kyutai's speech-to-text stt-1b / stt-2.6b "
                        "(`moshi-mlx transcribe`) or text-to-speech tts-1.6b (`moshi-mlx say`)")
    parser.add_argument("-q", "--quantize", "--quant", dest="quant", choices=["4", "8", "bf16"], default=None,
                        help="weights precision (default 4; bf16 for stt-*)")
    parser.add_argument("--frames", type=int, default=50, help="frames per pass (80 ms each; default 50)")
    parser.add_argument("--trace", default=None, help="write a Chrome / Perfetto trace (JSON) of the stages")
    parser.add_argument("--mimi", choices=BACKENDS, default="auto",
                        help="Mimi backend: rust (rustymimi), mlx, or auto")
    parser.add_argument("--device-buffer-ms", type=milliseconds, default=10.0,
                        help="the simulated devices' buffering beyond their 20 ms block, each way (default 10)")
    add_dtype_arg(parser)
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("argument --frames: at least 2 (Moshi's first audio comes at the second frame)")
    if args.model.startswith("tts-"):  # Kyutai's TTS (`moshi-mlx say`)
        from .bench_tts import bench_tts

        return bench_tts(args)
    if args.model.startswith("stt-"):
        from .bench_stt import bench_stt

        if args.trace is not None:
            parser.error("--trace is for Moshi's stages; leave it out with --model stt-*")
        args.quant = args.quant or "bf16"
        return bench_stt(args)
    args.quant = args.quant or "4"
    if args.trace is not None:
        from .parser import check_outputs

        check_outputs({"--trace": args.trace})
    quant_name = args.dtype if args.quant == "bf16" else f"q{args.quant}"
    if args.model in ("7b", "personaplex"):
        check_fits(quant_name)
    model_name = {"7b": "7B", "personaplex": "PersonaPlex 7B"}.get(args.model, args.model)
    name = f"{model_name} {quant_name}"

    print(f"moshi-mlx bench: {name}, random weights built in memory, {args.frames} frames per pass", flush=True)
    if note := dtype_note(args.dtype, quant_name, f"the random {model_name}"):
        print(note, file=sys.stderr, flush=True)
    start = time.perf_counter()
    lm = random_lm(args.model, args.quant, DTYPES[args.dtype])
    weights_bytes = sum(v.nbytes for _, v in tree_flatten(lm.parameters()))
    with tempfile.TemporaryDirectory() as tmp:  # the codec may reload its file on reset
        mimi_path = write_random_mimi(Path(tmp) / "mimi.safetensors")
        backend, why = choose_backend(args.mimi)
        print(codec_line(backend, why), flush=True)
        before = current_rss_bytes()
        codec = load_codec(mimi_path, backend=backend)
        mimi_bytes = current_rss_bytes() - before
        try:
            _run(args, name, lm, weights_bytes, codec, mimi_bytes, start)
        finally:
            codec.close()
        live_latency(args, lm, mimi_path, backend)


def _run(args: Any, name: str, lm: Lm, weights_bytes: int, codec: Codec, mimi_bytes: int, start: float) -> None:
    gen = make_generator(lm, seed=0)
    pipeline = Pipeline(gen, codec)
    print(f"built in {time.perf_counter() - start:.1f} s: LM weights {weights_bytes / GIB:.2f} GiB, "
          f"Mimi {type(codec).__name__} ({mimi_bytes / GIB:.2f} GiB resident)", flush=True)

    audio = np.random.default_rng(0).normal(0, 0.1, args.frames * FRAME_SIZE).astype(np.float32)
    pipeline.warmup(2)
    trace: list[dict] = [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": label}}
                         for tid, label in ((1, "stages (profiling pass)"), (2, "frame loop"))]
    origin = time.perf_counter()
    times = profile(pipeline, audio, trace, origin)

    counted = 1  # the same every frame once compiled
    with OpCounter() as counter:
        for _ in range(counted):
            gen.step(np.zeros(gen.num_user, np.int64))
    gen.reset()  # (the codec carries on: resetting it reloads rustymimi, which costs memory the app does not spend)

    # The frame loop as `moshi-mlx run` runs it.
    mx.reset_peak_memory()
    reset_peak_rss()
    stamps = [time.perf_counter()]
    run_frames(pipeline, audio, on_event=lambda event: stamps.append(time.perf_counter()))
    wall = stamps[-1] - stamps[0]
    rss, mlx_peak = peak_rss_bytes(), mx.get_peak_memory()
    kv_bytes = sum(c.keys.nbytes + c.values.nbytes for c in gen.cache if c.keys is not None)
    for t, (a, b) in enumerate(zip(stamps, stamps[1:], strict=False)):
        trace.append({"name": f"frame {t}", "ph": "X", "pid": 1, "tid": 2, "ts": (a - origin) * 1e6,
                      "dur": (b - a) * 1e6, "args": {"frame": t}})

    print(f"{'stage':<10}{'median':>12}{'p90':>12}   (profiling pass: a host sync ends each stage)")
    for stage in STAGES:
        median, p90 = stats(times[stage])
        print(f"{stage:<10}{median:>9.1f} ms{p90:>9.1f} ms")
    print(f"LM step: {counter.ops / counted:,.0f} operations and {counter.syncs / counted:g} host "
          f"synchronisation(s) per frame")
    budget = weights_bytes + mimi_bytes + kv_bytes + BUDGET_EXTRA
    print(f"memory: peak resident {rss / GIB:.2f} GiB (MLX peak {mlx_peak / GIB:.2f} GiB); budget "
          f"{budget / GIB:.2f} GiB = LM weights {weights_bytes / GIB:.2f} + Mimi {mimi_bytes / GIB:.2f} + KV cache "
          f"{kv_bytes / GIB:.3f} + 0.49 GiB: {'within' if rss <= budget else 'OVER'}")
    rtf = wall / (args.frames * FRAME_MS / 1000)
    print(f"frame loop (moshi_mlx.stream.filemode.run_frames): {args.frames} frames in {wall:.2f} s, "
          f"real-time factor {rtf:.2f} ({1000 * wall / args.frames:.1f} ms per 80 ms frame)")
    echo = echo_cost(args.frames)
    if echo is not None:
        print(f"echo canceller (chat --aec on, on the encoder's thread): {echo[0]:.2f} ms per 80 ms frame "
              f"(p90 {echo[1]:.2f})")
    medians = {stage: stats(times[stage])[0] for stage in STAGES}
    print(f"verdict: {verdict(name, rtf, medians, args.quant)}", flush=True)
    if args.trace is not None:
        Path(args.trace).write_text(json.dumps({"traceEvents": trace, "displayTimeUnit": "ms"}))
        print(f"trace: {args.trace} (open in https://ui.perfetto.dev or chrome://tracing)")


def live_latency(args: Any, lm: Lm, mimi_path: Path, backend: str) -> None:
    """The live loop for `--frames` frames (25 at least) in real time on simulated devices: its mouth-to-ear
    latency."""
    buffer_s, frames = args.device_buffer_ms / 1000, max(args.frames, LIVE_FRAMES)
    signal = np.random.default_rng(1).normal(0, 0.1, frames * FRAME_SIZE).astype(np.float32)
    block_s = FRAME_S / BLOCKS_PER_FRAME
    devices = SimulatedDevices(signal, input_latency_s=block_s + buffer_s, output_latency_s=block_s + buffer_s)
    # A fresh generator and codec: the engine traces and runs all MLX work on its own thread, as `chat` does.
    codec = load_codec(mimi_path, backend=backend)
    try:
        with Engine(Pipeline(make_generator(lm, seed=0), codec), devices=devices) as engine:
            time.sleep(frames * FRAME_S)
        stats = engine.stats()
    finally:
        codec.close()
    print(f"live loop (Engine, simulated devices: {1000 * block_s:.0f} ms blocks + {args.device_buffer_ms:g} ms "
          "buffering each way, "
          f"{frames} frames in real time): {stats.dropped} frames skipped, {stats.underruns} underruns")
    print(f"latency, mouth to ear: {stats.latency.describe()}")
