"""Mimi through rustymimi: shapes, determinism, checks, and agreement with Kyutai's PyTorch Mimi."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import frames_of
from safetensors import safe_open
from safetensors.numpy import load_file

from moshi_mlx import MoshiError
from moshi_mlx.codec import FRAME_SIZE, NUM_CODEBOOKS, load_codec
from moshi_mlx.devtools.random_mimi import mimi_shapes, random_mimi_weights

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "mimi_pytorch.safetensors"  # made by fixtures/make_mimi_fixtures.py


@pytest.fixture(scope="module")
def codec(mimi_weights):
    return load_codec(mimi_weights)


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(GOLDEN), "np") as f:
        metadata = f.metadata()
    return load_file(str(GOLDEN)), metadata


def test_random_checkpoint_has_kyutais_layout():
    layout = json.loads((FIXTURES / "mimi_layout.json").read_text())
    shapes = mimi_shapes()
    assert set(shapes) == set(layout)
    for name, (shape, dtype) in layout.items():
        assert shapes[name] == tuple(shape), name
        assert dtype == "F32"


def test_random_weights_are_deterministic_and_not_degenerate(golden):
    data, metadata = golden
    name = "quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"
    names = metadata["fingerprint_tensors"].split(",")
    some = [*names, name, "quantizer.rvq_first.vq.layers.0._codebook.cluster_usage",
            "encoder_transformer.transformer.layers.0.layer_scale_1.scale"]
    weights = random_mimi_weights(seed=0, names=some)
    assert all(w.dtype == np.float32 for w in weights.values())
    # The generator still makes the weights the PyTorch fixture was recorded with.
    np.testing.assert_allclose([weights[n].astype(np.float64).sum() for n in names], data["fingerprint"], rtol=1e-12)
    other = random_mimi_weights(seed=1, names=[name])
    assert not np.array_equal(weights[name], other[name])
    usage = weights["quantizer.rvq_first.vq.layers.0._codebook.cluster_usage"]
    codebook = weights[name] / usage[:, None]
    assert usage.std() > 0.1 and np.linalg.norm(codebook, axis=1).min() > 1.0
    assert weights["encoder_transformer.transformer.layers.0.layer_scale_1.scale"].std() > 0.01


def test_shapes_and_dtypes(codec, golden):
    data, _ = golden
    codes = codec.encode(data["input"][:FRAME_SIZE])
    assert codes.shape == (NUM_CODEBOOKS,) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 2048
    pcm = codec.decode(codes)
    assert pcm.shape == (FRAME_SIZE,) and pcm.dtype == np.float32
    codec.reset()


def test_deterministic_and_reset_starts_afresh(mimi_weights, golden):
    frames = frames_of(golden[0]["input"])[:3]
    a, b = load_codec(mimi_weights), load_codec(mimi_weights)
    first = [a.encode(f) for f in frames]
    assert all(np.array_equal(c, b.encode(f)) for c, f in zip(first, frames, strict=True))
    a.reset()  # rustymimi's own reset() would encode the first frame differently
    assert all(np.array_equal(c, a.encode(f)) for c, f in zip(first, frames, strict=True))
    heard = [a.decode(c) for c in first]
    a.reset()
    assert all(np.array_equal(h, a.decode(c)) for h, c in zip(heard, first, strict=True))


def test_agrees_with_kyutais_pytorch_mimi(mimi_weights, golden):
    data, _ = golden
    encoder, decoder = load_codec(mimi_weights), load_codec(mimi_weights)
    codes = np.stack([encoder.encode(f) for f in frames_of(data["input"])], axis=1)
    np.testing.assert_array_equal(codes, data["codes"])
    # Every codebook takes many values over 25 frames of varied audio: the random codebooks are not degenerate.
    assert all(len(set(row)) >= 10 for row in codes), [len(set(row)) for row in codes]
    decoded = np.concatenate([decoder.decode(c) for c in data["codes"].T])
    reference = data["decoded"]
    assert np.sqrt(np.mean(reference**2)) > 0.05  # the decoder makes sound, not silence
    np.testing.assert_allclose(decoded, reference, atol=2e-5)


def test_bad_shapes_are_refused_before_rustymimi(codec):
    with pytest.raises(ValueError, match="1920 samples"):
        codec.encode(np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match="8 codes"):
        codec.decode(np.zeros((1, 8, 2), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 2048\)"):
        codec.decode(np.full(8, 2048))
    # Accepted alternatives: [1, 1920] audio, [8, 1] codes, any integer dtype.
    codes = codec.encode(np.zeros((1, FRAME_SIZE), np.float64))
    assert codec.decode(codes.reshape(8, 1).astype(np.int32)).shape == (FRAME_SIZE,)
    codec.reset()


def test_unusable_weights_are_one_line_errors(tmp_path):
    with pytest.raises(MoshiError, match="Mimi weights not found"):
        load_codec(tmp_path / "missing.safetensors")
    lm_file = FIXTURES / "kyutai_test_lm" / "test_lm_model.safetensors"
    with pytest.raises(MoshiError, match="cannot load Mimi weights") as e:
        load_codec(lm_file)
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MoshiError, match="cannot load Mimi weights"):
        load_codec(junk)
