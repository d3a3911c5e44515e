"""Turning Moshi's text tokens into display text."""

from __future__ import annotations

from typing import Any

PADDING_IDS = (0, 3)  # end-of-padding and padding: sampled like words, never shown


def text_piece(tokenizer: Any, token: int) -> str | None:
    """Display text of a SentencePiece token (`▁` becomes a space); None for padding and special ids."""
    if token in PADDING_IDS or token < 0 or token >= tokenizer.vocab_size():
        return None
    if tokenizer.is_control(token) or tokenizer.is_unknown(token):
        return None
    return tokenizer.id_to_piece(token).replace("\u2581", " ")
