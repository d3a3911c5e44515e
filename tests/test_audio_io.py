"""Audio plumbing: device lookup on a real (virtual) sound server, resampling, re-chunking, WAV reading."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import soxr

from moshi_mlx import MoshiError
from moshi_mlx.stream.audio_io import Chunker, StreamResampler, downmix, find_device, read_mono_24k, stream_settings


@pytest.mark.audio
def test_find_device_by_number_name_or_default(virtual_audio):
    # ALSA's pulse plugin shows the server as devices "pulse" (0) and "default" (1).
    assert find_device(None, "input") is None
    assert find_device("pulse", "input") == 0
    assert find_device("DEFAUL", "output") == 1  # part of the name, any case
    assert find_device("1", "output") == find_device(1, "output") == 1
    with pytest.raises(MoshiError, match="no audio input device number 7"):
        find_device("7", "input")
    with pytest.raises(MoshiError, match=r"no audio output device matches 'usb mic' \(`moshi-mlx devices`"):
        find_device("usb mic", "output")
    with pytest.raises(MoshiError, match="matches several input devices"):
        find_device("u", "input")


@pytest.mark.audio
def test_stream_settings_prefer_mono_24k(virtual_audio):
    settings = stream_settings(None, "input")
    assert (settings.samplerate, settings.channels, settings.blocksize) == (24000, 1, 480)
    assert not settings.resampled
    forced = stream_settings(0, "output", samplerate=44100)
    assert (forced.samplerate, forced.blocksize, forced.resampled) == (44100, 882, True)  # still 20 ms blocks


def test_downmix_averages_channels():
    block = np.array([[0.2, 0.4, 0.0], [1.0, -1.0, 0.3]], np.float32)
    np.testing.assert_allclose(downmix(block), [0.2, 0.1], atol=1e-7)
    assert downmix(np.ones(5, np.float32)).shape == (5,)


def test_chunker_hands_out_fixed_blocks_in_order():
    chunker = Chunker(4)
    x = np.arange(11, dtype=np.float32)
    blocks = chunker(x[:3]) + chunker(x[3:9]) + chunker(x[9:])
    assert [b.tolist() for b in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in chunker(np.zeros(1, np.float32))] == [[8, 9, 10, 0]]


def test_stream_resampler_matches_one_shot_resampling():
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
    resample = StreamResampler(44100, 24000)
    streamed = np.concatenate([resample(x[i : i + 3528]) for i in range(0, len(x), 3528)])
    whole = soxr.resample(x, 44100, 24000)
    # Streaming output lags by the filter's delay and stops short by as much; what comes out is the same signal.
    delay = len(whole) - len(streamed)
    assert 0 <= delay < 400
    np.testing.assert_allclose(streamed[2000:-2000], whole[2000 : len(streamed) - 2000], atol=1e-3)
    same = StreamResampler(24000, 24000)
    assert same(x[:10]) is not None and np.array_equal(same(x[:10]), x[:10])


def test_read_mono_24k_any_rate_and_channels(tmp_path):
    t = np.arange(16000) / 16000
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.zeros_like(t)], axis=1).astype(np.float32) * 0.5
    soundfile.write(str(tmp_path / "in.flac"), stereo, 16000)
    mono = read_mono_24k(tmp_path / "in.flac")
    assert mono.dtype == np.float32 and abs(len(mono) - 24000) <= 1
    assert abs(np.sqrt(np.mean(mono[1000:-1000] ** 2)) - 0.25 / np.sqrt(2)) < 0.01  # left averaged with silence


def test_unreadable_audio_is_a_one_line_error(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(MoshiError, match="cannot read audio file") as e:
        read_mono_24k(tmp_path / "bad.wav")
    assert "\n" not in str(e.value)
    with pytest.raises(MoshiError, match="audio file not found"):
        read_mono_24k(tmp_path / "missing.wav")
