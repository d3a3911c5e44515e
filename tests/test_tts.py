"""The TTS pieces: config checks, the state machine's rules, voices, and `moshi-mlx say` on a tiny random model."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile
from moshi_mlx.app import cli

from moshi_mlx import MoshiError
from moshi_mlx.devtools.tiny_tts import MODEL_ID, VOICE_NAME, tiny_tts_config, write_tiny_tts, write_voice
from moshi_mlx.model.config import LmConfig
from moshi_mlx.tts.script import Entry, TokenIds, script_to_entries
from moshi_mlx.tts.state_machine import StateMachine
from moshi_mlx.tts.voices import find_voice, load_voice, voice_suffix

IDS = TokenIds(card=65)


@pytest.fixture(scope="module")
def tiny_tts(tmp_path_factory, mimi_weights):
    return write_tiny_tts(tmp_path_factory.mktemp("tiny_tts"), mimi_weights)


# --- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"fuser": {"sum": [], "cross": ["speaker_wavs"], "prepend": ["cfg"]}}, "prepend is not supported"),
    ({"fuser": {"sum": ["nope"], "cross": ["speaker_wavs"]}}, "fuser sum ['nope']"),
    ({"cross_attention": False}, "fuser cross needs cross_attention true"),
    ({"conditioners": {"x": {"type": "t5"}}}, "conditioner x: type 't5'"),
])
def test_bad_conditioning_configs_are_one_line(change, message):
    d = tiny_tts_config().to_dict() | change
    with pytest.raises(MoshiError, match="invalid model config") as e:
        LmConfig.from_dict(d)
    assert message in str(e.value) and "\n" not in str(e.value)


# --- state machine --------------------------------------------------------------------------------------------


def test_script_entries_turns_and_breaks():
    encode = {"Hi": [10], "there": [11, 12], "Bye": [13]}.__getitem__
    entries = script_to_entries(encode, IDS, ['Hi <break time="0.5s"/> there', "Bye"], padding_between=1)
    assert entries == [Entry((1, 10), "Hi", 2), Entry((), "", 6), Entry((11, 12), "there", 2),
                       Entry((2, 13), "Bye", 2)]


def test_machine_pads_first_then_feeds_words_and_ends():
    machine = StateMachine(IDS, max_padding=3, initial_padding=2)
    state = machine.new_state([Entry((10, 11), "ab"), Entry((12,), "c")])
    # Initial padding: the model's new_word is refused twice.
    assert [machine.process(t, state, IDS.new_word) for t in range(2)] == [IDS.pad, IDS.pad]
    assert machine.process(2, state, IDS.new_word) == IDS.new_word  # the first word is taken
    assert machine.process(3, state, 7) == 10  # anything else is pad: the queued tokens are fed
    assert machine.process(4, state, IDS.new_word) == 11  # refused while tokens are queued
    assert machine.process(5, state, IDS.pad) == IDS.pad  # each step fed counts against the allowance (3)
    assert machine.process(6, state, IDS.pad) == IDS.new_word  # the allowance is spent: the next word
    assert state.transcript == [("ab", 2), ("c", 6)]
    machine.process(7, state, IDS.pad)
    for t in range(8, 12):
        machine.process(t, state, IDS.new_word)
    assert state.end_step == 8


def test_second_stream_multiplexes_the_word_ahead():
    machine = StateMachine(IDS, second_stream_ahead=1, initial_padding=0)
    state = machine.new_state([Entry((10,), "a"), Entry((20, 21), "b")])
    # new_word moves to the second stream, the word's first token is fed at once on the first.
    assert machine.process(0, state, IDS.new_word) == (IDS.new_word + 1) * IDS.card + 10
    assert machine.process(1, state, IDS.pad) == (20 + 1) * IDS.card + IDS.pad
    assert machine.process(2, state, IDS.pad) == (21 + 1) * IDS.card + IDS.pad
    assert machine.process(3, state, IDS.pad) == 0 * IDS.card + IDS.pad


def test_branches_leave_the_state_alone():
    machine = StateMachine(IDS, second_stream_ahead=2)
    state = machine.new_state([Entry((10,), "a"), Entry((20,), "b"), Entry((30,), "c")])
    for t in range(3):
        pad, word = machine.branches(t, state)
        before = (state.next_entry, list(state.queued), state.remaining_padding, state.forced_padding)
        assert machine.process(t, state.fork(), IDS.pad) == pad
        assert (state.next_entry, list(state.queued), state.remaining_padding, state.forced_padding) == before
        assert machine.process(t, state, IDS.new_word) == word


# --- voices ---------------------------------------------------------------------------------------------------


def test_voice_files_are_checked(tmp_path):
    good = write_voice(tmp_path / "v.safetensors", dim=16)
    assert load_voice(good, MODEL_ID, 16).shape == (1, 16, 10)
    other = write_voice(tmp_path / "o.safetensors", dim=16, model_id={"sig": "ffffffff", "epoch": 3})
    with pytest.raises(MoshiError, match="made for model ffffffff@3, not this one"):
        load_voice(other, MODEL_ID, 16)
    with pytest.raises(MoshiError, match="16-wide embeddings, this model takes 512"):
        load_voice(good, MODEL_ID, 512)
    mx.save_safetensors(str(tmp_path / "x.safetensors"), {"w": mx.zeros((2,))})
    with pytest.raises(MoshiError, match="not a voice file"):
        load_voice(tmp_path / "x.safetensors", MODEL_ID, 16)
    with pytest.raises(MoshiError, match="voice file not found"):
        find_voice(str(tmp_path / "missing.safetensors"), MODEL_ID)
    assert voice_suffix({"sig": "1e68beda", "epoch": 240}) == ".1e68beda@240.safetensors"


def test_voice_by_name_comes_from_the_cache(tmp_path, monkeypatch):
    seen = {}

    def fetch(repo, filename, *args, **kwargs):
        seen["file"] = (repo, filename)
        return tmp_path / filename

    monkeypatch.setattr("moshi_mlx.tts.voices.fetch", fetch)
    find_voice("expresso/ex03", {"sig": "1e68beda", "epoch": 240})
    assert seen["file"] == ("kyutai/tts-voices", "expresso/ex03.1e68beda@240.safetensors")


def test_voice_offline_is_one_line(monkeypatch):
    def fetch(repo, filename, *args, **kwargs):
        raise MoshiError(f"{filename} of {repo} is not in the Hugging Face cache and cannot be downloaded now (...)")

    monkeypatch.setattr("moshi_mlx.tts.voices.fetch", fetch)
    with pytest.raises(MoshiError, match="use it once while online, or give a voice file"):
        find_voice("expresso/ex03", {"sig": "1e68beda", "epoch": 240})


# --- say ------------------------------------------------------------------------------------------------------


def say(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(["say", *argv])
        raise SystemExit(0)
    return e.value.code, capsys.readouterr().err


def test_say_writes_speech_and_words(tiny_tts, tmp_path, capsys):
    out = tmp_path / "out.wav"
    code, err = say(capsys, "Hello there, how are you?", "-o", str(out), "--no-play", "--seed", "1", "--verbose",
                    "--mimi", "rust", *tiny_tts.cli_args())
    assert code == 0, err
    audio, rate = soundfile.read(out)
    assert rate == 24000 and len(audio) % 1920 == 0 and len(audio) >= 1920 * 5
    assert "Hello" in err and "time to first audio" in err
    again = tmp_path / "again.wav"
    assert say(capsys, "Hello there, how are you?", "-o", str(again), "--no-play", "--seed", "1",
               "--mimi", "rust", *tiny_tts.cli_args())[0] == 0
    np.testing.assert_array_equal(soundfile.read(again)[0], audio)


@pytest.mark.parametrize("argv, message", [
    (["  ", "-o", "OUT", "--no-play"], "nothing to say"),
    (["Hi", "-o", "OUT", "--no-play", "--voice", "nope.safetensors"], "voice file not found"),
    (["Hi", "--no-play"], "--no-play needs -o"),
    (["\U0001F600", "-o", "OUT", "--no-play"], "cannot encode"),
    (["Hi", "--file", "text.txt", "-o", "OUT", "--no-play"], "not both"),
])
def test_say_bad_input_is_one_line(tiny_tts, tmp_path, capsys, argv, message):
    (tmp_path / "text.txt").write_text("Hello.")
    model = tiny_tts.cli_args()
    if "--voice" in argv:  # the case's voice replaces the model's
        i = model.index("--voice")
        del model[i:i + 2]
    argv = [str(tmp_path / "o.wav") if a == "OUT" else str(tmp_path / a) if a == "text.txt" else a for a in argv]
    code, err = say(capsys, *argv, *model)
    assert code != 0 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.wav").exists()


def test_say_refuses_a_voice_for_another_model(tiny_tts, tmp_path, capsys):
    other = write_voice(tmp_path / f"{VOICE_NAME}.safetensors", model_id={"sig": "ffffffff", "epoch": 2})
    args = tiny_tts.cli_args()
    args[args.index("--voice") + 1] = str(other)
    code, err = say(capsys, "Hi", "-o", str(tmp_path / "o.wav"), "--no-play", *args)
    assert code == 1 and "use a voice for this model" in err and err.count("\n") <= 2, err


def test_say_refuses_a_moshi_model(tiny_model, tmp_path, capsys):
    code, err = say(capsys, "Hi", "-o", str(tmp_path / "o.wav"), "--no-play", *tiny_model.cli_args())
    assert code == 1 and "not a text-to-speech model" in err, err


def test_say_writes_nothing_over_an_input(tiny_tts, capsys):
    code, err = say(capsys, "Hi", "-o", str(tiny_tts.voice), "--no-play", *tiny_tts.cli_args())
    assert code != 0 and "give another file name" in err
    assert Path(tiny_tts.voice).stat().st_size > 0


def test_say_reads_stdin_a_line_at_a_time(tiny_tts, tmp_path, capsys, monkeypatch):
    import io

    class Lines(io.StringIO):
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", Lines("Hello there.\n\nHow are you?\n"))
    out = tmp_path / "out.wav"
    code, err = say(capsys, "-o", str(out), "--no-play", "--seed", "0", "--mimi", "rust", *tiny_tts.cli_args())
    assert code == 0, err
    assert "Hello" in err and "How" in err
    assert len(soundfile.read(out)[0]) >= 2 * 5 * 1920  # two generations, one after the other


def test_say_dialogue_and_quantized(tiny_tts, tmp_path, capsys):
    second = write_voice(tmp_path / f"second{voice_suffix(MODEL_ID)}", seed=3)
    args = [*tiny_tts.cli_args(), "--voice", str(second), "-q", "8"]
    out = tmp_path / "dialogue.wav"
    text = _text(tmp_path, "Hello there, how are you?\nI am fine, thank you.\n")  # one turn per line
    code, err = say(capsys, "--file", str(text), "-o", str(out), "--no-play", "--seed", "0", "--mimi", "rust", *args)
    assert code == 0, err
    assert len(soundfile.read(out)[0]) > 0


def _text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dialogue.txt"
    path.write_text(text)
    return path
