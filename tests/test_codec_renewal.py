"""rustymimi renewed before its position limit, on full-size random Mimi weights: the codes and the audio carry on
as if the stream had never been replaced, and a conversation runs past the real 4096-frame limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from moshi_mlx.codec import FRAME_SIZE, load_codec
from moshi_mlx.devtools.virtual_audio import speech_wav
from moshi_mlx.model.config import LmConfig
from moshi_mlx.stream.filemode import run_frames
from moshi_mlx.stream.pipeline import Pipeline

PRIME = 250  # the default


def speech(tmp_path, frames: int) -> np.ndarray:
    import soundfile

    path = speech_wav(tmp_path / "speech.wav", "Hello Moshi. Can you hear me? Tell me about the weather today, "
                      "and whether it will rain tomorrow, and what I should wear for a long walk by the river.")
    voice, _ = soundfile.read(str(path), dtype="float32")
    audio = np.tile(voice, frames * FRAME_SIZE // len(voice) + 1)[: frames * FRAME_SIZE]
    return audio + 0.003 * np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32)


def encode_all(codec, audio: np.ndarray) -> np.ndarray:
    return np.stack([codec.encode(audio[t * FRAME_SIZE : (t + 1) * FRAME_SIZE])
                     for t in range(len(audio) // FRAME_SIZE)])


def decode_all(codec, codes: np.ndarray) -> np.ndarray:
    return np.concatenate([codec.decode(c) for c in codes])


def test_renewed_encoder_gives_the_codes_of_an_unrenewed_one(mimi_weights, tmp_path):
    # The encoder alone (the slow test below takes both directions), through two renewals as there: the second
    # successor is primed on a history cut to its last 250 frames (the first one's has them all).
    frames = 560
    audio = speech(tmp_path, frames)
    plain = load_codec(mimi_weights)
    renewing = load_codec(mimi_weights, max_seq_len=1040, prime_frames=PRIME)
    assert renewing.limit == 520 and renewing.renew_every == 135
    with ThreadPoolExecutor(2) as pool:  # rustymimi releases the GIL: both codecs at once
        codes_ref, codes = pool.map(encode_all, (plain, renewing), (audio, audio))
    renewing.close()
    assert renewing._encoder.renewals >= 2 and renewing.notices() == []
    agreement = np.mean(codes[135:] == codes_ref[135:])
    assert agreement >= 0.995, agreement


@pytest.mark.slow  # about 3 minutes on a 2-core VM: both directions of full-size Mimi
def test_renewed_mimi_matches_an_unrenewed_one(mimi_weights, tmp_path):
    # A limit of 520 frames: each stream serves 135 to 269 frames (then it must have been replaced, or it fails),
    # so 560 frames cross at least two renewals in each direction, however fast the successors catch up.
    frames = 560
    audio = speech(tmp_path, frames)
    plain = load_codec(mimi_weights)  # 4096 frames of room: never renewed here
    renewing = load_codec(mimi_weights, max_seq_len=1040, prime_frames=PRIME)
    assert renewing.limit == 520 and renewing.renew_every == 135
    with ThreadPoolExecutor(2) as pool:  # rustymimi releases the GIL: both codecs at once
        codes_ref, codes = pool.map(encode_all, (plain, renewing), (audio, audio))
        audio_ref, decoded = pool.map(decode_all, (plain, renewing), (codes_ref, codes_ref))
    renewing.close()
    assert renewing._encoder.renewals >= 2 and renewing._decoder.renewals >= 2
    assert renewing.notices() == []  # no stream failed: every renewal was in time
    # From the first takeover on (the first stream served at least 135 frames).
    agreement = np.mean(codes[135:] == codes_ref[135:])
    assert agreement >= 0.995, agreement
    correlation = np.corrcoef(decoded[135 * FRAME_SIZE :], audio_ref[135 * FRAME_SIZE :])[0, 1]
    assert correlation >= 0.999, correlation
    print(f"renewals {renewing._encoder.renewals} + {renewing._decoder.renewals}, codes {agreement:.2%} equal, "
          f"decoded audio correlation {correlation:.6f}")  # shown with `pytest -s`


def test_file_run_through_renewals_keeps_every_frame_in_place(tiny_model, tmp_path):
    frames = 220  # a renewal every 80 frames at most: 40 served, then at most 40 behind the successor
    audio = speech(tmp_path, frames)
    pipeline = Pipeline.load(tiny_model.moshi_weights, tiny_model.mimi_weights, tiny_model.tokenizer,
                             LmConfig.from_json(tiny_model.config), seed=1,
                             codec_options=dict(max_seq_len=400, renew_every=40, prime_frames=40))
    renewing = set()  # the directions a successor was seen priming for, as the soak reports them
    result = run_frames(pipeline, audio, on_event=lambda e: renewing.update(pipeline.codec.renewing))
    assert renewing == {"encoder", "decoder"}
    enc, dec = pipeline.codec._encoder, pipeline.codec._decoder
    assert enc.renewals >= 2 and dec.renewals >= 2, (enc.renewals, dec.renewals)
    pipeline.close()
    assert [e.index for e in result.events] == list(range(frames))
    assert all(e.notice is None for e in result.events)
    levels = np.sqrt(np.mean(result.moshi.reshape(frames, FRAME_SIZE) ** 2, axis=1))
    assert levels[0] == 0 and np.all(levels[1:] > 1e-3)  # Moshi speaks from step 1, in every frame after


@pytest.mark.slow
def test_a_conversation_runs_past_rustymimis_4096_frame_limit(tiny_model, tmp_path):
    """Default settings, 4200 frames (5:36): the encoder and the decoder each cross rustymimi's real limit."""
    frames = 4200
    audio = speech(tmp_path, frames)
    pipeline = Pipeline.load(tiny_model.moshi_weights, tiny_model.mimi_weights, tiny_model.tokenizer,
                             LmConfig.from_json(tiny_model.config), seed=2)
    assert pipeline.codec.limit == 4096
    result = run_frames(pipeline, audio, keep=False)
    assert result.frames == frames
    # Each direction was renewed (one 1500-frame period and its catch-up fit in 4200 frames at least once) and
    # no stream failed, so frames past 4096 were served by renewed streams.
    assert pipeline.codec._encoder.renewals >= 1 and pipeline.codec._decoder.renewals >= 1
    assert pipeline.codec.notices() == []
    pipeline.close()
