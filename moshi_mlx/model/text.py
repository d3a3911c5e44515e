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


def check_vocabulary(tokenizer: Any, config: Any, path: Any = "the text tokenizer") -> None:
    """The tokenizer must have one piece per text token of the model: with fewer, words past its end are dropped;
    with more, it belongs to another model."""
    from ..errors import MoshiError

    size = tokenizer.vocab_size()
    if size != config.text_card:
        raise MoshiError(
            f"text tokenizer {path} has {size} pieces but the model has {config.text_card} text tokens "
            "(text_card): give this model's tokenizer (--tokenizer) or its config (--config)"
        )
