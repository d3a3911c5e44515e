"""Kyutai's DSM text-to-speech on the one model core: `TtsModel` (load), `TtsGen` (generate), `synthesize`."""

from .generate import TtsFrame, TtsGen, TtsResult
from .model import TtsModel
from .script import Entry, TokenIds, script_to_entries
from .speak import SpokenFrame, synthesize
from .state_machine import State, StateMachine

__all__ = [
    "Entry", "SpokenFrame", "State", "StateMachine", "TokenIds", "TtsFrame", "TtsGen", "TtsModel", "TtsResult",
    "script_to_entries", "synthesize",
]
