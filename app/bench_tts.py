"""`moshi-mlx bench --model tts-1.6b` (or tts-tiny): does this machine keep up with Kyutai's TTS?

Random weights in the structure of `kyutai/tts-1.6b-en_fr` (or the tiny test model), built in memory; a random
voice and a paragraph of made-up words; the frame loop of `say` (generate, decode) timed: time to first audio,
the LM step and Mimi's decode per frame, and the real-time factor.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from moshi_mlx.codec import choose_backend, load_codec
from moshi_mlx.devtools.random_mimi import write_random_mimi
from moshi_mlx.devtools.tiny_tts import TTS_1_6B, tiny_tts_config
from moshi_mlx.model.config import LmConfig
from moshi_mlx.model.lm import Lm
from moshi_mlx.model.pytorch_names import sanitize, to_pytorch_names
from moshi_mlx.tts.model import TtsModel, quantize_like_kyutai
from moshi_mlx.tts.script import Entry
from moshi_mlx.tts.speak import synthesize

from .model_args import DTYPES, codec_line

GIB = 1024**3


def _random_model(config: LmConfig, quant: str, dtype: mx.Dtype) -> TtsModel:
    mx.random.seed(0)
    lm = Lm(config)
    lm.set_dtype(dtype)
    # Depth steps that share a weight set share the tensors, as a loaded checkpoint does.
    params = dict(tree_flatten(lm.parameters()))
    lm.load_weights(list(sanitize(to_pytorch_names(params, config), config).items()))
    if quant in ("4", "8"):  # as `say -q` quantizes (Kyutai's run_tts)
        quantize_like_kyutai(lm, int(quant))
    for _, value in tree_flatten(lm.parameters()):
        mx.eval(value)
    lm.eval()
    return TtsModel(lm, tokenizer=None)


def bench_tts(args: Any) -> None:
    config = LmConfig.from_dict(TTS_1_6B) if args.model == "tts-1.6b" else tiny_tts_config()
    quant = args.quant or "bf16"
    print(f"moshi-mlx bench: {args.model} ({'bf16' if quant == 'bf16' else 'q' + quant}), random weights built in "
          f"memory, {args.frames} audio frames", flush=True)
    start = time.perf_counter()
    model = _random_model(config, quant, DTYPES[args.dtype])
    weights = sum({id(v): v.nbytes for _, v in tree_flatten(model.lm.parameters())}.values())  # shared once
    rng = np.random.default_rng(0)
    dim = model.lm.condition_provider.tensor_dim("speaker_wavs")
    voice = mx.array(rng.normal(size=(1, dim, 125)).astype(np.float32))
    # Made-up words of two tokens each, enough for the frames asked (a word takes about three steps).
    entries = [Entry((int(a), int(b)), f"w{i}", 2) for i, (a, b) in
               enumerate(rng.integers(4, config.text_card, size=(args.frames, 2)))]
    conditions, coef = model.conditions([voice], 2.0)
    gen = model.generator(coef, temp=0.6, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        backend, why = choose_backend(args.mimi)
        print(codec_line(backend, why), flush=True)
        codec = load_codec(write_random_mimi(Path(tmp) / "mimi.safetensors"), backend, num_codebooks=config.n_q)
        print(f"built in {time.perf_counter() - start:.1f} s: LM weights {weights / GIB:.2f} GiB", flush=True)
        lm_ms, decode_ms, first, t0 = [], [], None, time.perf_counter()
        for frame in synthesize(gen, codec, entries, conditions, max_steps=args.frames + 40):
            first = frame.since_start_s if first is None else first
            lm_ms.append(frame.lm_ms)
            decode_ms.append(frame.decode_ms)
            if len(lm_ms) >= args.frames:
                break
        wall = time.perf_counter() - t0
        codec.close()
    steps = model.delay_steps + config.max_delay + 1
    audio_s = len(lm_ms) * 0.08
    rtf = (wall - (first or 0)) / max(audio_s - 0.08, 1e-9)
    print(f"time to first audio {1000 * (first or wall):.0f} ms ({steps} steps before the first frame)")
    print(f"per frame: LM step {np.median(lm_ms):.1f} ms, Mimi decode {np.median(decode_ms):.1f} ms (medians)")
    print(f"{audio_s:.2f} s of audio; after the first frame, real-time factor {rtf:.2f}")
    lm, mimi = float(np.median(lm_ms)), float(np.median(decode_ms))
    if rtf < 1:
        verdict = "keeps up: speech plays without gaps"
    elif mimi > lm:
        verdict = f"too slow for gapless speech here: Mimi's decoder takes {mimi:.0f} ms a frame; write a file instead"
    else:
        verdict = f"too slow for gapless speech here: the model takes {lm:.0f} ms a frame; try -q 8 or -q 4"
    verdict += " (`say -o out.wav --no-play`)" if rtf >= 1 else ""
    print(f"verdict: {verdict}", flush=True)
