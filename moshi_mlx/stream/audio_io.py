"""Audio in and out: sound devices (sounddevice), WAV files (soundfile), resampling (soxr)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr

from ..codec import FRAME_SIZE, SAMPLE_RATE
from ..errors import MoshiError, first_line


def sounddevice() -> Any:
    """The sounddevice module, or one line saying what is missing (PortAudio is loaded at import)."""
    try:
        import sounddevice as sd
    except OSError as e:
        raise MoshiError(f"no audio system: {e} (install PortAudio, e.g. `brew install portaudio`)") from None
    return sd


def list_devices() -> list[dict]:
    """sounddevice's device dicts, each with its `index`."""
    sd = sounddevice()
    try:
        return [dict(d, index=i) for i, d in enumerate(sd.query_devices())]
    except sd.PortAudioError as e:
        raise MoshiError(f"cannot list audio devices: {e}") from None


def find_device(spec: str | int | None, kind: str) -> int | None:
    """The index of an input or output device given by number or by (part of) its name; None = the default.

    `kind` is "input" or "output". An exact name wins over substrings; several substring matches are an error.
    """
    channels = f"max_{kind}_channels"
    devices = [d for d in list_devices() if d[channels] > 0]
    if not devices:
        raise MoshiError(f"no audio {kind} device found (`moshi-mlx devices` lists what is available)")
    if spec is None or spec == "":
        return None
    text = str(spec).strip()
    if text.isdigit():
        if any(d["index"] == int(text) for d in devices):
            return int(text)
        raise MoshiError(f"no audio {kind} device number {text} (`moshi-mlx devices` lists them)")
    exact = [d for d in devices if d["name"].lower() == text.lower()]
    matches = exact or [d for d in devices if text.lower() in d["name"].lower()]
    if not matches:
        raise MoshiError(f"no audio {kind} device matches {text!r} (`moshi-mlx devices` lists them)")
    if len(matches) > 1:
        names = ", ".join(repr(d["name"]) for d in matches[:4])
        raise MoshiError(f"{text!r} matches several {kind} devices ({names}): give its number")
    return matches[0]["index"]


BLOCKS_PER_FRAME = 4  # device blocks of 20 ms


@dataclass(frozen=True)
class StreamSettings:
    """How a device is opened: blocks of a quarter frame (20 ms) at the device's rate.

    Small blocks keep the devices' own buffering short (PortAudio holds about two blocks each way); the input
    callback gathers them into frames (`AudioDevices`).
    """

    device: int | None
    samplerate: int
    channels: int
    blocksize: int

    @property
    def resampled(self) -> bool:
        return self.samplerate != SAMPLE_RATE


def _supported(sd: Any, kind: str, device: int | None, rate: int, channels: int) -> bool:
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=device, samplerate=rate, channels=channels, dtype="float32")
        return True
    except Exception:  # PortAudioError or ValueError, depending on the host API
        return False


def stream_settings(device: int | None, kind: str, samplerate: int | None = None) -> StreamSettings:
    """Mono at 24 kHz when the device takes it; else its own rate (resampled by us) and channel count.

    `samplerate` forces a device rate (audio is still resampled to and from 24 kHz).
    """
    sd = sounddevice()
    try:
        info = sd.query_devices(device, kind)
    except (ValueError, sd.PortAudioError) as e:
        raise MoshiError(f"no usable audio {kind} device: {e} (`moshi-mlx devices` lists them)") from None
    index = device if device is not None else int(info["index"])
    available = int(info[f"max_{kind}_channels"])
    rates = [samplerate] if samplerate else [SAMPLE_RATE, int(info["default_samplerate"])]
    for rate in rates:
        for channels in dict.fromkeys([1, min(available, 2), available]):
            if channels > 0 and _supported(sd, kind, index, rate, channels):
                return StreamSettings(index, rate, channels, round(FRAME_SIZE * rate / SAMPLE_RATE) // BLOCKS_PER_FRAME)
    raise MoshiError(
        f"audio {kind} device {info['name']!r} accepts neither {SAMPLE_RATE} Hz nor its own "
        f"{info['default_samplerate']:.0f} Hz in float32; choose another with --{kind}-device"
    )


def downmix(block: np.ndarray) -> np.ndarray:
    """`[frames, channels]` or `[frames]` -> mono float32 `[frames]` (the channels' mean)."""
    block = np.asarray(block, dtype=np.float32)
    return block if block.ndim == 1 else block.mean(axis=1, dtype=np.float32)


class StreamResampler:
    """Streaming soxr resampling of mono float32 chunks; the identity when the rates are equal."""

    def __init__(self, in_rate: int, out_rate: int):
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32") if in_rate != out_rate else None

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        return chunk if self._stream is None else self._stream.resample_chunk(chunk)


def resampler_hold_back(in_rate: int, block: int, out_rate: int = SAMPLE_RATE) -> int:
    """The most input samples a streaming resampler keeps back when fed blocks of `block` samples (its filter's
    look-ahead, and soxr's output comes in bursts): a frame of output may need that many samples past its end."""
    if in_rate == out_rate:
        return 0
    resampler, given, most = StreamResampler(in_rate, out_rate), 0, 0.0
    for count in range(1, 2 * in_rate // block + 1):  # two seconds
        given += len(resampler(np.zeros(block, np.float32)))
        most = max(most, count * block * out_rate / in_rate - given)
    return math.ceil(most * in_rate / out_rate)


class Chunker:
    """Collects samples of any length and hands them out in blocks of a fixed size."""

    def __init__(self, size: int):
        self.size = size
        self._pending = np.zeros(0, np.float32)

    def __call__(self, samples: np.ndarray) -> list[np.ndarray]:
        pending = np.concatenate([self._pending, samples]) if self._pending.size else samples
        count = len(pending) // self.size
        blocks = [pending[i * self.size : (i + 1) * self.size] for i in range(count)]
        self._pending = np.array(pending[count * self.size :], dtype=np.float32)
        return blocks


def audio_path(path: str | Path) -> Path:
    """`path` (with ~ expanded) when it is a file; else one line saying what it is instead."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MoshiError(f"{path} is a folder, not an audio file")
    if not path.is_file():
        raise MoshiError(f"audio file not found: {path}")
    return path


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Any file soundfile reads (WAV, FLAC, OGG...) -> float32 `[frames, channels]` and its sample rate."""
    path = audio_path(path)
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise MoshiError(f"cannot read audio file {path}: {first_line(e)}") from None
    if data.shape[0] == 0:
        raise MoshiError(f"audio file {path} is empty")
    finite = np.isfinite(data).all(axis=1)
    if not finite.all():
        # Float WAVs can hold NaN or inf: Mimi would turn them into noise or silence without a word.
        bad = int(np.count_nonzero(~finite))
        raise MoshiError(f"audio file {path} is damaged: {bad} samples are NaN or infinite (the first at "
                         f"{int(np.argmin(finite)) / rate:.2f} s); repair or re-export it")
    return data, int(rate)


def read_mono_24k(path: str | Path) -> np.ndarray:
    """An audio file as Moshi hears it: mono (channels averaged), 24 kHz, float32 `[samples]`."""
    data, rate = read_audio(path)
    mono = downmix(data)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    return mono


def write_wav(path: str | Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """16-bit PCM WAV of float32 `[samples]` or `[samples, channels]` (clipped to [-1, 1])."""
    path = Path(path).expanduser()
    try:
        soundfile.write(str(path), np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16")
    except (soundfile.LibsndfileError, OSError, RuntimeError) as e:
        raise MoshiError(f"cannot write {path}: {first_line(e)}") from None
    return path
