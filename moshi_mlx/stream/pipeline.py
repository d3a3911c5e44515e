"""One 80 ms step of a conversation: the user's frame in, Moshi's text and voice out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from ..codec import Codec, load_codec
from ..errors import MoshiError, first_line
from ..model.generate import LmGen, PendingStep, StepOutput
from ..model.stt import make_generator
from ..model.text import text_piece
from ..model.weights import as_config, load_lm
from .latency import FrameTimes

if TYPE_CHECKING:
    from ..persona.session import Persona, PrefillReport


@dataclass(frozen=True)
class FrameEvent:
    """What happened in one frame, for a UI: Moshi's text, stage timings and the state of the audio queues.

    `backlog`, `dropped` and `underruns` are filled in by the live engine (zero in file mode); `dropped` and
    `underruns` count from the start of the conversation. Levels are RMS in [0, 1].
    """

    index: int  # model step, from 0
    text_token: int
    text: str | None  # display text of the token; None for padding
    encode_ms: float
    lm_ms: float
    decode_ms: float  # 0 while Moshi has no audio yet (step 0)
    input_level: float
    output_level: float
    backlog: int = 0  # input frames still waiting after this one
    dropped: int = 0  # input frames dropped by the lag policy so far
    underruns: int = 0  # output blocks played as silence because Moshi's audio was late, so far
    overlapped: bool = False  # the stages ran at the same time as other frames' (the pipelined loop)
    notice: str | None = None  # a line for the user (e.g. the codec failed and was renewed)
    echo_db: float | None = None  # echo removed from the microphone while Moshi speaks (live, canceller on)
    latency_ms: float | None = None  # mouth-to-ear latency, median of the last seconds (live)
    times: FrameTimes | None = None  # when the frame passed each stage (monotonic)
    extra_heads: np.ndarray | None = None  # STT's voice-activity heads, [num_heads, dim] (`StepOutput.extra_heads`)

    @property
    def total_ms(self) -> float:
        return self.encode_ms + self.lm_ms + self.decode_ms

    @property
    def frame_ms(self) -> float:
        """What the frame cost the loop: its slowest stage when stages overlap, else their sum."""
        return max(self.encode_ms, self.lm_ms, self.decode_ms) if self.overlapped else self.total_ms


@dataclass
class Frame:
    """One frame on its way through the stages: the user's samples, then their codes, Moshi's step, its voice."""

    user: np.ndarray
    codes: np.ndarray | None = None
    encode_ms: float = 0.0
    out: StepOutput | None = None
    index: int = -1
    lm_ms: float = 0.0
    pending: PendingStep | None = None  # submitted to the LM, not collected yet
    lm_start: float = 0.0
    times: FrameTimes = field(default_factory=FrameTimes)


def as_frame(user: np.ndarray | Frame) -> Frame:
    """A frame source may give samples, or `Frame`s that already carry their capture times."""
    return user if isinstance(user, Frame) else Frame(user)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float32)))) if x.size else 0.0


def load_text_tokenizer(path: str | Path) -> Any:
    """Kyutai's SentencePiece text tokenizer (`tokenizer_spm_32k_3.model`)."""
    import sentencepiece

    path = Path(path).expanduser()
    if not path.is_file():
        raise MoshiError(f"text tokenizer not found: {path}")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise MoshiError(f"cannot load text tokenizer {path}: {first_line(e)}") from None


