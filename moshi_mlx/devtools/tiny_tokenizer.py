"""A tiny SentencePiece text tokenizer with Kyutai's special ids, for random models in tests and benchmarks."""

from __future__ import annotations

import io
from pathlib import Path

TRAINING_TEXT = """\
Moshi listens while it talks. It hears your voice in eighty millisecond steps and answers with its own voice.
The quick brown fox jumps over the lazy dog. Hello there, how are you today? I am fine, thank you very much.
Speech and text are modelled together: an inner monologue of words runs ahead of the audio tokens.
"""


def write_tiny_tokenizer(path: Path, vocab_size: int = 64) -> Path:
    """A SentencePiece model with Kyutai's special ids (0 unk, 3 pad) and as many pieces as the tiny LM's text."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT.splitlines() * 20), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path
