"""The DSM TTS state machine: the model's text stream says when the next word starts; the machine feeds it.

Semantics of Kyutai's `StateMachine.process` (moshi 0.2.13, `moshi/models/tts.py`). At each step the model
samples a text token; anything but `new_word` counts as `pad`. The machine overrides it: while a word's tokens
are still queued, or forced padding remains, it is `pad`; once the padding allowance is spent, `new_word`.
On `new_word` the next entry is taken: its tokens are queued (and, for models with a second text stream, those
of the word `second_stream_ahead` entries later go to the look-ahead queue); a pause entry forces padding; with
no entry left the end is reached. The token fed back is the next queued token, or `pad`; on models with a
second stream, `new_word` moves to that stream and both are multiplexed as `(second + 1) * card + first`.

`branches` gives the token fed back for either outcome of the sampling without changing the state, so that the
device can choose between them and the host learns the outcome once per frame.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .script import Entry, TokenIds


@dataclass
class State:
    """Where a generation stands; `transcript` holds `(word, step)` for each word as it is fed."""

    entries: list[Entry]
    remaining_padding: int
    forced_padding: int
    next_entry: int = 0
    queued: deque[int] = field(default_factory=deque)
    lookahead_queued: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    consumption_times: list[int] = field(default_factory=list)
    transcript: list[tuple[str, int]] = field(default_factory=list)

    def tokens_ahead(self, lookahead: int) -> tuple[int, ...]:
        """The tokens of the `lookahead`-th word still to come (pauses not counted), or none."""
        for entry in self.entries[self.next_entry:]:
            if entry.tokens:
                lookahead -= 1
                if lookahead == 0:
                    return entry.tokens
        return ()

    def fork(self) -> State:
        """A copy whose changes leave this state as it is."""
        twin = copy.copy(self)
        twin.queued, twin.lookahead_queued = deque(self.queued), deque(self.lookahead_queued)
        twin.consumption_times, twin.transcript = list(self.consumption_times), list(self.transcript)
        return twin


@dataclass(frozen=True)
class StateMachine:
    token_ids: TokenIds
    second_stream_ahead: int = 0
    max_padding: int = 8
    initial_padding: int = 2

    def new_state(self, entries: Sequence[Entry]) -> State:
        return State(list(entries), remaining_padding=self.initial_padding, forced_padding=self.initial_padding)

    def branches(self, step: int, state: State) -> tuple[int, int]:
        """The token fed back if the model samples `pad` (or anything but `new_word`), and if it samples
        `new_word`; `state` is left unchanged."""
        ids = self.token_ids
        return self.process(step, state.fork(), ids.pad), self.process(step, state.fork(), ids.new_word)

    def process(self, step: int, state: State, token: int) -> int:
        """Update `state` with the token the model sampled at `step`; the text token to feed it next."""
        ids = self.token_ids
        token = token if token in (ids.new_word, ids.pad) else ids.pad
        if state.queued or state.forced_padding > 0:
            token = ids.pad
        elif state.remaining_padding <= 0:
            token = ids.new_word

        if token == ids.new_word:
            token = self._take_entry(step, state)

        if token == ids.pad:
            if state.remaining_padding > 0:
                state.remaining_padding -= 1
            if state.forced_padding > 0:
                state.forced_padding -= 1
            output = state.queued.popleft() if state.queued else ids.pad
        else:
            output = ids.new_word

        if not self.second_stream_ahead:
            return output
        second = ids.zero
        if output == ids.new_word:
            second = ids.new_word
            output = state.queued.popleft() if state.queued else ids.pad
        elif state.lookahead_queued:
            second = state.lookahead_queued.popleft()
        return (second + 1) * ids.card + output

    def _take_entry(self, step: int, state: State) -> int:
        """Act on `new_word`: take the next entry; the token to act on from there (`new_word` or `pad`)."""
        ids = self.token_ids
        if state.next_entry >= len(state.entries):
            # Asked for a word past the last one: the end. Models with a second stream get `new_word` once more.
            token = ids.new_word if self.second_stream_ahead and state.end_step is None else ids.pad
            if state.end_step is None:
                state.end_step = step
            return token
        entry = state.entries[state.next_entry]
        state.next_entry += 1
        state.consumption_times.append(step)
        state.forced_padding = entry.padding
        if not entry.tokens:  # a pause
            return ids.pad
        state.transcript.append((entry.text, step))
        state.queued.extend(entry.tokens)
        if self.second_stream_ahead:
            state.lookahead_queued.extend(state.tokens_ahead(self.second_stream_ahead))
        state.remaining_padding = self.max_padding
        return ids.new_word
