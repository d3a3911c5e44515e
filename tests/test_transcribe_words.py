"""`transcribe`'s parts that need no model: words and their times from tokens, ends of turn, the output formats,
atomic output files, and audio files read in blocks."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
from moshi_mlx.app.atomic import AtomicFile
from moshi_mlx.app.transcribe_formats import (
    JsonWriter,
    SrtWriter,
    TextWriter,
    TimedWordsWriter,
    VttWriter,
    clock,
)

from moshi_mlx import MoshiError, read_mono_24k
from moshi_mlx.stream.audio_file import open_audio
from moshi_mlx.stream.words import Timing, TurnDetector, Word, WordAssembler

F = 0.08
TIMING = Timing(delay_s=0.48, prefix_s=0.16)  # the tiny STT model's: at(frame) = frame * 0.08 - 0.64


def feed(script, timing=TIMING, duration=None):
    """Run (token, piece) pairs through an assembler: the decided text after each token, and the ended words."""
    words = WordAssembler(timing, duration)
    texts, ended = [], []
    for frame, (token, piece) in enumerate(script):
        update = words.add(frame, token, piece)
        texts.append(update.text)
        ended += update.words
    last = words.finish()
    return texts, ended + last.words, last.text


def script_of(*items, lead=10):
    """`lead` frames of padding, then items: 0 (end of padding), 3 (padding) or a piece (its token 100)."""
    pairs = [(3, None)] * lead
    for item in items:
        pairs.append((item, None) if isinstance(item, int) else (100, item))
    return pairs


def test_a_word_lies_between_the_end_of_padding_tokens_around_it():
    # frames: 10 is 0, 11-12 " Hel" "lo", 13-14 padding, 15 is 0, 16 " world", 17 ",", 18 is 0
    texts, words, _ = feed(script_of(0, " Hel", "lo", 3, 3, 0, " world", ",", 0, 3, 3))
    assert [w.text for w in words] == ["Hello", "world,"]
    assert words[0] == Word("Hello", pytest.approx(11 * F - 0.64), pytest.approx(15 * F - 0.64))
    assert words[1].start == pytest.approx(16 * F - 0.64) and words[1].end == pytest.approx(18 * F - 0.64)
    # The text of a word is decided when a token that cannot continue it comes, its end at the next 0.
    assert texts[11] == "" and texts[12] == "" and texts[13] == " Hello"
    assert texts[17] == "" and texts[18] == " world,"
    assert "".join(texts) == " Hello world,"


def test_a_word_with_no_end_of_padding_before_it_ends_the_one_before():
    _, words, _ = feed(script_of(0, " a", " b", 3, 0))
    assert words[0].text == "a" and words[1].text == "b"
    assert words[0].end == pytest.approx(words[1].start) == pytest.approx(12 * F - 0.64)
    assert words[1].end == pytest.approx(14 * F - 0.64)


def test_padding_does_not_end_a_word_and_pieces_without_a_space_continue_it():
    texts, words, _ = feed(script_of(0, " Hel", 3, 3, "lo", 0))
    assert [w.text for w in words] == ["Hello"]
    assert "".join(texts) == " Hello" and texts[12] == " Hel"  # shown at the padding; "lo" glued on after


def test_a_piece_without_a_space_after_an_end_of_padding_is_a_word_shown_glued_on():
    texts, words, _ = feed(script_of(0, " you", 0, ":", 0))
    assert "".join(texts) == " you:"  # as run_inference prints it
    assert [w.text for w in words] == ["you", ":"] and words[1].start == pytest.approx(13 * F - 0.64)


def test_the_last_word_ends_a_second_after_its_start_or_at_the_end_of_the_audio():
    _, words, pending = feed(script_of(0, " end") + [(3, None)] * 40)
    assert pending == ""
    assert words[-1].end - words[-1].start == pytest.approx(1.0)
    _, words, _ = feed(script_of(0, " end") + [(3, None)] * 40, duration=0.5)
    assert words[-1].start <= words[-1].end == pytest.approx(0.5)


def test_times_are_clamped_to_the_input():
    # A word of the prefix would start before 0; a word of the flush would end after the audio.
    _, words, _ = feed(script_of(0, " early", 0, lead=0) + script_of(0, " late", 0, lead=60), duration=3.0)
    assert words[0].start == 0.0 and words[0].end == 0.0
    assert words[1].start == 3.0 and words[1].end == 3.0


def test_end_of_turn_fires_on_a_rising_edge_and_shows_after_the_delay():
    turns = TurnDetector(TIMING)
    heads = lambda p: np.array([[0.5] * 6, [0.5] * 6, [p, 1 - p, 0, 0, 0, 0]])  # noqa: E731
    shown = {}
    probabilities = [0.9] * 5 + [0.1] * 10 + [0.8] * 10 + [0.2] * 5 + [0.7] * 10
    for frame, p in enumerate(probabilities):
        turns.update(frame, heads(p))
        if due := turns.due(frame):
            shown[frame] = due
    # The silence before speech (high from the start) does not fire; each rise after speech does, 6 frames later
    # (the 0.48 s delay), timed at what had been heard when it fired.
    assert list(shown) == [15 + 6, 30 + 6]
    assert shown[21] == [pytest.approx(16 * F - 0.16)] and shown[36] == [pytest.approx(31 * F - 0.16)]
    assert turns.flush() == []


WORDS = [Word("Hello", 0.5, 0.9), Word("there.", 0.9, 1.4), Word("How", 3.0, 3.2), Word("are", 3.2, 3.4),
         Word("you?", 3.4, 3.9)]


def run_writer(writer, words=WORDS, turn_at=None):
    for w in words:
        if turn_at is not None and w.start >= turn_at:
            writer.end_of_turn(turn_at)
            turn_at = None
        writer.text(" " + w.text)
        writer.word(w)
    writer.close()


def test_srt_cues_split_at_sentences_pauses_and_width(tmp_path):
    path = tmp_path / "a.srt"
    with path.open("w") as f:
        run_writer(SrtWriter(f), WORDS + [Word(f"word{i}", 4 + 0.3 * i, 4.2 + 0.3 * i) for i in range(20)])
    blocks = path.read_text().strip().split("\n\n")
    assert blocks[0] == "1\n00:00:00,500 --> 00:00:01,400\nHello there."
    assert blocks[1] == "2\n00:00:03,000 --> 00:00:03,900\nHow are you?"
    for block in blocks[2:]:
        index, times, *lines = block.split("\n")
        assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", times)
        assert 1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines)
    assert [int(b.split("\n")[0]) for b in blocks] == list(range(1, len(blocks) + 1))


def test_vtt_has_its_header_and_dotted_times(tmp_path):
    path = tmp_path / "a.vtt"
    with path.open("w") as f:
        run_writer(VttWriter(f))
    text = path.read_text()
    assert text.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.400\nHello there.\n\n")


def test_an_end_of_turn_ends_a_cue_before_the_first_word_after_it(tmp_path):
    path = tmp_path / "a.srt"
    words = [Word("one", 0.1, 0.3), Word("two", 0.3, 0.6), Word("three", 0.7, 0.9)]
    with path.open("w") as f:
        run_writer(SrtWriter(f), words, turn_at=0.65)
    assert [b.split("\n")[2] for b in path.read_text().strip().split("\n\n")] == ["one two", "three"]
    # The marker comes the model's delay late, after words that follow it; two may be pending at once.
    with path.open("w") as f:
        writer = SrtWriter(f)
        for w in words + [Word("four", 1.0, 1.2)]:
            writer.word(w)
            if w.text == "one":
                writer.end_of_turn(0.2)
                writer.end_of_turn(0.65)
        writer.close()
    assert [b.split("\n")[2] for b in path.read_text().strip().split("\n\n")] == ["one", "two", "three four"]


def test_json_is_one_object_with_every_word(tmp_path):
    path = tmp_path / "a.json"
    with path.open("w") as f:
        w = JsonWriter(f, {"source": "in.wav", "audio_delay_s": 0.5})
        for word in WORDS:
            w.text(" " + word.text)
            w.word(word)
        w.end_of_turn(1.5)
        w.close(complete=False)
    data = json.loads(path.read_text())
    assert data["source"] == "in.wav" and data["complete"] is False and data["end_of_turn"] == [1.5]
    assert data["words"][0] == {"text": "Hello", "start": 0.5, "end": 0.9}
    assert data["text"] == "Hello there. How are you?"


def test_text_and_timed_words(tmp_path):
    path = tmp_path / "a.txt"
    with path.open("w") as f:
        run_writer(TextWriter(f), turn_at=2.0)
    assert path.read_text() == "Hello there. [end of turn]\nHow are you?\n"
    with path.open("w") as f:
        run_writer(TimedWordsWriter(f), turn_at=2.0)
    lines = path.read_text().splitlines()
    assert lines[0].split() == ["0.50", "0.90", "Hello"] and "[end of turn]" in lines[2] and len(lines) == 6


def test_clock():
    assert clock(3723.4567) == "01:02:03.457" and clock(61.0016, ",") == "00:01:01,002" and clock(-1) == "00:00:00.000"


def test_atomic_file_replaces_only_on_commit(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("earlier\n")
    os.chmod(target, 0o640)
    out = AtomicFile(target)
    out.file.write("new\n")
    assert target.read_text() == "earlier\n"
    out.commit()
    assert target.read_text() == "new\n" and (target.stat().st_mode & 0o777) == 0o640
    out = AtomicFile(target)
    out.file.write("lost\n")
    out.discard()
    assert target.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_file_in_a_folder_it_cannot_write(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # root writes anywhere; /proc takes no new files from anyone
        folder = Path("/proc")
    try:
        with pytest.raises(MoshiError, match="cannot write .*cannot create a file in"):
            AtomicFile(folder / "out.txt")
    finally:
        (tmp_path / "ro").chmod(0o700)


@pytest.mark.parametrize("rate, channels", [(24000, 1), (44100, 2), (16000, 1)])
def test_audio_read_in_blocks_is_read_mono_24k(tmp_path, rate, channels):
    t = np.arange(int(2.3 * rate)) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * (k + 1) * t) for k in range(channels)], axis=1)
    path = tmp_path / "in.wav"
    soundfile.write(str(path), audio.astype(np.float32), rate, subtype="FLOAT")
    whole = read_mono_24k(path)
    blocks = list(open_audio(path).mono_24k(block_s=0.37))
    streamed = np.concatenate(blocks)
    assert len(blocks) > 3 and abs(len(streamed) - len(whole)) <= 1
    n = min(len(whole), len(streamed))
    if rate == 24000:
        assert np.array_equal(streamed, whole)
    else:  # the streaming resampler's filter state crosses blocks: the same signal, not the same bits
        assert np.max(np.abs(streamed[100 : n - 100] - whole[100 : n - 100])) < 1e-3


def test_audio_files_that_cannot_be_read(tmp_path):
    with pytest.raises(MoshiError, match="audio file not found"):
        open_audio(tmp_path / "none.wav")
    with pytest.raises(MoshiError, match="is a folder"):
        open_audio(tmp_path)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    with pytest.raises(MoshiError, match="cannot read audio file"):
        open_audio(tmp_path / "junk.wav")
    soundfile.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 24000)
    with pytest.raises(MoshiError, match="is empty"):
        open_audio(tmp_path / "empty.wav")
    audio = np.zeros(48000, np.float32)
    audio[30000] = np.nan
    soundfile.write(str(tmp_path / "nan.wav"), audio, 24000, subtype="FLOAT")
    with pytest.raises(MoshiError, match=r"damaged: 1 samples are NaN or infinite from 1\.25 s"):
        list(open_audio(tmp_path / "nan.wav").mono_24k(block_s=0.5))
