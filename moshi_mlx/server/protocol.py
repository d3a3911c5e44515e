"""Kyutai's websocket protocol for Moshi (`moshi.server` / `moshi.client` 0.2.13), and our one extension.

Binary messages, a kind byte then the payload:

- 0 (server -> client, once): the handshake, sent when the model is ready for this conversation.
- 1 (both ways): Ogg Opus pages, 24 kHz mono (`sphn`'s stream writer and reader).
- 2 (server -> client): a piece of Moshi's text, UTF-8, SentencePiece's word marker as a space.
- 5 (server -> client): an error line for the user (Kyutai's web client shows kind 5 as an error); we send it
  before closing a connection we refuse, e.g. when a conversation is already in progress.
- 0x10 (server -> client, ours): one JSON object per frame of Moshi's voice, sent right after its audio message,
  only to clients that ask with the query parameter `stats=1` (Kyutai's clients never do, so they never see it).

The query parameters Kyutai's web client sends (temperatures, top-k, seeds, repetition penalty...) are accepted
and ignored, as `moshi.server` ignores them: the sampling settings are the server's (`moshi-mlx serve --temp`...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from ..codec import FRAME_SIZE, SAMPLE_RATE
from ..errors import MoshiError
from ..stream.audio_io import Chunker

HANDSHAKE = b"\x00"
AUDIO, TEXT, ERROR, STATS = 1, 2, 5, 0x10


def message(kind: int, payload: bytes) -> bytes:
    return bytes((kind,)) + payload


def audio(page: bytes) -> bytes:
    return message(AUDIO, page)


def text(piece: str) -> bytes:
    return message(TEXT, piece.encode("utf-8"))


def error(line: str) -> bytes:
    return message(ERROR, line.encode("utf-8"))


def stats(values: Mapping[str, object]) -> bytes:
    return message(STATS, json.dumps(values, separators=(",", ":")).encode("utf-8"))


def wants_stats(query: Mapping[str, str]) -> bool:
    """Our page asks for the per-frame figures; Kyutai's clients never do."""
    return query.get("stats") == "1"


def _sphn():
    try:
        import sphn
    except ImportError as e:
        raise MoshiError(f"the server needs Kyutai's sphn for Opus ({e}): pip install 'sphn>=0.2,<0.3'") from None
    return sphn


class OpusFrames:
    """A client's Ogg Opus stream -> whole 80 ms frames at 24 kHz, in order (`sphn.OpusStreamReader`).

    `frames` counts the frames handed out so far, `samples` the samples decoded.
    """

    def __init__(self, frame_size: int = FRAME_SIZE):
        self._reader = _sphn().OpusStreamReader(SAMPLE_RATE)
        self._frames = Chunker(frame_size)
        self.frames = 0
        self.samples = 0

    def __call__(self, pages: bytes) -> list[np.ndarray]:
        """Ogg bytes (any cut) -> the frames they complete; ValueError when they are not Ogg Opus."""
        pcm = np.asarray(self._reader.append_bytes(pages), dtype=np.float32).reshape(-1)
        self.samples += pcm.size
        frames = self._frames(pcm) if pcm.size else []
        self.frames += len(frames)
        return frames


class OpusPages:
    """Moshi's 80 ms frames -> Ogg Opus bytes for one message each (sphn writes two pages of 40 ms; the first
    frame's bytes start with the stream's two header pages)."""

    def __init__(self) -> None:
        self._writer = _sphn().OpusStreamWriter(SAMPLE_RATE)

    def __call__(self, pcm: np.ndarray) -> bytes:
        return bytes(self._writer.append_pcm(np.ascontiguousarray(pcm, dtype=np.float32)))
