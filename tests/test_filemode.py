"""File mode end to end: `moshi-mlx run` and its API on a tiny random Moshi and a random full-size Mimi."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
import soxr
from helpers import load_pipeline
from moshi_mlx.app import cli

from moshi_mlx import LmGen, MoshiError, load_lm, text_piece
from moshi_mlx.codec import load_codec
from moshi_mlx.model.config import LmConfig
from moshi_mlx.stream.filemode import run_file, run_frames
from moshi_mlx.stream.pipeline import Pipeline, load_text_tokenizer

FRAME = 1920


def write_input(path, seconds: float, rate: int, channels: int) -> np.ndarray:
    """A voiced-like test signal, different on each channel; returns the float32 `[frames, channels]` written."""
    t = np.arange(int(seconds * rate)) / rate
    columns = [(0.3 / (c + 1)) * np.sin(2 * np.pi * (150 + 90 * c) * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
               for c in range(channels)]
    data = np.stack(columns, axis=1).astype(np.float32)
    soundfile.write(str(path), data, rate, subtype="FLOAT")
    return data


def test_run_command_stereo_odd_rate(tmp_path, tiny_model, capsys):
    source = tmp_path / "in.wav"
    data = write_input(source, seconds=1.3, rate=22050, channels=2)
    out, transcript = tmp_path / "out.wav", tmp_path / "t.txt"
    cli.main(["run", str(source), "--out", str(out), "--transcript", str(transcript), "--stereo", "--seed", "3",
              *tiny_model.cli_args()])

    audio, rate = soundfile.read(str(out), dtype="float32")
    frames = -(-int(1.3 * 24000) // FRAME)  # 1.3 s is 16.25 frames: padded to 17
    assert rate == 24000 and audio.shape == (frames * FRAME, 2)
    # Left: the input as Moshi heard it (channels averaged, resampled to 24 kHz), to 16-bit precision.
    heard = soxr.resample(data.mean(axis=1), 22050, 24000)
    np.testing.assert_allclose(audio[: len(heard), 0], heard, atol=2e-4)
    assert np.all(audio[len(heard) :, 0] == 0)
    # Right: Moshi, silent at step 0 (its first frame completes at step 1), then speaking.
    assert np.all(audio[:FRAME, 1] == 0) and np.sqrt(np.mean(audio[FRAME:, 1] ** 2)) > 0.01

    # The same seed through the API gives the same voice and words.
    result = run_frames(load_pipeline(tiny_model, seed=3), heard)
    assert len(result.events) == frames
    np.testing.assert_allclose(audio[:, 1], np.clip(result.moshi, -1, 1), atol=1 / 32768 + 1e-6)
    assert transcript.read_text() == result.text + "\n"
    captured = capsys.readouterr()
    assert result.text in captured.out
    assert captured.err.startswith("Mimi codec: ") and f"\nwrote {out}: 1.4 s, {frames} frames" in captured.err


def test_seed_makes_runs_reproducible(tmp_path, tiny_model):
    source = tmp_path / "in.wav"
    write_input(source, seconds=0.5, rate=16000, channels=1)

    def run(seed: int, name: str) -> np.ndarray:
        cli.main(["run", str(source), "--out", str(tmp_path / name), "--seed", str(seed), "--quiet",
                  *tiny_model.cli_args()])
        audio, rate = soundfile.read(str(tmp_path / name), dtype="float32")
        assert rate == 24000 and audio.ndim == 1  # without --stereo: Moshi alone
        return audio

    first, again, other = run(7, "a.wav"), run(7, "b.wav"), run(8, "c.wav")
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_pipeline_composes_mimi_and_lmgen(tmp_path, tiny_model):
    """Each frame: encode -> LmGen.step -> decode, with the events telling what happened."""
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(5 * FRAME)).astype(np.float32)
    result = run_frames(load_pipeline(tiny_model, seed=11), audio)

    config = LmConfig.from_json(tiny_model.config)
    gen = LmGen(load_lm(tiny_model.moshi_weights, config), seed=11)
    encoder, decoder = load_codec(tiny_model.mimi_weights), load_codec(tiny_model.mimi_weights)
    tokenizer = load_text_tokenizer(tiny_model.tokenizer)
    expected = np.zeros_like(audio)
    for t, event in enumerate(result.events):
        out = gen.step(encoder.encode(audio[t * FRAME : (t + 1) * FRAME]))
        assert event.index == t and event.text_token == out.text_token
        if out.audio_codes is None:
            assert t == 0 and event.decode_ms == 0 and event.output_level == 0
        else:
            expected[t * FRAME : (t + 1) * FRAME] = decoder.decode(out.audio_codes)
        assert event.text == text_piece(tokenizer, out.text_token)
        assert event.encode_ms > 0 and event.lm_ms > 0 and event.input_level > 0.05
    np.testing.assert_array_equal(result.moshi, expected)
    assert result.text == "".join(e.text or "" for e in result.events).strip()


def test_a_slow_lm_builds_the_next_step_while_one_computes(tiny_model):
    """When the LM is the slowest stage, frame t+1's step is submitted before frame t's is collected; the output
    is what the stages one after the other give."""
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(10 * FRAME)).astype(np.float32)
    expected = run_frames(load_pipeline(tiny_model, seed=5), audio, overlap=False)

    pipeline = load_pipeline(tiny_model, seed=5)
    gen, outstanding, ahead = pipeline.gen, [], []
    submit, collect = gen.submit, gen.collect

    def slow_submit(codes):
        ahead.append(len(outstanding))
        pending = submit(codes)
        outstanding.append(pending)
        time.sleep(0.05)  # building a big model's step takes a while: the next frame's codes land meanwhile
        return pending

    def slow_collect(pending):
        time.sleep(0.3)  # a big model computing: the encoder gets ahead
        outstanding.remove(pending)
        return collect(pending)

    gen.submit, gen.collect = slow_submit, slow_collect
    result = run_frames(pipeline, audio, overlap=True)
    assert sum(1 for n in ahead if n > 0) >= 5, ahead
    assert max(ahead) == 1  # never more than one step in flight beside the one being built
    np.testing.assert_array_equal(result.moshi, expected.moshi)
    assert [e.text_token for e in result.events] == [e.text_token for e in expected.events]
    assert all(0 < e.lm_ms < 2000 for e in result.events)


def test_files_are_closed_on_error(tmp_path, tiny_model):
    """An error mid-run (here: a UI callback failing) leaves complete files with what was done so far."""
    source = tmp_path / "in.wav"
    write_input(source, seconds=0.6, rate=24000, channels=1)
    out, transcript = tmp_path / "out.wav", tmp_path / "t.txt"

    def fail_at_frame_3(event):
        if event.index == 3:
            raise RuntimeError("UI went away")

    with pytest.raises(RuntimeError, match="UI went away"):
        run_file(load_pipeline(tiny_model, seed=0), source, out, transcript, on_event=fail_at_frame_3)
    audio, _ = soundfile.read(str(out), dtype="float32")
    assert audio.shape == (4 * FRAME,)
    assert transcript.read_text().endswith("\n")


@pytest.mark.parametrize(
    "content, message",
    [(None, "audio file not found"), (b"RIFF garbage", "cannot read audio file"), (b"", "cannot read audio file"),
     ("folder", "{source} is a folder, not an audio file")],
)
def test_unreadable_input_is_a_one_line_error(tmp_path, tiny_model, capsys, content, message):
    source = tmp_path / "in.wav"
    if content == "folder":
        source.mkdir()
    elif content is not None:
        source.write_bytes(content)
    message = message.format(source=source)
    with pytest.raises(SystemExit) as e:
        cli.main(["run", str(source), "--out", str(tmp_path / "out.wav"), *tiny_model.cli_args()])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "out.wav").exists()


def test_unwritable_output_is_a_one_line_error(tmp_path, tiny_model, capsys):
    source = tmp_path / "in.wav"
    write_input(source, seconds=0.2, rate=24000, channels=1)
    with pytest.raises(SystemExit):
        cli.main(["run", str(source), "--out", str(tmp_path / "no" / "out.wav"), *tiny_model.cli_args()])
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and err.count("\n") == 1


def test_lm_that_cannot_take_mimis_codes_is_refused(tmp_path, tiny_model):
    from moshi_mlx.devtools.random_lm import tiny_config, write_random_lm

    weights, config = write_random_lm(tmp_path, tiny_config(card=64), seed=0)  # Mimi's codes reach 2047
    gen = LmGen(load_lm(weights, LmConfig.from_json(config)))
    with pytest.raises(MoshiError, match="user streams of 64 codes"):
        Pipeline(gen, load_codec(tiny_model.mimi_weights))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_ctrl_c_leaves_complete_files(tmp_path, tiny_model, signum):
    """Ctrl-C (or the terminal window closed: SIGHUP) mid-run: exit 130 with one line saying what the files hold,
    and the WAV and transcript hold the frames done so far."""
    source, out, transcript = tmp_path / "in.wav", tmp_path / "out.wav", tmp_path / "t.txt"
    write_input(source, seconds=30, rate=24000, channels=1)
    command = [sys.executable, "-m", "moshi_mlx.app.cli", "run", str(source), "--out", str(out), "--transcript",
               str(transcript), "--quiet", *tiny_model.cli_args()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size < 44 + 5 * FRAME * 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    audio, rate = soundfile.read(str(out), dtype="float32")
    assert rate == 24000 and len(audio) >= 5 * FRAME and len(audio) % FRAME == 0
    assert len(audio) < 30 * 24000 and os.path.getsize(transcript) > 0
    assert transcript.read_text().endswith("\n")
    assert process.returncode == 130, err
    said, err = err.split("\n", 1)
    assert said.startswith("Mimi codec: ")
    assert err == f"interrupted: {out} and {transcript} hold the first {len(audio) / 24000:.1f} s of 30.0 s\n"


def test_outputs_never_overwrite_the_input_or_each_other(tmp_path, tiny_model, capsys):
    source = tmp_path / "in.wav"
    write_input(source, seconds=0.2, rate=24000, channels=1)
    before = source.read_bytes()
    same = f"{tmp_path}/../{tmp_path.name}/in.wav"  # the input, spelt differently
    cases = [
        (["--out", same], f"error: --out {same} is the input file: "),
        (["--out", str(tmp_path / "o.wav"), "--transcript", str(tmp_path / "o.wav")],
         f"error: --transcript {tmp_path}/o.wav is also given to --out: "),
        (["--out", str(tmp_path)], f"error: cannot write {tmp_path}: it is a folder"),
    ]
    for options, message in cases:
        with pytest.raises(SystemExit) as e:
            cli.main(["run", str(source), *options, *tiny_model.cli_args()])
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.startswith(message) and err.count("\n") == 1, err
    assert source.read_bytes() == before and not (tmp_path / "o.wav").exists()



@pytest.mark.parametrize("model", ["tiny_model", "tiny_persona_model"])
def test_warmup_reaches_the_first_decode(model, request):
    """The warm-up runs until Moshi's first audio is decoded (step 1 for Moshi, step 2 for PersonaPlex), so the
    decoder's first call is not paid live; then the pipeline starts afresh."""
    pipeline = request.getfixturevalue(model).load_pipeline(mimi="rust")
    decoded, decode = [], pipeline.decode

    def counted(step):
        out = decode(step)
        decoded.append(out[1] is not None)
        return out

    pipeline.decode = counted
    try:
        pipeline.warmup(2)
    finally:
        pipeline.decode = decode
        pipeline.close()
    assert decoded[-1] and not any(decoded[:-1]) and pipeline.gen.step_index == 0
