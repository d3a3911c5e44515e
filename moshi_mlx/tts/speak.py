"""Speech as it is generated: each step's frame decoded at once, and a speaker-only output on the app's path.

Audio frame j (80 ms) is the frame the model completes `delay_steps + max_delay + j` steps after the start; the
text step s of a word is spoken in audio frame s (Kyutai's `run_tts` decodes `frames[delay_steps:]`). The first
audio therefore comes after `delay_steps + max_delay + 1` steps (19 for the 1.6B model). A voice prefix's `P`
frames are decoded (Mimi's state needs them) but not played, as Kyutai's `run_tts` cuts them: audio frame `j` is
then the decoded frame `P + j`, and a word fed at step `s` is spoken in audio frame `s - P`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..codec import Codec
from ..errors import MoshiError
from ..stream.audio_io import find_device, sounddevice, stream_settings
from ..stream.devices import LATENCY, AudioDevices
from ..stream.speaker_queue import SpeakerQueue
from .conditions import Conditions
from .generate import TtsGen
from .script import Entry


@dataclass
class SpokenFrame:
    """Audio frame `index` (from 0) with its samples, the words fed so far `(word, audio frame)`, and timings."""

    index: int
    pcm: np.ndarray
    words: list[tuple[str, int]]
    lm_ms: float
    decode_ms: float
    since_start_s: float  # from the start of the generation to this frame's samples


def synthesize(gen: TtsGen, codec: Codec, entries: list[Entry], conditions: Conditions, final_padding: int = 4,
               max_steps: int = 30000, prefix: np.ndarray | None = None) -> Iterator[SpokenFrame]:
    """Generate and decode frame by frame (Kyutai's stop rule; at most `max_steps` steps), after the voice
    `prefix` (audio codes `[n_q, P]`, see `prefix.py`) if given."""
    start = time.perf_counter()
    gen.start(entries, conditions, prefix)
    codec.reset()
    skip = gen.prefix_steps
    first = gen.cfg.max_delay + gen.delay_steps + skip  # the step whose frame is audio frame 0
    for _ in range(max_steps):
        if gen.finished(final_padding):
            return
        t0 = time.perf_counter()
        out = gen.step()
        t1 = time.perf_counter()
        if out.frame is None or out.step < first - skip:
            continue
        pcm = codec.decode(out.frame[1:])
        t2 = time.perf_counter()
        if out.step < first:  # the voice recording itself
            continue
        words = [(word, step - skip) for word, step in gen.state.transcript]
        yield SpokenFrame(out.step - first, pcm, words, (t1 - t0) * 1000, (t2 - t1) * 1000, t2 - start)


class ReadingQueue(SpeakerQueue):
    """The speaker queue for reading aloud: a conversation's queue drops a lasting surplus to keep the latency
    low, but speech generated faster than it plays is the surplus, and all of it must be heard."""

    def _trim(self, ran_dry: bool) -> None:
        pass


class Speaker(AudioDevices):
    """The app's output path (`AudioDevices`' speaker queue and callback) without a microphone."""

    def __init__(self, output_device: str | int | None = None):
        super().__init__(None, output_device, speaker=True)

    def choose(self) -> None:
        sounddevice()
        settings = stream_settings(find_device(self.output_device, "output"), "output", self.samplerate)
        self.stats.output = settings
        self.speaker = ReadingQueue(settings.samplerate, settings.blocksize, self.stats)

    def open(self) -> None:
        sd = sounddevice()
        s = self.stats.output
        try:
            self.output_stream = sd.OutputStream(device=s.device, samplerate=s.samplerate, channels=s.channels,
                                                 blocksize=s.blocksize, dtype="float32", callback=self._on_output,
                                                 latency=LATENCY)
            self.output_stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise MoshiError(f"cannot open the speaker: {e}") from None
        self.stats.output_latency_ms = 1000 * float(self.output_stream.latency)
