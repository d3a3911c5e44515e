"""Config fields that carry their own type, range and default, and the checks derived from them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

INT, NUM, BOOL, STR = "whole number", "number", "true or false", "string"
LIST, OBJECT = "list", "object"


def is_int(value: Any) -> bool:
    """A JSON whole number: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def describe(value: Any) -> str:
    """What a JSON value is, for a message: `null`, `a list ([1, 2])`, `a string ('dim')`."""
    if value is None:
        return "null"
    return f"a string ({value!r})" if isinstance(value, str) else f"a {type(value).__name__} ({value!r})"


@dataclass(frozen=True)
class Rule:
    """What a field may hold: a kind, a range (for a list, of its items), choices, and whether null is allowed."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    null: bool = False
    unit: str = ""  # of a list's items, named in its message

    @property
    def rank(self) -> int:
        """Plain values are reported first, then choices, then lists and objects."""
        return 1 if self.choices else 2 if self.kind in (LIST, OBJECT) else 0

    def problem(self, key: str, value: Any) -> str | None:
        """None when `value` fits; else what is wrong, naming the key, the value and what is expected."""
        if value is None and self.null:
            return None
        if self.choices:
            if isinstance(value, str) and value in self.choices:
                return None
            shown = "is null" if value is None else repr(value)
            return f"{key} {shown}: expected one of {', '.join(self.choices)}"
        if self.kind == LIST:
            return self._list_problem(key, value)
        if self.kind == OBJECT:
            return None if isinstance(value, dict) else f"{key} {value!r}: expected an object or null"
        expected = self._expected()
        if value is None:
            return f"{key} is null: expected {expected}"
        return None if self._fits(value) else f"{key} {value!r}: expected {expected}"

    def _expected(self) -> str:
        if self.lo is None:
            expected = self.kind if self.kind == BOOL else f"a {self.kind}"
        elif self.kind == NUM:
            expected = f"a {self.kind} from {self.lo:g} to {self.hi:g}"
        else:
            expected = f"a {self.kind} from {self.lo} to {self.hi}"
        return expected + (" or null" if self.null else "")

    def _fits(self, value: Any) -> bool:
        if self.kind == BOOL:
            ok = isinstance(value, bool)
        elif self.kind == STR:
            ok = isinstance(value, str)
        elif self.kind == INT:
            ok = is_int(value)
        else:
            ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        return ok and (self.lo is None or self.lo <= value <= self.hi)

    def _list_problem(self, key: str, value: Any) -> str | None:
        if not isinstance(value, list):
            return f"{key} {value!r}: expected a list of whole numbers"
        if self.lo is None:
            return None
        bad = [v for v in value if not is_int(v) or not self.lo <= v <= self.hi]
        unit = f" ({self.unit})" if self.unit else ""
        return f"{key} {value!r}: expected whole numbers from {self.lo} to {self.hi}{unit}, not {bad[0]!r}" \
            if bad else None


def setting(
    default: Any,
    kind: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    choices: tuple[str, ...] | None = None,
    null: bool = False,
    unit: str = "",
    **metadata: Any,
) -> Any:
    """A dataclass field with its rule in the metadata (under "rule"), beside any other `metadata`."""
    metadata = {"rule": Rule(kind, lo, hi, choices, null, unit), **metadata}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_problems(config: Any) -> list[str]:
    """What is wrong with the fields of a dataclass instance, against their rules, in the order they are reported."""
    found = []
    for f in dataclasses.fields(config):
        rule = f.metadata.get("rule")
        if rule is not None and (problem := rule.problem(f.name, getattr(config, f.name))):
            found.append((rule.rank, problem))
    return [problem for _, problem in sorted(found, key=lambda p: p[0])]


class BaseConfig:
    """A dataclass built from a JSON dict, keeping only the keys that are its fields (as mlx-lm's `BaseModelArgs`)."""

    @classmethod
    def known(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The items of `values` whose keys are fields of this config."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in values.items() if k in names}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """The config of a JSON dict; keys that are not fields are ignored."""
        return cls(**cls.known(values))
