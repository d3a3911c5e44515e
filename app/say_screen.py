"""`say`'s screen: the text with the word being spoken highlighted (rich, on a terminal), or nothing."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.live import Live
from rich.text import Text


class WordScreen:
    """Shows the words of the text; `at(words, frame)` marks those fed up to audio frame `frame` as spoken, the
    last of them as the one being spoken."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.console = console or Console(file=sys.stderr)
        self.enabled = enabled
        self._live: Live | None = None
        self._words: list[str] = []
        self._spoken = 0
        self._plain = not self.console.is_terminal

    def start(self, words: list[str]) -> None:
        self._words, self._spoken = words, 0
        if self.enabled and not self._plain and self._live is None:
            self._live = Live(self._render(), console=self.console, refresh_per_second=25, transient=False)
            self._live.start()

    def at(self, fed: list[tuple[str, int]], frame: int) -> None:
        """`fed`: `(word, audio frame)` of the words fed so far."""
        spoken = sum(1 for _, start in fed if start <= frame)
        if spoken == self._spoken or not self.enabled:
            return
        if self._plain:
            new = [w for w, _ in fed[self._spoken:spoken]]
            print(" ".join(new), end=" ", file=self.console.file, flush=True)
        self._spoken = spoken
        if self._live is not None:
            self._live.update(self._render())

    def done(self) -> None:
        if not self.enabled:
            return
        if self._plain:
            rest = self._words[self._spoken:]
            print(" ".join(rest), file=self.console.file, flush=True)
        self._spoken = len(self._words)
        if self._live is not None:
            self._live.update(self._render())

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _render(self) -> Text:
        text = Text()
        for i, word in enumerate(self._words):
            style = "bold reverse" if i == self._spoken - 1 else "" if i < self._spoken else "dim"
            text.append(word, style=style)
            text.append(" ")
        return text
