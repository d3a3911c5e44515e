"""Mimi in MLX behind the `Codec` interface: on the GPU beside the LM, exact to Kyutai's PyTorch Mimi."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ..errors import MoshiError, first_line
from .base import CARDINALITY, FRAME_SIZE, NUM_CODEBOOKS, SAMPLE_RATE, check_codes, check_frame
from .mimi import Mimi
from .mimi_config import MimiConfig


def load_mimi(path: str | Path, num_codebooks: int = NUM_CODEBOOKS, dtype: mx.Dtype = mx.float32) -> Mimi:
    """Kyutai's Mimi checkpoint (PyTorch names) as an MLX `Mimi`; the quantizer stays float32 whatever `dtype`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MoshiError(f"Mimi weights not found: {path}")
    try:
        weights = mx.load(str(path))
    except Exception as e:  # mlx raises bare RuntimeError/ValueError for unreadable files
        raise MoshiError(f"cannot load Mimi weights {path}: {first_line(e)}") from None
    if not isinstance(weights, dict):
        raise MoshiError(f"cannot load Mimi weights {path}: not a safetensors file")
    model = Mimi(MimiConfig(num_codebooks=num_codebooks))
    try:
        model.load_weights(list(model.sanitize(weights).items()), strict=True)
    except (ValueError, KeyError) as e:
        raise MoshiError(f"cannot load Mimi weights {path}: {first_line(e)}") from None
    if dtype != mx.float32:
        for name in ("encoder", "encoder_transformer", "downsample", "upsample", "decoder_transformer", "decoder"):
            getattr(model, name).set_dtype(dtype)
    mx.eval(model.parameters())
    return model


class MlxMimi:
    """Streaming Mimi in MLX, one 80 ms frame per call, on the calling (inference) thread.

    Encode and decode are each one MLX function of (input, state) with fixed shapes, compiled on a GPU (on the
    CPU, `mx.compile` costs about 16 s at the first frame and made steps slower here); the only host
    synchronisation per call is reading the codes or samples back. State is bounded: convolution context,
    transposed-convolution overlap and 250 steps of attention keys per layer, whatever the length of the stream.
    """

    sample_rate = SAMPLE_RATE
    frame_size = FRAME_SIZE
    cardinality = CARDINALITY
    runs_off_thread = False  # MLX work belongs to the inference thread

    def __init__(self, path: str | Path, num_codebooks: int = NUM_CODEBOOKS, dtype: mx.Dtype = mx.float32,
                 compiled: bool | None = None):
        self.path = Path(path).expanduser()
        self.num_codebooks = num_codebooks
        self.dtype = dtype
        self.model = load_mimi(self.path, num_codebooks, dtype)
        if compiled is None:
            compiled = mx.default_device() == mx.gpu
        step = partial(mx.compile, inputs=[self.model.state]) if compiled else (lambda f: f)
        self._encode = step(self.model.encode_step)
        self._decode = step(self.model.decode_step)
        self.reset()

    def encode(self, frame: np.ndarray) -> np.ndarray:
        pcm = check_frame(frame, self.frame_size)
        codes, _, self._encoder_state = self._encode(mx.array(pcm)[None], self._encoder_state)
        mx.eval(codes, self._encoder_state)
        return np.array(codes[0], dtype=np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        values = check_codes(codes, self.num_codebooks, self.cardinality)
        pcm, self._decoder_state = self._decode(mx.array(values.astype(np.int32))[None], self._decoder_state)
        mx.eval(pcm, self._decoder_state)
        return np.array(pcm[0], dtype=np.float32)

    def reset(self) -> None:
        self._encoder_state: Any = self.model.init_encoder_state(1, self.dtype)
        self._decoder_state: Any = self.model.init_decoder_state(1, self.dtype)
        mx.eval(self._encoder_state, self._decoder_state)

    def notices(self) -> list[str]:
        return []  # nothing to renew, nothing to tell

    def close(self) -> None:
        self._encoder_state = self._decoder_state = None
