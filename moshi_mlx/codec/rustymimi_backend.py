"""Mimi through `rustymimi` (Kyutai's Rust port), one frame at a time on the calling thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rustymimi

from ..errors import MoshiError
from .base import CARDINALITY, FRAME_SIZE, NUM_CODEBOOKS, SAMPLE_RATE, check_codes, check_frame


class RustyMimi:
    """Kyutai's Mimi checkpoint (PyTorch names) run by `rustymimi.Tokenizer`.

    `Tokenizer.encode_step` / `decode_step` run on the caller's thread and release the GIL; they have the lowest
    per-frame latency (rustymimi's `StreamTokenizer` adds its own threads and polling). Shapes are checked here
    because rustymimi reports wrong ones poorly.
    """

    sample_rate = SAMPLE_RATE
    frame_size = FRAME_SIZE
    cardinality = CARDINALITY
    runs_off_thread = True  # Tokenizer's steps release the GIL

    def __init__(self, path: str | Path, num_codebooks: int = NUM_CODEBOOKS):
        self.path = Path(path).expanduser()
        self.num_codebooks = num_codebooks
        if not self.path.is_file():
            raise MoshiError(f"Mimi weights not found: {self.path}")
        self._tokenizer = self._load()

    def _load(self) -> rustymimi.Tokenizer:
        try:
            return rustymimi.Tokenizer(str(self.path), num_codebooks=self.num_codebooks)
        except Exception as e:  # rustymimi raises plain exceptions with multi-line messages
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise MoshiError(f"cannot load Mimi weights {self.path}: {reason}") from None

    def encode(self, frame: np.ndarray) -> np.ndarray:
        pcm = check_frame(frame, self.frame_size)
        codes = self._tokenizer.encode_step(pcm.reshape(1, 1, -1))
        if codes.shape != (1, self.num_codebooks, 1):
            raise RuntimeError(f"rustymimi returned codes of shape {codes.shape}")
        return codes.reshape(-1).astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        values = check_codes(codes, self.num_codebooks, self.cardinality)
        pcm = self._tokenizer.decode_step(values.reshape(1, -1, 1))
        if pcm.shape != (1, 1, self.frame_size):
            raise RuntimeError(f"rustymimi returned audio of shape {pcm.shape}")
        return pcm.reshape(-1)

    def reset(self) -> None:
        # Tokenizer.reset() leaves some encoder state behind (the next first frame encodes differently from a
        # fresh tokenizer's), so start from a fresh one: about 0.4 s.
        self._tokenizer = self._load()

    def close(self) -> None:
        pass