class Pipeline:
    """Mimi encode -> `LmGen.step` -> text piece -> Mimi decode, one frame per call, on the caller's thread."""

    def __init__(self, gen: LmGen, codec: Codec, tokenizer: Any = None):
        cfg = gen.cfg
        if gen.num_user != codec.num_codebooks or cfg.card < codec.cardinality:
            # Out-of-range codes would index past Moshi's embedding tables.
            raise MoshiError(
                f"Moshi's config takes {gen.num_user} user streams of {cfg.card} codes but the codec makes "
                f"{codec.num_codebooks} of {codec.cardinality}: check --config"
            )
        self.gen = gen
        self.codec = codec
        self.tokenizer = tokenizer
        self.frame_size = codec.frame_size
        self.sample_rate = codec.sample_rate
        self._lm_free_at = 0.0  # when the LM's last step was collected
        self.persona: Persona | None = None  # fed to the model before each conversation (`new_conversation`)
        self._origin = 0  # the LM step of the conversation's first frame (after the persona's steps)
        self._prefilled: int | None = None  # the LM step right after the persona was fed

    @classmethod
    def load(
        cls,
        moshi_weights: str | Path,
        mimi_weights: str | Path,
        tokenizer: str | Path | None,
        config: Any = None,
        seed: int | None = None,
        temp: float = 0.8,
        temp_text: float = 0.7,
        top_k: int = 250,
        top_k_text: int = 25,
        dtype: mx.Dtype = mx.bfloat16,
        mimi: str = "auto",
        codec_options: dict[str, Any] | None = None,
    ) -> Pipeline:
        """Load Moshi, Mimi and the text tokenizer (e.g. the paths of `moshi_mlx.hub.resolve_files`).

        `mimi`: the codec backend, "mlx", "rust" or "auto" (see `moshi_mlx.codec.choose_backend`); `codec_options`
        go to the backend (rustymimi's renewal settings).
        """
        cfg = as_config(config)
        # Mimi's codebooks as Kyutai's loader sets them: 8 for Moshi, 32 for its speech-to-text models.
        codebooks = max(cfg.dep_q, cfg.n_q - cfg.dep_q) if not cfg.takes_persona else cfg.n_q // 2
        codec = load_codec(mimi_weights, backend=mimi, num_codebooks=codebooks, **(codec_options or {}))
        text_tokenizer = load_text_tokenizer(tokenizer) if tokenizer is not None else None
        lm = load_lm(moshi_weights, cfg, dtype=dtype)
        gen = make_generator(lm, temp=temp, temp_text=temp_text, top_k=top_k, top_k_text=top_k_text, seed=seed)
        return cls(gen, codec, text_tokenizer)

    def text(self, token: int) -> str | None:
        return text_piece(self.tokenizer, token) if self.tokenizer is not None else None

    # The three stages of a frame. `encode` and `decode` may run on worker threads when the codec allows it
    # (`codec.runs_off_thread`); `lm_step` runs MLX, so always on the inference thread.

    def encode(self, frame: Frame) -> Frame:
        frame.times.encode_start = time.monotonic()
        frame.codes = self.codec.encode(frame.user)
        frame.times.encoded = time.monotonic()
        frame.encode_ms = (frame.times.encoded - frame.times.encode_start) * 1000
        return frame

    def lm_step(self, frame: Frame) -> Frame:
        return self.collect(self.submit(frame))

    def submit(self, frame: Frame) -> Frame:
        """Start the LM's step on the frame (`collect` waits for it): the next frame can be submitted first."""
        assert frame.codes is not None, "encode the frame first"
        frame.lm_start = time.monotonic()
        frame.pending = self.gen.submit(frame.codes)
        return frame

    def collect(self, frame: Frame) -> Frame:
        assert frame.pending is not None, "submit the frame first"
        frame.out = self.gen.collect(frame.pending)
        frame.index, frame.pending = frame.pending.index - self._origin, None
        # A frame submitted while the one before computed starts its own time once that one is collected.
        frame.times.lm_done = now = time.monotonic()
        frame.lm_ms = (now - max(frame.lm_start, self._lm_free_at)) * 1000
        self._lm_free_at = now
        return frame

    def decode(self, frame: Frame, overlapped: bool = False) -> tuple[FrameEvent, np.ndarray | None]:
        """Decode Moshi's audio of the frame (None at step 0): the frame's event and Moshi's samples."""
        assert frame.out is not None, "run the LM step first"
        t0 = time.monotonic()
        codes = frame.out.audio_codes
        pcm = self.codec.decode(codes) if codes is not None else None
        frame.times.decoded = time.monotonic()
        decode_ms = (frame.times.decoded - t0) * 1000 if pcm is not None else 0.0
        notices = self.codec.notices()
        event = FrameEvent(
            index=frame.index,
            text_token=frame.out.text_token,
            text=self.text(frame.out.text_token),
            encode_ms=frame.encode_ms,
            lm_ms=frame.lm_ms,
            decode_ms=decode_ms,
            input_level=rms(frame.user),
            output_level=rms(pcm) if pcm is not None else 0.0,
            overlapped=overlapped,
            notice="; ".join(notices) if notices else None,
            times=frame.times,
            extra_heads=frame.out.extra_heads,
        )
        return event, pcm

    def step(self, frame: np.ndarray | Frame) -> tuple[FrameEvent, np.ndarray | None]:
        """The user's frame (float32 `[1920]` at 24 kHz) -> the event and Moshi's frame (None at step 0).

        The three stages one after the other on the caller's thread; `frame_loop.run_frame_loop` overlaps them.
        """
        return self.decode(self.lm_step(self.encode(as_frame(frame))))

    def close(self) -> None:
        """Release the codec (its threads and memory)."""
        self.codec.close()

    def reset(self) -> None:
        """A new conversation: fresh codec state and LM caches (and the seed, when one was given)."""
        self.codec.reset()
        self.gen.reset()
        self._origin, self._prefilled = 0, None

    @property
    def ready(self) -> bool:
        """The next frame starts a conversation as set up: a fresh model, or one just fed its persona."""
        if self.persona is None:
            return self.gen.step_index == 0
        return self._prefilled is not None and self.gen.step_index == self._prefilled

    def new_conversation(self, on_step: Callable[[int, int], None] | None = None) -> PrefillReport | None:
        """`reset()`, then feed the persona when there is one (`on_step(done, total)` as it goes) and say what it
        cost. Call it on the thread that runs the frames (MLX's streams belong to one thread)."""
        self.reset()
        if self.persona is None:
            return None
        from ..persona.session import run_prefill

        report = run_prefill(self.gen, self.codec, self.persona, on_step)
        self._origin = self._prefilled = self.gen.step_index
        return report

    def warmup(self, frames: int = 2) -> None:
        """Run a few frames of silence (first calls compile and allocate), then start afresh.

        Two frames at least when any, and on until the first decode when the model speaks: Moshi's first audio
        comes at step 1, PersonaPlex's at step 2; a speech-to-text model has none.
        """
        if frames <= 0:
            return
        silence = np.zeros(self.frame_size, np.float32)
        speaks, decoded, done = self.gen.cfg.dep_q > 0, False, 0
        while done < max(frames, 2) or (speaks and not decoded and done < frames + 4):
            decoded = self.step(silence)[1] is not None or decoded
            done += 1
        self.reset()
