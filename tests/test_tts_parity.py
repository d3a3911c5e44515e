"""DSM TTS generation against Kyutai's PyTorch `TTSModel.generate` (moshi 0.2.13), greedy, on tiny random models.

Fixtures: tests/fixtures/make_tts_fixtures.py (run in a separate venv with Kyutai's package). Every step's text
token (sampled and fed back), every frame, the end step, the transcript and the logits are compared.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import sentencepiece

from moshi_mlx.model.config import LmConfig
from moshi_mlx.model.weights import load_lm
from moshi_mlx.tts.conditions import make_attributes, prepare
from moshi_mlx.tts.generate import TtsGen
from moshi_mlx.tts.script import Entry, TokenIds, script_to_entries
from moshi_mlx.tts.state_machine import StateMachine

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = ["distilled", "cfg_batch", "prefix"]  # prefix: a voice given as audio, tts-0.75b-en-public's way


def _load(name: str):
    record = json.loads((FIXTURES / f"tts_{name}.json").read_text())
    trace = mx.load(str(FIXTURES / f"tts_{name}_trace.safetensors"))
    cfg = LmConfig.from_dict(record["config"])
    lm = load_lm(FIXTURES / f"tts_{name}.safetensors", cfg, dtype=mx.float32)
    return record, trace, lm


def _tokenizer():
    return sentencepiece.SentencePieceProcessor(model_file=str(FIXTURES / "tts_tokenizer.model"))


def _generate(name: str, compile: bool = True):
    record, trace, lm = _load(name)
    cfg, run = lm.config, record["run"]
    ids = TokenIds(cfg.text_card + 1)
    machine = StateMachine(ids, second_stream_ahead=cfg.tts_config.get("second_stream_ahead", 0))
    speakers = "voice" in trace
    entries = script_to_entries(_tokenizer().encode, ids, record["script"], speakers, padding_between=1)
    attributes = [make_attributes(lm, [trace["voice"]] if speakers else [], run["cfg_condition"])]
    if run["cfg_coef"] != 1.0:
        attributes.append(attributes[0].dropped())
    gen = TtsGen(lm, machine, record["delay_steps"], temp=0.0, cfg_coef=run["cfg_coef"],
                 cfg_is_no_text=run["cfg_is_no_text"], padding_bonus=run["padding_bonus"], compile=compile)
    gen.keep_logits = True
    prefix = np.array(trace["prefix"]) if "prefix" in trace else None
    result = gen.generate(entries, prepare(lm, attributes), final_padding=4, prefix=prefix)
    return record, trace, entries, result, gen


@pytest.mark.parametrize("name", VARIANTS)
def test_entries_match_kyutai(name):
    record = json.loads((FIXTURES / f"tts_{name}.json").read_text())
    ids = TokenIds(record["config"]["text_card"] + 1)
    speakers = "speaker_wavs" in record["config"]["conditioners"]
    entries = script_to_entries(_tokenizer().encode, ids, record["script"], speakers, padding_between=1)
    expected = [Entry(tuple(e["tokens"]), e["text"], e["padding"]) for e in record["entries"]]
    assert entries == expected


@pytest.mark.parametrize("name, compile", [(v, True) for v in VARIANTS] + [("distilled", False)])
def test_generation_matches_kyutai(name, compile):
    record, trace, entries, result, gen = _generate(name, compile)
    assert [list(t) for t in result.logged_text_tokens] == record["logged_text_tokens"]
    assert len(result.logged_text_tokens) == record["steps"]
    assert result.end_step == record["end_step"]
    assert [list(w) for w in result.transcript] == record["transcript"]
    assert result.consumption_times == record["consumption_times"]
    np.testing.assert_array_equal(np.stack(result.frames), np.array(trace["frames"]))

    text_logits = np.stack([t for t, _ in gen.logits])
    np.testing.assert_allclose(text_logits, np.array(trace["text_logits"]), atol=1e-4, rtol=0)
    audio_logits = np.stack([a for _, a in gen.logits if a is not None])
    np.testing.assert_allclose(audio_logits, np.array(trace["audio_logits"]), atol=1e-4, rtol=0)


def test_one_host_sync_per_step():
    """`submit` builds the whole step lazily; only `collect` waits."""
    record, trace, lm = _load("distilled")
    cfg = lm.config
    ids = TokenIds(cfg.text_card + 1)
    machine = StateMachine(ids, second_stream_ahead=2)
    entries = script_to_entries(_tokenizer().encode, ids, record["script"], padding_between=1)
    gen = TtsGen(lm, machine, record["delay_steps"], temp=0.0)
    gen.start(entries, prepare(lm, [make_attributes(lm, [trace["voice"]], 2.0)]))
    original = np.array
    waits = []

    def counting(value, *args, **kwargs):
        if isinstance(value, mx.array):
            waits.append(1)
        return original(value, *args, **kwargs)

    np.array = counting
    try:
        for _ in range(record["delay_steps"] + 3):
            gen.step()
    finally:
        np.array = original
    assert len(waits) == record["delay_steps"] + 3


def test_say_audio_matches_kyutai(mimi_weights):
    """End to end, greedy, float32: `say`'s frame-by-frame decoding gives Kyutai's `run_tts` audio, and the words
    fall at the same times."""
    import hashlib

    from moshi_mlx.codec import load_codec, rustymimi_installed
    from moshi_mlx.tts.speak import synthesize

    record, trace, lm = _load("distilled")
    assert hashlib.sha256(Path(mimi_weights).read_bytes()).hexdigest() == record["mimi_sha256"], \
        "the random Mimi changed: rerun tests/fixtures/make_tts_fixtures.py"
    cfg = lm.config
    ids = TokenIds(cfg.text_card + 1)
    entries = script_to_entries(_tokenizer().encode, ids, record["script"], padding_between=1)
    gen = TtsGen(lm, StateMachine(ids, second_stream_ahead=2), record["delay_steps"], temp=0.0)
    codec = load_codec(mimi_weights, "rust" if rustymimi_installed() else "mlx", num_codebooks=cfg.n_q)
    try:
        spoken = list(synthesize(gen, codec, entries, prepare(lm, [make_attributes(lm, [trace["voice"]], 2.0)])))
    finally:
        codec.close()
    ours = np.concatenate([f.pcm for f in spoken])
    theirs = np.array(trace["pcm"]).astype(np.float32)
    assert ours.shape == theirs.shape
    assert np.corrcoef(ours, theirs)[0, 1] >= 0.999
    words = [(w, 80 * step) for w, step in spoken[-1].words]
    assert words == [(w, 80 * step) for w, step in record["transcript"]]
