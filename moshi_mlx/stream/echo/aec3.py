"""WebRTC's AEC3 through livekit: reference and microphone audio in 10 ms sub-frames, the cleaned microphone out."""

from __future__ import annotations

from typing import Any

import numpy as np

SUBFRAME_MS = 10  # AEC3 takes 10 ms frames only


class Aec3:
    """One AEC3 instance (no noise suppression, no gain control), mono float32 in and out.

    `apm`: an `AudioProcessingModule` to use instead of a new one (`reset` makes a new one all the same).
    """

    def __init__(self, sample_rate: int, high_pass: bool, apm: Any = None):
        self.sample_rate, self.high_pass = sample_rate, high_pass
        self.subframe = sample_rate * SUBFRAME_MS // 1000
        self._apm = apm if apm is not None else _new_apm(high_pass)
        self._rtc = _rtc()

    def reset(self) -> None:
        """Fresh state: the echo path is learnt again."""
        self._apm = _new_apm(self.high_pass)

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Whole sub-frames of microphone and reference -> the microphone with the echo removed.

        Reference and microphone sub-frames are interleaved, the reference spread evenly before the microphone.
        """
        sub, rate, rtc = self.subframe, self.sample_rate, self._rtc
        mic16 = _to_int16(mic)
        ref16 = _to_int16(ref)
        n_mic, n_ref = len(mic16) // sub, len(ref16) // sub
        out = np.empty(len(mic16), np.int16)
        done = 0
        for i in range(n_mic):
            upto = -(-(i + 1) * n_ref // n_mic)
            for j in range(done, upto):
                frame = rtc.AudioFrame(bytearray(ref16[j * sub : (j + 1) * sub].tobytes()), rate, 1, sub)
                self._apm.process_reverse_stream(frame)
            done = upto
            frame = rtc.AudioFrame(bytearray(mic16[i * sub : (i + 1) * sub].tobytes()), rate, 1, sub)
            self._apm.process_stream(frame)
            out[i * sub : (i + 1) * sub] = np.frombuffer(frame.data, np.int16)
        return out.astype(np.float32) / 32768.0


def _to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def _rtc() -> Any:
    from livekit import rtc

    return rtc


def _new_apm(high_pass: bool) -> Any:
    from livekit.rtc.apm import AudioProcessingModule

    apm = AudioProcessingModule(echo_cancellation=True, high_pass_filter=high_pass,
                                noise_suppression=False, auto_gain_control=False)
    apm.set_stream_delay_ms(0)  # AEC3 finds the delay itself; the hint only has to be set
    return apm
