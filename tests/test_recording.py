"""Recording and transcript files: any name, readable back, one-line errors."""

import wave

import numpy as np
import pytest
import soundfile

from moshi_mlx.errors import MoshiError
from moshi_mlx.stream.recording import TranscriptWriter, WavRecorder


@pytest.mark.parametrize("name, container", [("conversation", "WAV"), ("talk.rec", "WAV"), ("talk.wav", "WAV"),
                                             ("talk.FLAC", "FLAC")])
def test_recording_any_name(tmp_path, name, container):
    recorder = WavRecorder(tmp_path / name, stereo=True)
    user = np.linspace(-0.5, 0.5, 1920, dtype=np.float32)
    recorder.write(user, None)
    recorder.write(user, -user)
    recorder.close()
    data, rate = soundfile.read(tmp_path / name, dtype="float32")
    assert soundfile.info(tmp_path / name).format == container
    assert rate == 24000 and data.shape == (3840, 2)
    np.testing.assert_allclose(data[:1920, 1], 0.0)
    np.testing.assert_allclose(data[1920:, 1], -user, atol=1 / 16384)
    np.testing.assert_allclose(data[:, 0], np.tile(user, 2), atol=1 / 16384)


def test_unwritable_paths_are_one_line(tmp_path):
    for make in (lambda p: WavRecorder(p), TranscriptWriter):
        with pytest.raises(MoshiError) as e:
            make(tmp_path / "missing-dir" / "x")
        assert "\n" not in str(e.value) and "missing-dir" in str(e.value)


def test_transcript_flushes_as_it_goes(tmp_path):
    transcript = TranscriptWriter(tmp_path / "t.txt")
    for piece in (" Hello", ",", " world"):
        transcript.write(piece)
    assert (tmp_path / "t.txt").read_text() == "Hello, world"
    transcript.close()
    assert (tmp_path / "t.txt").read_text() == "Hello, world\n"


def test_recording_is_a_valid_wav_before_it_is_closed(tmp_path):
    """A crash or `kill -9` never lets close() run: the header must already give the true length."""
    recorder = WavRecorder(tmp_path / "talk.wav", stereo=True)
    user = np.full(1920, 0.25, np.float32)
    for _ in range(3):
        recorder.write(user, -user)
    with wave.open(str(tmp_path / "talk.wav")) as w:  # the standard library's strict reader
        assert (w.getnframes(), w.getnchannels(), w.getframerate()) == (3 * 1920, 2, 24000)
        samples = np.frombuffer(w.readframes(3 * 1920), np.int16).reshape(-1, 2)
    np.testing.assert_allclose(samples / 32768, np.tile([0.25, -0.25], (3 * 1920, 1)), atol=1 / 16384)
    recorder.close()
