"""rustymimi renewed before its position limit, on full-size random Mimi weights: the codes and the audio carry on
as if the stream had never been replaced, and a conversation runs past the real 4096-frame limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from audio_server import speech_wav

from moshi_mlx.codec import FRAME_SIZE, load_codec
from moshi_mlx.config import LmConfig
from moshi_mlx.filemode import run_frames
from moshi_mlx.pipeline import Pipeline

PRIME = 130


def speech(tmp_path, frames: int) -> np.ndarray:
    import soundfile

    path = speech_wav(tmp_path / "speech.wav", "Hello Moshi. Can you hear me? Tell me about the weather today, "
                      "and whether it will rain tomorrow, and what I should wear for a long walk by the river.")
    voice, _ = soundfile.read(str(path), dtype="float32")
    audio = np.tile(voice, frames * FRAME_SIZE // len(voice) + 1)[: frames * FRAME_SIZE]
    return audio + 0.003 * np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32)


def stream(codec, audio: np.ndarray, codes_in: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode every frame of `audio`, and decode `codes_in` (or the codes just made) frame by frame."""
    codes, decoded = [], []
    for t in range(len(audio) // FRAME_SIZE):
        codes.append(codec.encode(audio[t * FRAME_SIZE : (t + 1) * FRAME_SIZE]))
        decoded.append(codec.decode(codes[-1] if codes_in is None else codes_in[t]))
    return np.stack(codes), np.concatenate(decoded)


def test_renewed_mimi_matches_an_unrenewed_one(mimi_weights, tmp_path):
    frames = 420
    audio = speech(tmp_path, frames)
    plain = load_codec(mimi_weights)  # 4096 frames of room: never renewed here
    # A limit of 340 frames: each direction is renewed every 105 frames served, and must be, or it fails.
    renewing = load_codec(mimi_weights, max_seq_len=680, renew_every=150, prime_frames=PRIME)
    assert renewing.limit == 340 and renewing.renew_every == 105
    with ThreadPoolExecutor(2) as pool:
        reference = pool.submit(stream, plain, audio)
        codes_ref, audio_ref = reference.result()
        codes, decoded = pool.submit(stream, renewing, audio, codes_ref).result()
    renewing.close()
    assert renewing._encoder.renewals >= 2 and renewing._decoder.renewals >= 2
    assert renewing.notices() == []  # no stream failed: every renewal was in time
    agreement = np.mean(codes[PRIME:] == codes_ref[PRIME:])
    assert agreement >= 0.995, agreement
    correlation = np.corrcoef(decoded, audio_ref)[0, 1]
    assert correlation >= 0.999, correlation


def test_file_run_through_renewals_keeps_every_frame_in_place(tiny_model, tmp_path):
    frames = 180
    audio = speech(tmp_path, frames)
    pipeline = Pipeline.load(tiny_model.moshi_weights, tiny_model.mimi_weights, tiny_model.tokenizer,
                             LmConfig.from_json(tiny_model.config), seed=1,
                             codec_options=dict(max_seq_len=400, renew_every=60, prime_frames=40))
    result = run_frames(pipeline, audio)
    assert pipeline.codec._encoder.renewals >= 2 and pipeline.codec._decoder.renewals >= 2
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
    assert pipeline.codec._encoder.renewals >= 2 and pipeline.codec._decoder.renewals >= 2
    assert pipeline.codec.notices() == []
    pipeline.close()
