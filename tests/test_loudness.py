"""BS.1770-4 loudness and -24 LUFS normalisation against pyloudnorm's values (recorded by
tests/fixtures/make_voice_fixtures.py; pyloudnorm is what PersonaPlex normalises voice prompts with)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from moshi_mlx.persona.loudness import biquad, integrated_loudness, k_weighting, normalize_loudness

FIXTURES = Path(__file__).parent / "fixtures" / "voice"
RATE = 24000


# The same signals as the fixture script's `signals()` (kept in step by hand: the script must not import the project).
def lcg_noise(n: int, seed: int) -> np.ndarray:
    state, values = seed, []
    for _ in range(n):
        state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
        values.append(state)
    return (np.array(values, dtype=np.float64) / 2**31 - 1.0).astype(np.float32)


def signals() -> dict[str, np.ndarray]:
    t = np.arange(int(3.0 * RATE)) / RATE
    sine = (0.1 * np.sin(2 * np.pi * 1000.0 * t[:RATE])).astype(np.float32)
    low = (0.3 * np.sin(2 * np.pi * 100.0 * t[: 2 * RATE])).astype(np.float32)
    chirp = (0.2 * np.sin(2 * np.pi * (50.0 * t + (8000.0 - 50.0) / (2 * 3.0) * t**2))).astype(np.float32)
    noise = 0.05 * lcg_noise(int(1.5 * RATE), 7)
    bursts = np.zeros(int(2.5 * RATE), np.float32)
    for start, gain in ((0.0, 0.3), (0.9, 0.01), (1.7, 0.3)):
        a = int(start * RATE)
        bursts[a : a + int(0.5 * RATE)] = gain * lcg_noise(int(0.5 * RATE), int(start * 10) + 1)
    quiet = np.concatenate([0.2 * lcg_noise(RATE, 3), 1e-5 * lcg_noise(RATE, 4)]).astype(np.float32)
    odd = (0.25 * np.sin(2 * np.pi * 440.0 * t[: int(0.437 * RATE)])).astype(np.float32)
    return {"sine_1k": sine, "sine_100": low, "chirp": chirp, "noise": noise, "bursts": bursts, "quiet_tail": quiet,
            "odd_length": odd, "silence": np.zeros(RATE, np.float32)}


@pytest.fixture(scope="module")
def recorded():
    return json.loads((FIXTURES / "loudness.json").read_text())["lufs"]


def test_loudness_is_pyloudnorms(recorded):
    made = signals()
    assert sorted(made) == sorted(recorded)
    for name, x in made.items():
        ours, theirs = integrated_loudness(x, RATE), recorded[name]
        if math.isinf(theirs):
            assert ours == theirs, name
        else:
            assert abs(ours - theirs) < 1e-7, (name, ours, theirs)  # identical on the machine that made them


def test_normalised_samples_are_personaplexs(recorded):
    x = signals()["odd_length"]
    ours = normalize_loudness(x, RATE, -24.0)
    theirs = np.load(FIXTURES / "normalized.npy")
    assert ours.dtype == np.float32 and theirs.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1.2e-7, atol=0)  # one float32 step at most
    assert abs(integrated_loudness(ours, RATE) - -24.0) < 1e-3


def direct_form(b, a, x):
    """The textbook recursion, one sample at a time (the reference for the block filter)."""
    y = np.zeros(len(x))
    for n in range(len(x)):
        y[n] = sum(b[k] * x[n - k] for k in range(3) if n >= k) - sum(a[k] * y[n - k] for k in (1, 2) if n >= k)
    return y


@pytest.mark.parametrize("length", [1, 5, 1023, 1024, 1025, 3000])
def test_block_filter_is_the_recursion(length):
    x = np.random.default_rng(length).standard_normal(length)
    for b, a in k_weighting(RATE):
        np.testing.assert_allclose(biquad(b, a, x), direct_form(b, a, x), rtol=1e-9, atol=1e-10)


def test_too_short_or_silent():
    with pytest.raises(ValueError, match="shorter than one 400 ms block"):
        integrated_loudness(np.ones(int(0.39 * RATE), np.float32), RATE)
    with pytest.raises(ValueError, match="silent"):
        normalize_loudness(np.zeros(RATE, np.float32), RATE, -24.0)
