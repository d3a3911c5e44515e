"""`moshi-mlx bench --model stt-1b|stt-2.6b`: does this machine transcribe live, before downloading anything?

Random weights of the real shapes built in memory (as `bench` builds Moshi's), Mimi at 32 codebooks, the file path
of `moshi-mlx transcribe` over random audio: per-frame encode and step, operations and host syncs per step, peak
memory, the real-time factor of the pipelined frame loop, and a verdict.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from moshi_mlx import FRAME_SIZE, Lm, LmConfig, Pipeline, load_codec
from moshi_mlx.codec import FRAME_MS, choose_backend
from moshi_mlx.devtools.opcount import OpCounter
from moshi_mlx.devtools.process_memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss
from moshi_mlx.devtools.random_mimi import write_random_mimi
from moshi_mlx.model.stt import SttGen
from moshi_mlx.stream.frame_loop import run_frame_loop

from .model_args import DTYPES, codec_line

GIB = 1024**3
# Kyutai's configs (config.json of kyutai/stt-1b-en_fr and kyutai/stt-2.6b-en, as tests/fixtures/stt_*.json keep
# them): what sets the cost of a frame.
STT_SHAPES: dict[str, dict] = {
    "stt-1b": dict(num_heads=16, num_layers=16, context=750, text_card=8000, extra_heads_num_heads=4,
                   stt_config={"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0}),
    "stt-2.6b": dict(num_heads=32, num_layers=48, context=375, text_card=4000,
                     stt_config={"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0}),
}
COMMON = dict(dim=2048, hidden_scale=4.125, max_period=100000, n_q=32, dep_q=0, card=2048, delays=[0] * 33,
              model_type="stt")


def stt_config(model: str) -> LmConfig:
    return LmConfig(**COMMON, **STT_SHAPES[model])


def random_stt(model: str, quant: str, dtype: mx.Dtype) -> Lm:
    """The model with random weights of its shapes in `dtype`, quantized as `bench` quantizes Moshi (Kyutai publishes
    these in bf16 only: -q 4|8 tell what a quantized copy would cost)."""
    mx.random.seed(0)
    lm = Lm(stt_config(model))
    lm.set_dtype(dtype)
    if quant != "bf16":
        from moshi_mlx.quantize.recipes import make_plan

        plan = make_plan(lm.config, bits=int(quant))
        nn.quantize(lm, class_predicate=lambda path, _: plan[path].to_dict() if plan.get(path) else False)
    for _, value in tree_flatten(lm.parameters()):
        mx.eval(value)
    lm.eval()
    mx.clear_cache()
    return lm


def bench_stt(args: argparse.Namespace) -> None:
    """The speech-to-text bench (`moshi-mlx bench --model stt-...`)."""
    quant = args.dtype if args.quant == "bf16" else f"q{args.quant}"
    name = f"{args.model} {quant}"
    delay = STT_SHAPES[args.model]["stt_config"]["audio_delay_seconds"]
    print(f"moshi-mlx bench: {name}, random weights built in memory, {args.frames} frames per pass", flush=True)
    start = time.perf_counter()
    lm = random_stt(args.model, args.quant, DTYPES[args.dtype])
    weights = sum(v.nbytes for _, v in tree_flatten(lm.parameters()))
    with tempfile.TemporaryDirectory() as tmp:
        mimi_path = write_random_mimi(Path(tmp) / "mimi.safetensors")
        backend, why = choose_backend(args.mimi)
        print(codec_line(backend, why), flush=True)
        before = current_rss_bytes()
        codec = load_codec(mimi_path, backend=backend, num_codebooks=32)
        mimi = current_rss_bytes() - before
        gen = SttGen(lm, seed=0)
        pipeline = Pipeline(gen, codec)
        print(f"built in {time.perf_counter() - start:.1f} s: weights {weights / GIB:.2f} GiB, Mimi "
              f"{type(codec).__name__} ({mimi / GIB:.2f} GiB resident)", flush=True)
        try:
            _measure(args, name, pipeline, delay)
        finally:
            codec.close()


def _measure(args: argparse.Namespace, name: str, pipeline: Pipeline, delay: float) -> None:
    gen, codec = pipeline.gen, pipeline.codec
    audio = np.random.default_rng(0).normal(0, 0.1, args.frames * FRAME_SIZE).astype(np.float32)
    frames = [audio[t * FRAME_SIZE : (t + 1) * FRAME_SIZE] for t in range(args.frames)]
    pipeline.warmup(2)
    encode_ms, step_ms = [], []
    for frame in frames:  # each stage ended by its host sync
        t0 = time.perf_counter()
        codes = codec.encode(frame)
        t1 = time.perf_counter()
        gen.step(codes)
        t2 = time.perf_counter()
        encode_ms.append((t1 - t0) * 1000)
        step_ms.append((t2 - t1) * 1000)
    with OpCounter() as counter:
        gen.step(np.zeros(gen.num_user, np.int64))
    pipeline.reset()
    mx.reset_peak_memory()
    reset_peak_rss()
    stamps = [time.perf_counter()]
    run_frame_loop(pipeline, frames, lambda event, user, pcm: stamps.append(time.perf_counter()))
    wall = stamps[-1] - stamps[0]
    encode, step = float(np.median(encode_ms)), float(np.median(step_ms))
    print(f"{'stage':<10}{'median':>12}{'p90':>12}")
    for stage, values in (("encode", encode_ms), ("step", step_ms)):
        print(f"{stage:<10}{np.median(values):>9.1f} ms{np.percentile(values, 90):>9.1f} ms")
    print(f"step: {counter.ops:,.0f} operations and {counter.syncs:g} host synchronisation(s) per frame")
    print(f"memory: peak resident {peak_rss_bytes() / GIB:.2f} GiB (MLX peak {mx.get_peak_memory() / GIB:.2f} GiB)")
    rtf = wall / (args.frames * FRAME_MS / 1000)
    print(f"frame loop (as `moshi-mlx transcribe` runs it): {args.frames} frames in {wall:.2f} s, real-time factor "
          f"{rtf:.2f} ({1000 * wall / args.frames:.1f} ms per 80 ms frame)")
    print(f"verdict: {verdict(name, rtf, encode, step, delay)}", flush=True)


def verdict(name: str, rtf: float, encode_ms: float, step_ms: float, delay_s: float) -> str:
    """One line: keeps up live (and how far behind the words come), or what is too slow."""
    if rtf <= 1:
        return (f"{name} keeps up with live speech on this machine with {100 * (1 - rtf):.0f} % headroom: words come "
                f"about {delay_s + 2 * FRAME_MS / 1000:.2f} s after they are said (the model's {delay_s:g} s delay "
                "and two frames)")
    slowest = ("Mimi's encoder", encode_ms) if encode_ms > step_ms else ("the model's step", step_ms)
    return (f"{name} does not keep up with live speech on this machine (real-time factor {rtf:.2f}): "
            f"{slowest[0]} takes {slowest[1]:.0f} ms of each {FRAME_MS:.0f} ms frame; files still transcribe, "
            f"{rtf:.1f}x slower than they play")
