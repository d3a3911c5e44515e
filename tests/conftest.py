"""Shared fixtures. Each section is owned by the part of the project that uses it first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from moshi_mlx.devtools.tiny_model import TinyModel, write_tiny_model

# --- Audio engine: random Mimi, a tiny Moshi, a tiny text tokenizer, a virtual sound card ---


@pytest.fixture(scope="session")
def mimi_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Mimi checkpoint in Kyutai's names (about 385 MB, written once per session)."""
    from moshi_mlx.devtools.random_mimi import write_random_mimi

    return write_random_mimi(tmp_path_factory.mktemp("mimi") / "mimi.safetensors", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, mimi_weights: Path) -> TinyModel:
    return write_tiny_model(tmp_path_factory.mktemp("tiny_model"), mimi_weights)


@pytest.fixture(scope="session")
def tiny_persona_model(tmp_path_factory: pytest.TempPathFactory, mimi_weights: Path) -> TinyModel:
    """A tiny model with PersonaPlex's layout (16 depth steps, `model_type` personaplex), random weights."""
    from moshi_mlx.devtools.random_lm import tiny_persona_config

    return write_tiny_model(tmp_path_factory.mktemp("tiny_persona"), mimi_weights, config=tiny_persona_config())


@pytest.fixture(scope="session")
def virtual_audio():
    """A private PulseAudio server (virtual mic `vmic` fed through sink `vmicsink`, speaker `vspeaker`).

    Sets PULSE_SERVER for this process (and the programs it starts) and rescans PortAudio's devices.
    Errors (never skips) when PulseAudio is not installed.
    """
    from moshi_mlx.devtools.virtual_audio import VirtualAudio, reinitialise_portaudio

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
