"""A PersonaPlex voice from audio (normalised, encoded frame by frame) or from a `.pt` file, checked for the model."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from moshi_mlx import MoshiError
from moshi_mlx.devtools.random_lm import tiny_persona_config
from moshi_mlx.persona.loudness import integrated_loudness
from moshi_mlx.persona.voice import encode_voice, read_voice_audio, read_voice_embedding

FIXTURES = Path(__file__).parent / "fixtures" / "voice"


def tone(path, seconds, rate=24000, channels=1, level=0.1):
    t = np.arange(int(seconds * rate)) / rate
    x = level * np.sin(2 * np.pi * 300 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    sf.write(path, np.repeat(x[:, None], channels, axis=1) if channels > 1 else x, rate)
    return path


def test_voice_from_any_audio_file_at_minus_24_lufs(tmp_path):
    voice = read_voice_audio(tone(tmp_path / "voice.flac", 2.0, rate=48000, channels=2, level=0.5))
    assert voice.samples.dtype == np.float32 and abs(len(voice.samples) - 48000) <= 1
    assert abs(integrated_loudness(voice.samples, 24000) - -24.0) < 0.01
    assert voice.frames == 25 and voice.source == "voice.flac"


@pytest.mark.parametrize(("seconds", "level", "message"), [
    (0.2, 0.1, "voice prompt voice.wav lasts 0.20 s: its loudness needs at least 0.4 s"),
    (1.0, 0.0, "voice prompt voice.wav is silent"),
])
def test_voice_too_short_or_silent(tmp_path, seconds, level, message):
    with pytest.raises(MoshiError, match=message):
        read_voice_audio(tone(tmp_path / "voice.wav", seconds, level=level))


def test_unreadable_voice(tmp_path):
    bad = tmp_path / "voice.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(MoshiError) as caught:
        read_voice_audio(bad)
    assert "\n" not in str(caught.value) and "voice.wav" in str(caught.value)


class RecordingCodec:
    num_codebooks, frame_size = 8, 1920

    def __init__(self):
        self.calls = []

    def reset(self):
        self.calls.append("reset")

    def encode(self, frame):
        self.calls.append(frame.copy())
        return np.full(8, len(self.calls), np.uint32)


def test_voice_encoded_from_a_fresh_stream_in_whole_frames(tmp_path):
    voice = read_voice_audio(tone(tmp_path / "voice.wav", 1.0))  # 12.5 frames
    codec = RecordingCodec()
    codes = encode_voice(codec, voice)
    assert codes.shape == (8, 13) and codes.dtype == np.int64
    assert codec.calls[0] == "reset" and codec.calls[-1] == "reset" and len(codec.calls) == 15
    frames = codec.calls[1:-1]
    np.testing.assert_array_equal(np.concatenate(frames)[: len(voice.samples)], voice.samples)
    assert not frames[-1][960:].any()  # the last frame zero-padded


def test_pt_voice_for_this_model():
    config = tiny_persona_config()
    voice = read_voice_embedding(FIXTURES / "voice_tiny.pt", "voice_tiny.pt", config)
    expected = np.load(FIXTURES / "voice_tiny_expected.npz")
    np.testing.assert_array_equal(voice.embeddings, expected["embeddings"])
    np.testing.assert_array_equal(voice.cache, expected["cache"])
    assert voice.frames == 5


@pytest.mark.parametrize(("change", "message"), [
    (dict(dim=64), "voice NATF2: the voice's embeddings have shape .* the voice was made for other weights"),
    (dict(card=1024), r"voice NATF2: the voice's token cache \(audio\) must lie in \[0, 1025\)"),
    (dict(context=4), "voice NATF2: the persona takes 18 steps"),
])
def test_pt_voice_for_other_weights(change, message):
    config = replace(tiny_persona_config(), **change)
    with pytest.raises(MoshiError, match=message):
        read_voice_embedding((FIXTURES / "voice_tiny.pt").read_bytes(), "NATF2", config)


def test_pt_file_that_is_not_a_voice():
    with pytest.raises(MoshiError, match="tensors.pt is not a PersonaPlex voice: it holds float32, float64"):
        read_voice_embedding(FIXTURES / "tensors.pt", "tensors.pt", tiny_persona_config())
