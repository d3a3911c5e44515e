"""The chat screen's parts without audio: transcript lines, lag markers, status, plain lines, memory choice."""

import io
import re

import pytest
from moshi_mlx.app.memory import check_fits, choose_quant
from moshi_mlx.app.transcript import Transcript
from moshi_mlx.app.ui import ChatView, PlainOutput, decibels
from rich.console import Console

from moshi_mlx import MoshiError
from moshi_mlx.stream.pipeline import FrameEvent


def event(index, text=None, dropped=0, underruns=0, backlog=0, encode=40.0, lm=20.0, decode=40.0, level=0.1):
    return FrameEvent(index=index, text_token=3 if text is None else 10, text=text, encode_ms=encode, lm_ms=lm,
                      decode_ms=decode, input_level=level, output_level=level / 2, backlog=backlog,
                      dropped=dropped, underruns=underruns)


def test_transcript_lines_end_at_sentences_pauses_and_length(tmp_path):
    path = tmp_path / "t.txt"
    t = Transcript(path, pause_s=1.0, max_chars=20)
    pieces = [(0.0, " Hello"), (0.08, " there"), (0.16, "."), (0.4, " How"), (0.48, " are"), (0.56, None),
              (1.6, None), (2.0, " aaaaaaaaaaaaaaaaaaaaaa"), (2.08, " b")] + [(3.0, "c")] * 45
    for seconds, piece in pieces:
        t.add(seconds, piece)
    t.close()
    assert path.read_text().splitlines() == [
        "[00:00.0] Hello there.",
        "[00:00.4] How are",  # a pause of a second
        "[00:02.0] aaaaaaaaaaaaaaaaaaaaaa",  # long enough: the next word starts a line
        "[00:02.1] b" + "c" * 39,  # no spaces: cut at twice the length
        "[00:03.0] " + "c" * 6,
    ]


def test_transcript_timestamps_past_a_minute():
    t = Transcript()
    t.add(83.44, " late")
    assert t.finish().format() == "[01:23.4] late"


def test_unwritable_transcript_is_a_one_line_error(tmp_path):
    with pytest.raises(MoshiError, match="cannot write transcript"):
        Transcript(tmp_path / "no" / "such" / "dir" / "t.txt")


def screen(view, width=80, height=12):
    console = Console(width=width, height=height, record=True, force_terminal=True, color_system=None)
    console.print(view.render(console))
    return console.export_text()


def test_screen_shows_words_levels_and_status():
    view = ChatView("moshiko q4", Transcript())
    for i, piece in enumerate([" Hi", None, " there", ",", " friend"]):
        view.on_event(event(i, piece, backlog=1, underruns=2))
    text = screen(view, width=150)
    assert "00:00 Hi there, friend" in text
    assert re.search(r"you █+·* +-20 dB {3}moshi █+·* +-26 dB", text)
    status = " ".join(text.split())
    assert "moshiko q4 | encode 40 · lm 20 · decode 40 ms | RTF 1.25 | backlog 1 | drops 0 | underruns 2 |" in status
    # Narrow: the status wraps between fields, each line ending with the separator.
    narrow = [line.rstrip() for line in screen(view, width=40).splitlines()[-4:]]
    assert narrow == ["moshiko q4 |", "encode 40 · lm 20 · decode 40 ms |", "RTF 1.25 | backlog 1 | drops 0 |",
                      "underruns 2 | 00:00"]


def test_lag_is_one_marker_per_episode_kept_at_the_end():
    view = ChatView("m", Transcript())
    view.on_event(event(0, " one"))
    view.on_event(event(1, None, dropped=2))
    view.on_event(event(2, " two", dropped=3))
    view.on_event(event(3, None, dropped=5))
    text = " ".join(screen(view).split())
    assert "00:00 one two lag: skipped 0.40 s" in text
    assert text.count("lag:") == 1
    view._lag_time -= 10  # a later episode gets its own marker
    view.on_event(event(4, " three", dropped=6))
    text = " ".join(screen(view).split())
    assert "two lag: skipped 0.40 s lag: skipped 0.08 s three" in text


def test_screen_keeps_the_latest_words_that_fit():
    view = ChatView("m", Transcript(max_chars=30))
    for i in range(200):
        view.on_event(event(i, f" w{i}"))
    text = screen(view, width=40, height=10)
    assert "w199" in text and "w0 " not in text
    assert len(text.rstrip("\n").splitlines()) <= 10


def test_plain_output_prints_lines_lag_and_status():
    view = ChatView("moshiko q8", Transcript())
    out = io.StringIO()
    plain = PlainOutput(view, out, status_every_s=0.0, lag_every_s=60.0)
    view.on_event(event(0, " Hello"))
    view.on_event(event(1, "!", dropped=3))
    plain.update()
    view.on_event(event(2, None, dropped=4))  # reported with the next lag line, a minute later
    plain.update()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[00:00.0] Hello!"
    assert re.fullmatch(r"\[00:00\] lag: skipped 0\.24 s of your audio to keep up \(frame 100 ms > 80 ms\)", lines[1])
    assert lines[2].startswith("[00:00] status: moshiko q8 | encode 40 · lm 20 · decode 40 ms | RTF 1.25 |")
    assert "\x1b" not in out.getvalue() and sum("lag:" in line for line in lines) == 1


def test_decibels():
    assert decibels(1.0) == 0.0 and decibels(0.0) == -60.0 and round(decibels(0.1)) == -20


@pytest.mark.parametrize(("gib", "quant"), [(8, "q4"), (11, "q4"), (16, "q8"), (128, "q8")])
def test_quantization_from_memory(gib, quant):
    chosen, why = choose_quant(gib)
    assert chosen == quant and why.startswith(f"{quant}: {gib} GiB of memory fits") and "\n" not in why


def test_not_enough_memory():
    with pytest.raises(MoshiError, match=r"not enough memory: Moshi q4 needs about 8\.0 GiB .* has 4\.0 GiB"):
        choose_quant(4)
    with pytest.raises(MoshiError, match=r"not enough memory for Moshi bf16: .*17\.8 GiB.* 16\.0 GiB; use -q 8"):
        check_fits("bf16", total_gib=16)
    check_fits("bf16", total_gib=18)
