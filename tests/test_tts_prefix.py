"""Voices given as a recording (Kyutai's models without speaker embeddings, `tts-0.75b-en-public`): the prefix's
codes, what `say` plays (the recording cut, as Kyutai's run_tts cuts it), and the one-line errors. Parity of the
generation itself with Kyutai's `TTSModel.generate(prefixes=...)` is in tests/test_tts_parity.py (`prefix`)."""

from pathlib import Path

import numpy as np
import pytest
import soundfile
from moshi_mlx.app import cli

from moshi_mlx import MoshiError
from moshi_mlx.codec import load_codec, rustymimi_installed
from moshi_mlx.devtools.tiny_tts import write_recording, write_tiny_tts, write_voice
from moshi_mlx.model.config import LmConfig
from moshi_mlx.tts.model import TtsModel
from moshi_mlx.tts.prefix import UNGENERATED, encode_prefix, forced_audio, load_prefix
from moshi_mlx.tts.speak import synthesize
from moshi_mlx.tts.voices import find_voice


@pytest.fixture(scope="module")
def prefix_tts(tmp_path_factory, mimi_weights):
    return write_tiny_tts(tmp_path_factory.mktemp("prefix_tts"), mimi_weights, prefix_voice=True)


def test_forced_audio_follows_the_delays():
    codes = np.arange(12).reshape(3, 4)  # 3 codebooks, 4 frames
    delays, delay_steps = [0, 2, 2], 1
    assert forced_audio(codes, 0, delays, delay_steps).tolist() == [UNGENERATED] * 3
    assert forced_audio(codes, 1, delays, delay_steps).tolist() == [0, UNGENERATED, UNGENERATED]
    assert forced_audio(codes, 3, delays, delay_steps).tolist() == [2, 4, 8]
    assert forced_audio(codes, 6, delays, delay_steps).tolist() == [UNGENERATED, 7, 11]
    assert forced_audio(codes, 7, delays, delay_steps).tolist() == [UNGENERATED] * 3


class _Counter:
    """A codec stand-in: frame t encodes to [t, t + 100, ...]."""

    def __init__(self):
        self.t = 0

    def encode(self, frame):
        self.t += 1
        return np.array([self.t - 1 + 100 * k for k in range(4)])


def test_prefix_drops_the_last_two_frames_and_short_recordings_are_one_line():
    codes = encode_prefix(np.zeros(1920 * 7, np.float32), _Counter(), n_q=3)
    assert codes.tolist() == [[0, 1, 2, 3, 4], [100, 101, 102, 103, 104], [200, 201, 202, 203, 204]]
    with pytest.raises(MoshiError, match="too short"):
        encode_prefix(np.zeros(1920 * 2, np.float32), _Counter(), n_q=3)
    with pytest.raises(MoshiError, match="codec gives 4 codebooks, the model needs 8"):
        encode_prefix(np.zeros(1920 * 4, np.float32), _Counter(), n_q=8)


def test_voices_that_do_not_fit_the_model_are_one_line(tmp_path):
    embedding = write_voice(tmp_path / "v.safetensors")
    with pytest.raises(MoshiError, match="clones a voice from a recording") as e:
        find_voice(str(embedding), None, audio=True)
    assert "\n" not in str(e.value)
    recording = write_recording(tmp_path / "r.wav")
    with pytest.raises(MoshiError, match="is a recording, but this model takes speaker embeddings"):
        find_voice(str(recording), {"sig": "0123abcd", "epoch": 1})
    assert find_voice(str(recording), None, audio=True) == recording


def test_voice_recording_by_name_has_no_suffix(tmp_path, monkeypatch):
    seen = {}

    def fetch(repo, filename, *args, **kwargs):
        seen["file"] = (repo, filename)
        return tmp_path / filename

    monkeypatch.setattr("moshi_mlx.tts.voices.fetch", fetch)
    find_voice("expresso/ex03-ex01_happy_001_channel1_334s.wav", {"sig": "d6ef30c7", "epoch": 1000}, audio=True)
    assert seen["file"] == ("kyutai/tts-voices", "expresso/ex03-ex01_happy_001_channel1_334s.wav")


