"""Our MLX Mimi: agreement with Kyutai's PyTorch Mimi and rustymimi, bounded state, backend choice."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from helpers import frames_of
from mlx.utils import tree_flatten
from safetensors.numpy import load_file

from moshi_mlx import MoshiError, codec
from moshi_mlx.codec import FRAME_SIZE, choose_backend, load_codec
from moshi_mlx.codec.mimi_transformer import rope, rope_frequencies
from moshi_mlx.codec.mlx_backend import MlxMimi
from moshi_mlx.stream.echo.simulator import speech_like

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def mlx_codec(mimi_weights) -> MlxMimi:
    return load_codec(mimi_weights, backend="mlx")


def relative_error(x: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(x - reference).max() / np.abs(reference).max())


def stream_encode(mimi: MlxMimi, audio: np.ndarray, state=None) -> tuple[np.ndarray, np.ndarray]:
    """Codes `[8, T]` and pre-quantizer latents `[512, T]`, frame by frame through the model's step."""
    model = mimi.model
    state = model.init_encoder_state() if state is None else state
    codes, latents = [], []
    for frame in frames_of(audio):
        c, latent, state = model.encode_step(mx.array(frame)[None], state)
        mx.eval(c, latent, state)
        codes.append(np.array(c[0]))
        latents.append(np.array(latent[0]))
    return np.stack(codes, axis=1), np.stack(latents, axis=1)


def test_agrees_with_kyutais_pytorch_mimi(mlx_codec):
    golden = load_file(str(FIXTURES / "mimi_pytorch.safetensors"))
    codes, latent = stream_encode(mlx_codec, golden["input"])
    assert np.mean(codes == golden["codes"]) >= 0.995, np.mean(codes == golden["codes"])
    assert relative_error(latent, golden["latent"]) < 1e-4
    mlx_codec.reset()
    decoded = np.concatenate([mlx_codec.decode(c) for c in golden["codes"].T])
    assert np.sqrt(np.mean(golden["decoded"] ** 2)) > 0.05  # the reference is sound, not silence
    assert relative_error(decoded, golden["decoded"]) < 1e-4
    mlx_codec.reset()


@pytest.mark.slow
def test_agrees_with_pytorch_past_the_attention_context(mlx_codec):
    """140 frames = 280 transformer steps: both attention windows have rotated past their 250 steps."""
    golden = load_file(str(FIXTURES / "mimi_pytorch_long.safetensors"))
    tail = golden["latent_tail"].shape[1]
    codes, latent = stream_encode(mlx_codec, golden["input_i16"].astype(np.float32) / 32768)
    assert np.mean(codes == golden["codes"]) >= 0.995, np.mean(codes == golden["codes"])
    assert np.mean(codes[:, -tail:] == golden["codes"][:, -tail:]) >= 0.95
    assert relative_error(latent[:, -tail:], golden["latent_tail"]) < 1e-4
    mlx_codec.reset()
    decoded = np.concatenate([mlx_codec.decode(c) for c in golden["codes"].T])
    assert relative_error(decoded[-tail * FRAME_SIZE :], golden["decoded_tail"]) < 1e-4
    mlx_codec.reset()


def test_codes_equal_rustymimis(mlx_codec, mimi_weights):
    pytest.importorskip("rustymimi")
    golden = load_file(str(FIXTURES / "mimi_pytorch.safetensors"))
    rust = load_codec(mimi_weights, backend="rust")
    frames = frames_of(golden["input"])
    theirs = np.stack([rust.encode(f) for f in frames], axis=1)
    ours = np.stack([mlx_codec.encode(f) for f in frames], axis=1)
    mlx_codec.reset()
    assert ours.dtype == np.int64 and ours.shape == (8, len(frames))
    assert np.mean(ours == theirs) >= 0.995, np.mean(ours == theirs)


