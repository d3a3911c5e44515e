"""Mimi through `rustymimi` (Kyutai's Rust port): one tokenizer for the encoder, one for the decoder, renewed.

rustymimi 0.4.1 precomputes rotary positions for `max_seq_len` steps of its 25 Hz transformers (2 per frame) and
its attention cache grows without bound, so each direction is renewed (`renewal.RenewingStream`) well before the
limit: that bounds both the length of a conversation and the memory it takes.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MoshiError, first_line
from .base import CARDINALITY, FRAME_SIZE, NUM_CODEBOOKS, SAMPLE_RATE, check_codes, check_frame
from .renewal import RenewingStream

MAX_SEQ_LEN = 8192  # rustymimi's default: 4096 frames (5:27.68)
RENEW_EVERY = 1500  # frames served (2 minutes): the attention caches grow 64 kB a frame each until renewed
# 20 s: Mimi's transformers attend to the last 10 s, but a key of their layer l was made from the 10 s before it,
# so a successor converges one window at a time. On speech through random full-size weights, the codes of a
# successor primed on 130 frames agree with the old stream's on 95 % of the next 100 frames, on 250: 99.9 %.
PRIME_FRAMES = 250


def crossfade(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """From `old` to `new` over the frame (linear), so a renewed decoder leaves no seam."""
    ramp = np.linspace(0.0, 1.0, len(new), dtype=np.float32)
    return (1.0 - ramp) * old + ramp * new


class RustyMimi:
    """Kyutai's Mimi checkpoint (PyTorch names) run by `rustymimi.Tokenizer`.

    `Tokenizer.encode_step` / `decode_step` release the GIL but one tokenizer cannot run both at once, so the
    encoder and the decoder each have their own (both load the weights: about 385 MB each); they may then run on
    two worker threads, beside the LM. Shapes are checked here because rustymimi reports wrong ones poorly.
    `max_seq_len` and `renew_every` (frames) are lowered by tests to renew every few hundred frames.
    """

    sample_rate = SAMPLE_RATE
    frame_size = FRAME_SIZE
    cardinality = CARDINALITY
    runs_off_thread = True

    def __init__(
        self,
        path: str | Path,
        num_codebooks: int = NUM_CODEBOOKS,
        max_seq_len: int = MAX_SEQ_LEN,
        renew_every: int = RENEW_EVERY,
        prime_frames: int = PRIME_FRAMES,
    ):
        try:
            import rustymimi
        except ImportError:
            raise MoshiError("rustymimi is not installed: `pip install rustymimi`, or use --mimi mlx") from None
        self._rustymimi = rustymimi
        self.path = Path(path).expanduser()
        self.num_codebooks = num_codebooks
        self.max_seq_len = max_seq_len
        self.limit = max_seq_len // 2  # frames a tokenizer can take
        self.prime_frames = prime_frames
        # A successor needs room to prime and catch up before the old stream reaches the limit.
        self.renew_every = min(renew_every, (self.limit - prime_frames) // 2)
        if not self.path.is_file():
            raise MoshiError(f"Mimi weights not found: {self.path}")
        self._notices: deque[str] = deque(maxlen=16)
        self._encoder, self._decoder = self._streams()

    def _load(self) -> Any:
        try:
            return self._rustymimi.Tokenizer(str(self.path), num_codebooks=self.num_codebooks,
                                             max_seq_len=self.max_seq_len)
        except Exception as e:  # rustymimi raises plain exceptions with multi-line messages
            raise MoshiError(f"cannot load Mimi weights {self.path}: {first_line(e)}") from None

    def _streams(self) -> tuple[RenewingStream, RenewingStream]:
        def encoder() -> Any:
            return self._load().encode_step

        def decoder() -> Any:
            return self._load().decode_step

        # One successor at a time (each holds a copy of the weights while it primes): the decoder's first renewal
        # comes half a period after the encoder's, and a renewal falling due while the other primes waits for it.
        common = dict(limit=self.limit, renew_every=self.renew_every, prime_frames=self.prime_frames,
                      notify=self._notices.append, released=release_freed_memory, slot=threading.Semaphore(1))
        return (RenewingStream("encoder", encoder, **common),
                RenewingStream("decoder", decoder, blend=crossfade_frames, first_after=self.renew_every // 2,
                               **common))

    def encode(self, frame: np.ndarray) -> np.ndarray:
        pcm = check_frame(frame, self.frame_size).copy()  # kept for priming: the caller may reuse its buffer
        codes = self._encoder(pcm.reshape(1, 1, -1))
        if codes.shape != (1, self.num_codebooks, 1):
            raise RuntimeError(f"rustymimi returned codes of shape {codes.shape}")
        return codes.reshape(-1).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        values = check_codes(codes, self.num_codebooks, self.cardinality)
        pcm = self._decoder(values.reshape(1, -1, 1))
        if pcm.shape != (1, 1, self.frame_size):
            raise RuntimeError(f"rustymimi returned audio of shape {pcm.shape}")
        return pcm.reshape(-1)

    @property
    def renewals(self) -> int:
        return self._encoder.renewals + self._decoder.renewals

    @property
    def renewing(self) -> list[str]:
        """The directions ("encoder", "decoder") whose successor is being primed or catching up."""
        return [s.name for s in (self._encoder, self._decoder) if s.renewing]

    def notices(self) -> list[str]:
        lines = []
        while self._notices:
            lines.append(self._notices.popleft())
        return lines

    def reset(self) -> None:
        # Tokenizer.reset() leaves some encoder state behind (the next first frame encodes differently from a
        # fresh tokenizer's), so start from fresh ones: about 0.4 s each.
        self.close()
        self._encoder = self._decoder = None
        release_freed_memory()
        self._encoder, self._decoder = self._streams()

    def close(self) -> None:
        self._encoder.close()
        self._decoder.close()


def release_freed_memory() -> None:
    """Hand the heap memory freed by a replaced tokenizer back to the system (glibc keeps it otherwise; other C
    libraries, macOS's included, return large blocks by themselves)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def crossfade_frames(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """`crossfade` on rustymimi's decoded `[1, 1, frame]` blocks."""
    return crossfade(old.reshape(-1), new.reshape(-1)).reshape(new.shape)