def test_synthesize_cuts_the_recording_as_kyutai_does(prefix_tts, mimi_weights):
    """The frames played are the generation's frames after the prefix's, decoded in one stream from the start,
    and the words' frames are counted from the end of the recording."""
    import sentencepiece

    backend = "rust" if rustymimi_installed() else "mlx"
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(prefix_tts.tokenizer))
    model = TtsModel.load(prefix_tts.moshi_weights, LmConfig.from_json(prefix_tts.config), tokenizer)
    assert not model.multi_speaker
    codec = load_codec(mimi_weights, backend, num_codebooks=model.config.n_q)
    try:
        prefix = load_prefix(prefix_tts.voice, codec, model.config.n_q)
        assert prefix.shape == (model.config.n_q, 12 - 2)  # 1 s is 12.5 frames: 12 whole, the last two dropped
        conditions, coef = model.conditions([], 2.0)
        entries = model.entries(["Hello there."])
        spoken = list(synthesize(model.generator(coef, temp=0.0), codec, entries, conditions, prefix=prefix))
        gen = model.generator(coef, temp=0.0)
        result = gen.generate(entries, conditions, prefix=prefix)
        codec.reset()
        pcm = [codec.decode(f[1:]) for f in result.frames[gen.delay_steps:]]
    finally:
        codec.close()
    prefix_steps = prefix.shape[1]
    assert len(spoken) == len(pcm) - prefix_steps
    np.testing.assert_array_equal(np.concatenate([s.pcm for s in spoken]), np.concatenate(pcm[prefix_steps:]))
    assert spoken[-1].words == [(w, s - prefix_steps) for w, s in result.transcript]
    assert result.logged_text_tokens[:prefix_steps] == [(t, -1) for t, _ in result.logged_text_tokens[:prefix_steps]]


def say(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(["say", *argv])
        raise SystemExit(0)
    return e.value.code, capsys.readouterr().err


def test_say_with_a_recording(prefix_tts, tmp_path, capsys):
    out = tmp_path / "out.wav"
    code, err = say(capsys, "Hello there.", "-o", str(out), "--no-play", "--seed", "1", "--mimi", "rust",
                    *prefix_tts.cli_args())
    assert code == 0, err
    audio, rate = soundfile.read(out)
    assert rate == 24000 and len(audio) % 1920 == 0 and len(audio) > 0


@pytest.mark.parametrize("voices, message", [
    (["EMB"], "clones a voice from a recording"),
    (["REC", "REC"], "give --voice once"),
    (["missing.wav"], "unknown voice"),
])
def test_say_voice_errors_are_one_line(prefix_tts, tmp_path, capsys, monkeypatch, voices, message):
    def fetch(repo, filename, *args, **kwargs):
        raise MoshiError(f"{repo} has no file {filename}")

    monkeypatch.setattr("moshi_mlx.tts.voices.fetch", fetch)
    emb = write_voice(tmp_path / "emb.safetensors")
    args = prefix_tts.cli_args()
    i = args.index("--voice")
    del args[i:i + 2]
    for v in voices:
        args += ["--voice", {"EMB": str(emb), "REC": str(prefix_tts.voice)}.get(v, v)]
    code, err = say(capsys, "Hi", "-o", str(tmp_path / "o.wav"), "--no-play", *args)
    assert code != 0 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.wav").exists()


def test_say_writes_nothing_over_the_recording(prefix_tts, capsys):
    size = Path(prefix_tts.voice).stat().st_size
    code, err = say(capsys, "Hi", "-o", str(prefix_tts.voice), "--no-play", *prefix_tts.cli_args())
    assert code != 0 and "give another file name" in err
    assert Path(prefix_tts.voice).stat().st_size == size