def test_state_is_bounded_and_reset_starts_afresh(mlx_codec):
    golden = load_file(str(FIXTURES / "mimi_pytorch.safetensors"))
    frames = frames_of(golden["input"])[:3]

    def shapes(state) -> list[tuple[str, tuple[int, ...]]]:
        return [(name, value.shape) for name, value in tree_flatten(state)]

    start = shapes(mlx_codec._encoder_state), shapes(mlx_codec._decoder_state)
    first = [mlx_codec.encode(f) for f in frames]
    heard = [mlx_codec.decode(c) for c in first]
    # Every frame leaves state of the same shapes: nothing grows with the length of the stream.
    assert (shapes(mlx_codec._encoder_state), shapes(mlx_codec._decoder_state)) == start
    assert int(mlx_codec._encoder_state["transformer"]["offset"]) == 2 * len(frames)
    mlx_codec.reset()
    assert all(np.array_equal(c, mlx_codec.encode(f)) for c, f in zip(first, frames, strict=True))
    assert all(np.array_equal(h, mlx_codec.decode(c)) for h, c in zip(heard, first, strict=True))
    mlx_codec.reset()


def test_stream_far_into_a_conversation(mlx_codec):
    """Positions are not capped: a stream placed at 10 minutes (15,000 steps; rustymimi stops at 8,192) encodes
    as one at 0 (attention only sees position differences; float32 angles round a little)."""
    golden = load_file(str(FIXTURES / "mimi_pytorch.safetensors"))
    audio = golden["input"][: 10 * FRAME_SIZE]
    state = mlx_codec.model.init_encoder_state()
    state["transformer"]["offset"] = mx.array(15000, mx.int32)
    late, _ = stream_encode(mlx_codec, audio, state)
    assert np.mean(late == golden["codes"][:, :10]) >= 0.95, np.mean(late == golden["codes"][:, :10])


def test_rope_at_any_position():
    """Kyutai's rotation (float32 angles `position * freq`, interleaved pairs) far past any table."""
    positions = np.array([0, 1, 4095, 8192, 15000, 1_000_003], np.int32)
    freqs = np.array(rope_frequencies(64, 10000.0))
    angles = positions.astype(np.float32)[:, None] * freqs  # float32 products, as PyTorch forms them
    x = np.random.default_rng(0).standard_normal((1, 2, len(positions), 64)).astype(np.float32)
    y = np.array(rope(mx.array(x), mx.cos(mx.array(angles)), mx.sin(mx.array(angles))))
    re, im = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    cos, sin = np.cos(angles.astype(np.float64)), np.sin(angles.astype(np.float64))
    np.testing.assert_allclose(y[..., 0::2], re * cos - im * sin, atol=1e-5)
    np.testing.assert_allclose(y[..., 1::2], re * sin + im * cos, atol=1e-5)
    assert np.allclose(freqs[:2], [1.0, 10000 ** (-2 / 64)])


def test_bad_input_and_weights_are_refused(mlx_codec, tmp_path):
    with pytest.raises(ValueError, match="1920 samples"):
        mlx_codec.encode(np.zeros(1000, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 2048\)"):
        mlx_codec.decode(np.full(8, 2048))
    with pytest.raises(MoshiError, match="Mimi weights not found"):
        load_codec(tmp_path / "missing.safetensors", backend="mlx")
    lm_file = FIXTURES / "kyutai_test_lm" / "test_lm_model.safetensors"
    with pytest.raises(MoshiError, match="cannot load Mimi weights") as e:
        load_codec(lm_file, backend="mlx")
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MoshiError, match="cannot load Mimi weights"):
        load_codec(junk, backend="mlx")


def test_backend_choice(monkeypatch):
    assert choose_backend("mlx")[0] == "mlx"
    monkeypatch.setattr(codec, "rustymimi_installed", lambda: True)
    monkeypatch.setattr(codec.mx, "default_device", lambda: mx.gpu)
    assert choose_backend("auto") == ("mlx", "MLX runs on the GPU")
    monkeypatch.setattr(codec.mx, "default_device", lambda: mx.cpu)
    assert choose_backend("auto")[0] == "rust"
    assert choose_backend("rust")[0] == "rust"
    monkeypatch.setattr(codec, "rustymimi_installed", lambda: False)
    assert choose_backend("auto")[0] == "mlx"
    with pytest.raises(MoshiError, match="--mimi rust needs rustymimi") as e:
        choose_backend("rust")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown codec backend"):
        choose_backend("torch")


