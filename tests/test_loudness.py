"""BS.1770-4 loudness and -24 LUFS normalisation against pyloudnorm's values (recorded by
tests/fixtures/make_voice_fixtures.py; pyloudnorm is what PersonaPlex normalises voice prompts with)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fixtures.loudness_signals import RATE, signals

from moshi_mlx.persona.loudness import biquad, integrated_loudness, k_weighting, normalize_loudness

FIXTURES = Path(__file__).parent / "fixtures" / "voice"


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
