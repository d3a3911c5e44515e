"""Text to the TTS state machine's entries: one per word, with speaker turns and `<break time="Xs"/>` pauses.

The same rules as Kyutai's `script_to_entries` (moshi 0.2.13, `moshi/models/tts.py`): a script is a list of
turns starting with the main speaker; `’` becomes `'`, `:` a space, parentheses are dropped; words are split on
whitespace and each is tokenized on its own; the first word of a turn starts with the speaker's token when the
model knows several speakers and the speaker changed; a break is an entry without tokens whose padding is the
pause in frames.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

FRAME_RATE = 12.5
_EVENT = re.compile(r"(?:<break\s+time=\"([0-9]+(?:.[0-9]*)?)s\"\s*/?>)|(?:\s+)")


@dataclass(frozen=True)
class TokenIds:
    """The text stream's special values; `card` is the text cardinality plus one (the multiplexing base)."""

    card: int
    new_word: int = 0
    pad: int = 3
    main: int = 1
    other: int = 2
    zero: int = -1
    ungenerated: int = -2


@dataclass(frozen=True)
class Entry:
    """One word (its tokens and text), or a pause (no tokens); `padding`: steps the model must pad after it."""

    tokens: tuple[int, ...]
    text: str
    padding: int = 0


def script_to_entries(
    encode: Callable[[str], list[int]],
    token_ids: TokenIds,
    turns: Sequence[str],
    multi_speaker: bool = True,
    padding_between: int = 0,
    frame_rate: float = FRAME_RATE,
) -> list[Entry]:
    """The entries of `turns` (the first is the main speaker's; an empty first turn starts with the other one).

    `encode` is the text tokenizer (a word to its ids); `padding_between` forces that many steps of padding
    between words, plus one per extra token of a word, as Kyutai's `padding_between` does.
    """
    speakers = (token_ids.main, token_ids.other)
    entries: list[Entry] = []
    last_speaker: int | None = None
    for index, line in enumerate(turns):
        first = True
        for word, pause in _split(line):
            if word:
                tokens = list(encode(word))
                speaker = index % len(speakers)
                if first and multi_speaker and last_speaker != speaker:
                    last_speaker = speaker
                    tokens.insert(0, speakers[speaker])
                first = False
                padding = max(0, padding_between + len(tokens) - 1) if padding_between > 0 else 0
                entries.append(Entry(tuple(tokens), word, padding))
            if pause is not None:
                entries.append(Entry((), "", int(round(pause * frame_rate))))
    return entries


def _split(line: str) -> list[tuple[str, float | None]]:
    """The words of a line in order, each with the pause (seconds) of a break tag right after it, if any."""
    line = line.replace("’", "'").replace(":", " ").replace("(", "").replace(")", "")
    out: list[tuple[str, float | None]] = []
    while line:
        match = _EVENT.search(line)
        if match is None:
            break
        word, line = line[: match.start()], line[match.end():]
        out.append((word, float(match.group(1)) if match.group(1) else None))
    if line:
        out.append((line, None))
    return out