def test_file_run_gives_rustymimis_transcript(tiny_model, tmp_path):
    """The file loop with a float32 LM and greedy sampling says the same words through either codec."""
    pytest.importorskip("rustymimi")
    from moshi_mlx.model.config import LmConfig
    from moshi_mlx.stream.filemode import run_file
    from moshi_mlx.stream.pipeline import Pipeline

    audio = speech_like(1.2)
    results = {}
    for mimi in ("mlx", "rust"):
        pipeline = Pipeline.load(
            tiny_model.moshi_weights, tiny_model.mimi_weights, tiny_model.tokenizer,
            LmConfig.from_json(tiny_model.config), temp=0, temp_text=0, dtype=mx.float32, mimi=mimi,
        )
        assert isinstance(pipeline.codec, MlxMimi) == (mimi == "mlx")
        transcript = tmp_path / f"{mimi}.txt"
        results[mimi] = run_file(pipeline, audio, tmp_path / f"{mimi}.wav", transcript, keep=True)
        results[mimi].transcript = transcript.read_text()
    ours, theirs = results["mlx"], results["rust"]
    assert len(set(theirs.text_tokens)) > 2  # the tiny LM says something, not only padding
    assert ours.text_tokens == theirs.text_tokens
    assert ours.transcript == theirs.transcript and ours.text == theirs.text
    np.testing.assert_allclose(ours.moshi, theirs.moshi, atol=1e-4)


def test_run_command_says_which_codec(tiny_model, tmp_path, capsys, monkeypatch):
    from moshi_mlx.app import cli

    source, out = tmp_path / "in.wav", tmp_path / "out.wav"
    import soundfile

    soundfile.write(str(source), speech_like(0.4), 24000)
    cli.main(["run", str(source), "--out", str(out), "--quiet", "--mimi", "mlx", "--seed", "1",
              *tiny_model.cli_args()])
    err = capsys.readouterr().err
    assert err.startswith("Mimi codec: MLX Mimi (asked for)\n")
    assert soundfile.read(str(out))[0].shape == (5 * FRAME_SIZE,)

    monkeypatch.setattr(codec, "rustymimi_installed", lambda: False)
    with pytest.raises(SystemExit) as e:
        cli.main(["run", str(source), "--out", str(out), "--mimi", "rust", *tiny_model.cli_args()])
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: --mimi rust needs rustymimi: pip install rustymimi (or use --mimi mlx)\n"


HIDE_RUSTYMIMI = """
import importlib, json, pkgutil, sys
sys.modules["rustymimi"] = None  # as on Python 3.14, where it has no wheel
import moshi_mlx, moshi_mlx.app, moshi_mlx.quantize
for package in (moshi_mlx, moshi_mlx.app, moshi_mlx.quantize):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
from moshi_mlx.app import cli
cli.main(json.loads(sys.argv[1]))
"""


def test_everything_works_without_rustymimi(tiny_model, tmp_path):
    """Every module imports with rustymimi absent, and `run` picks MLX Mimi by itself."""
    import json
    import subprocess
    import sys

    import soundfile

    source, out = tmp_path / "in.wav", tmp_path / "out.wav"
    soundfile.write(str(source), speech_like(0.4), 24000)
    args = ["run", str(source), "--out", str(out), "--quiet", "--seed", "1", *map(str, tiny_model.cli_args())]
    done = subprocess.run([sys.executable, "-c", HIDE_RUSTYMIMI, json.dumps(args)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("Mimi codec: MLX Mimi (MLX runs on the CPU and rustymimi is not installed)\n")
    assert soundfile.read(str(out))[0].shape == (5 * FRAME_SIZE,)
