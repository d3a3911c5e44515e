"""The speech-to-text generator, config keys, hub names and tiny model (parity with PyTorch: test_stt_parity.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moshi_mlx import LmConfig, MoshiError, load_codec
from moshi_mlx.devtools.opcount import OpCounter
from moshi_mlx.devtools.random_lm import random_lm, tiny_config
from moshi_mlx.devtools.tiny_stt import tiny_stt_config, write_tiny_stt
from moshi_mlx.hub import stt_repo
from moshi_mlx.model.stt import SttGen, check_model_kind, end_of_turn, is_stt, make_generator, stt_delays
from moshi_mlx.model.stt_presets import STT_PRESETS

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def lm():
    return random_lm(tiny_stt_config(), seed=0, scale=3.0)


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2048, size=(n, 32))


def test_kyutai_stt_config_keys():
    raw = STT_PRESETS["stt-1b"]
    cfg = LmConfig.from_dict(raw)
    assert is_stt(cfg) and cfg.model_type == "stt" and stt_delays(cfg) == (0.5, 0.0)
    assert (cfg.extra_heads_num_heads, cfg.extra_heads_dim) == (4, 6)
    again = cfg.to_dict()
    assert again["stt_config"] == raw["stt_config"] and again["model_type"] == "stt"
    assert LmConfig.from_dict(again) == cfg
    # Moshi's config writes exactly the keys it wrote before.
    moshi = LmConfig.moshi_7b().to_dict()
    assert not {"model_type", "stt_config", "extra_heads_num_heads", "extra_heads_dim"} & set(moshi)
    assert stt_delays(LmConfig.moshi_7b()) == (0.0, 0.0) and not is_stt(LmConfig.moshi_7b())


def test_one_host_sync_per_frame_and_no_depth_work(lm):
    gen = SttGen(lm, seed=0)
    assert lm.depformer.slices == [] and gen.num_user == 32
    frames = codes(8)
    with OpCounter() as counter:
        outs = [gen.step(f) for f in frames]
    assert counter.syncs == len(frames)  # the repeated first frame costs no sync of its own
    assert all(o.audio_codes is None and o.extra_heads.shape == (4, 6) for o in outs)
    np.testing.assert_allclose([o.extra_heads.sum(-1) for o in outs], 1.0, rtol=1e-5)


def test_operations_per_frame_stay_bounded(lm):
    """The compiled STT step: the text head and the extra heads, nothing of a depth transformer."""
    gen, frames = SttGen(lm, seed=0), codes(6, seed=3)
    for f in frames[:3]:  # compile
        gen.step(f)
    with OpCounter() as counter:
        for f in frames[3:]:
            gen.step(f)
    # Measured 191 per frame on this tiny model (MLX 0.32, CPU), plus ~6 %.
    assert counter.syncs == 3 and counter.ops / 3 <= 205, counter.by_name.most_common(8)


def test_repeated_first_frame_is_a_leading_step(lm):
    """run_inference's first-frame repeat = one step before the first frame, whatever its codes (step 0 sees only
    start tokens), whose output is dropped."""
    frames = codes(12, seed=1)
    repeated = [o.text_token for o in map(SttGen(lm).step, frames)]
    plain = SttGen(lm, repeat_first_frame=False)
    leading = [plain.step(f).text_token for f in [codes(1, seed=9)[0], *frames]]
    assert repeated == leading[1:]
    forced = SttGen(lm)
    assert [forced.step_forced(f).text_token for f in frames] == repeated
    assert len(set(repeated)) > 2


def test_reset_starts_afresh(lm):
    gen, frames = SttGen(lm), codes(6, seed=2)
    first = [gen.step(f).text_token for f in frames]
    gen.reset()
    assert [gen.step(f).text_token for f in frames] == first and gen.step_index == 6


def test_model_without_extra_heads(lm):
    plain = random_lm(tiny_stt_config(extra_heads_num_heads=0), seed=0)
    out = SttGen(plain).step(codes(1)[0])
    assert out.extra_heads is None and out.audio_codes is None
    with pytest.raises(ValueError, match="32 user codes"):
        SttGen(lm).step(np.zeros(8, np.int64))


def test_make_generator_picks_by_config(lm):
    assert isinstance(make_generator(lm, temp_text=0), SttGen)
    moshi = make_generator(random_lm(tiny_config(), seed=0))
    assert not isinstance(moshi, SttGen) and moshi.num_user == 8


def test_end_of_turn_is_head_2_class_0():
    heads = np.full((4, 6), 1 / 6, np.float32)
    assert not end_of_turn(heads) and not end_of_turn(None)
    heads[2, 0] = 0.6
    assert end_of_turn(heads) and not end_of_turn(heads, threshold=0.7)


def test_model_kind_refusals_are_one_line():
    with pytest.raises(MoshiError, match="conversation model") as e:
        check_model_kind(LmConfig.moshi_7b(), stt=True, source="--config x.json")
    assert "\n" not in str(e.value) and "--config x.json" in str(e.value)
    with pytest.raises(MoshiError, match="speech-to-text model"):
        check_model_kind(tiny_stt_config(), stt=False)
    check_model_kind(tiny_stt_config(), stt=True)
    check_model_kind(LmConfig.moshi_7b(), stt=False)


def test_hub_names():
    assert stt_repo("stt-1b") == "kyutai/stt-1b-en_fr-mlx"
    assert stt_repo("stt-2.6b", "bf16") == "kyutai/stt-2.6b-en-mlx"
    assert stt_repo("stt-1b", vad=True) == "kyutai/stt-1b-en_fr-candle"
    for call, words in [(lambda: stt_repo("stt-3b"), "unknown speech-to-text model"),
                        (lambda: stt_repo("stt-1b", 4), "bf16 only"),
                        (lambda: stt_repo("stt-2.6b", vad=True), "no voice-activity heads")]:
        with pytest.raises(MoshiError, match=words):
            call()


def test_tiny_stt_model_runs_through_the_pipeline(tmp_path, mimi_weights):
    tiny = write_tiny_stt(tmp_path, mimi_weights)
    pipeline = tiny.load_pipeline(temp_text=0, mimi="rust")
    assert isinstance(pipeline.gen, SttGen) and pipeline.codec.num_codebooks == 32
    cfg = LmConfig.from_json(tiny.config)
    assert stt_delays(cfg) == (0.48, 0.16) and pipeline.tokenizer.vocab_size() == cfg.text_card
    audio = np.random.default_rng(0).standard_normal(5 * 1920).astype(np.float32) * 0.1
    for i in range(5):
        event, pcm = pipeline.step(audio[i * 1920 : (i + 1) * 1920])
        assert pcm is None and event.index == i and event.extra_heads.shape == (4, 6)
        assert event.decode_ms == 0.0
    assert "--moshi-weights" in tiny.cli_args()


def test_rustymimi_renews_at_32_codebooks(mimi_weights):
    """Each renewed tokenizer is opened at the codec's 32 codebooks too."""
    codec = load_codec(mimi_weights, backend="rust", num_codebooks=32, max_seq_len=80, renew_every=10, prime_frames=8)
    audio = np.random.default_rng(1).standard_normal(36 * 1920).astype(np.float32) * 0.1
    try:
        for i in range(36):
            assert codec.encode(audio[i * 1920 : (i + 1) * 1920]).shape == (32,)
        assert codec.renewals >= 1
    finally:
        codec.close()
