"""An audio file read a block at a time, mono at 24 kHz, so that an hour of audio takes the memory of a few seconds.

The same files, checks and conversion as `audio_io.read_mono_24k` (soundfile; the channels' mean; soxr), streamed;
a float file is read once more at the start for NaN and infinite samples, so that they are refused before any work.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from ..codec import SAMPLE_RATE
from ..errors import MoshiError, first_line
from .audio_io import audio_path, downmix

BLOCK_S = 5.0  # read this much of the file at a time
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


@dataclass(frozen=True)
class AudioFile:
    """An audio file soundfile can read, checked but not read yet."""

    path: Path
    rate: int
    channels: int
    frames: int  # at the file's rate

    @property
    def seconds(self) -> float:
        return self.frames / self.rate

    def mono_24k(self, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
        """The file as mono float32 at 24 kHz, in blocks of about `block_s` seconds (MoshiError on damaged samples)."""
        resampler = None
        if self.rate != SAMPLE_RATE:
            resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")
        block = max(1, round(block_s * self.rate))
        done = 0
        try:
            with soundfile.SoundFile(str(self.path)) as f:
                while True:
                    data = f.read(block, dtype="float32", always_2d=True)
                    last = len(data) < block
                    if len(data):
                        self._check_finite(data, done)
                    done += len(data)
                    mono = downmix(data)
                    if resampler is not None:
                        mono = resampler.resample_chunk(mono, last=last)
                    if len(mono):
                        yield mono.astype(np.float32, copy=False)
                    if last:
                        return
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise MoshiError(f"cannot read audio file {self.path}: {first_line(e)}") from None

    def check_samples(self, block_s: float = 4 * BLOCK_S) -> None:
        """Read the file once for damaged samples (MoshiError), a block at a time."""
        block, done = max(1, round(block_s * self.rate)), 0
        try:
            with soundfile.SoundFile(str(self.path)) as f:
                while len(data := f.read(block, dtype="float32", always_2d=True)):
                    self._check_finite(data, done)
                    done += len(data)
        except (soundfile.LibsndfileError, RuntimeError) as e:
            raise MoshiError(f"cannot read audio file {self.path}: {first_line(e)}") from None

    def _check_finite(self, data: np.ndarray, offset: int) -> None:
        finite = np.isfinite(data).all(axis=1)
        if not finite.all():
            # Float WAVs can hold NaN or inf: Mimi would turn them into noise or silence without a word.
            bad = int(np.count_nonzero(~finite))
            first = (offset + int(np.argmin(finite))) / self.rate
            raise MoshiError(f"audio file {self.path} is damaged: {bad} samples are NaN or infinite from {first:.2f} s "
                             "on; repair or re-export it")


def open_audio(path: str | Path) -> AudioFile:
    """Check that `path` is an audio file soundfile reads and holds samples; nothing is read yet."""
    path = audio_path(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise MoshiError(f"cannot read audio file {path}: {first_line(e)}") from None
    if info.frames <= 0:
        raise MoshiError(f"audio file {path} is empty")
    audio = AudioFile(path, int(info.samplerate), int(info.channels), int(info.frames))
    if info.subtype in FLOAT_SUBTYPES:  # only float samples can be NaN: found now, before any work starts
        audio.check_samples()
    return audio

