"""Shared fixtures. Each section is owned by the part of the project that uses it first."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# --- Audio engine: random Mimi, a tiny Moshi, a tiny text tokenizer, a virtual sound card ---

TOKENIZER_TEXT = """\
Moshi listens while it talks. It hears your voice in eighty millisecond steps and answers with its own voice.
The quick brown fox jumps over the lazy dog. Hello there, how are you today? I am fine, thank you very much.
Speech and text are modelled together: an inner monologue of words runs ahead of the audio tokens.
"""


def write_tiny_tokenizer(path: Path, vocab_size: int = 64) -> Path:
    """A SentencePiece model with Kyutai's special ids (0 unk, 3 pad) and as many pieces as the tiny LM's text."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TOKENIZER_TEXT.splitlines() * 20), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        num_threads=1, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


@dataclass(frozen=True)
class TinyModel:
    """Files of a complete tiny model: Moshi (random, 7B structure), Mimi (random, full size), a tokenizer."""

    moshi_weights: Path
    config: Path
    mimi_weights: Path
    tokenizer: Path

    def cli_args(self) -> list[str]:
        return ["--moshi-weights", str(self.moshi_weights), "--config", str(self.config),
                "--mimi-weights", str(self.mimi_weights), "--tokenizer", str(self.tokenizer)]


@pytest.fixture(scope="session")
def mimi_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Mimi checkpoint in Kyutai's names (about 385 MB, written once per session)."""
    from moshi_mlx.devtools.random_mimi import write_random_mimi

    return write_random_mimi(tmp_path_factory.mktemp("mimi") / "mimi.safetensors", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, mimi_weights: Path) -> TinyModel:
    from moshi_mlx.devtools.random_lm import tiny_config, write_random_lm

    directory = tmp_path_factory.mktemp("tiny_model")
    # Mimi's codes go up to 2047: the LM's audio tables must be that large.
    weights, config = write_random_lm(directory, tiny_config(card=2048), seed=0)
    tokenizer = write_tiny_tokenizer(directory / "tokenizer.model")
    return TinyModel(weights, config, mimi_weights, tokenizer)


@pytest.fixture(scope="session")
def virtual_audio():
    """A private PulseAudio server (virtual mic `vmic` fed through sink `vmicsink`, speaker `vspeaker`).

    Sets PULSE_SERVER for this process (and the programs it starts) and rescans PortAudio's devices.
    Errors (never skips) when PulseAudio is not installed.
    """
    from audio_server import VirtualAudio, reinitialise_portaudio

    server = VirtualAudio().start()
    saved = {key: os.environ.get(key) for key in ("PULSE_SERVER", "XDG_RUNTIME_DIR")}
    os.environ["PULSE_SERVER"] = server.env["PULSE_SERVER"]
    os.environ["XDG_RUNTIME_DIR"] = server.env["XDG_RUNTIME_DIR"]
    reinitialise_portaudio()
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
