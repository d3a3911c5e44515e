"""Checks of the `conditioners` and `fuser` blocks of Kyutai's LM config (what `ConditionProvider` builds from)."""

from __future__ import annotations

from typing import Any

KINDS = ("lut", "tensor")
FUSE_METHODS = ("sum", "cross", "prepend")


def config_problems(conditioners: Any, fuser: Any, cross_attention: bool) -> list[str]:
    """What is wrong with a config's `conditioners` and `fuser` blocks (empty when they fit)."""
    if not conditioners and not fuser:
        return ["cross_attention true needs a fuser cross condition"] if cross_attention else []
    if not isinstance(conditioners, dict) or not conditioners:
        return ["a fuser without conditioners"]
    problems = []
    for name, spec in conditioners.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind not in KINDS:
            problems.append(f"conditioner {name}: type {kind!r} (expected one of {', '.join(KINDS)})")
            continue
        args = spec.get(kind)
        needed = ("n_bins", "dim") if kind == "lut" else ("dim",)
        if not isinstance(args, dict) or any(not _positive_int(args.get(k)) for k in needed):
            problems.append(f"conditioner {name}: its {kind!r} block needs {' and '.join(needed)} (whole numbers)")
        elif kind == "lut" and args.get("tokenizer", "noop") != "noop":
            problems.append(f"conditioner {name}: tokenizer {args.get('tokenizer')!r} (only 'noop' exists)")
        elif kind == "lut" and len(args.get("possible_values") or []) > args["n_bins"]:
            problems.append(f"conditioner {name}: more possible_values than n_bins")
    if not isinstance(fuser, dict):
        return problems + ["conditioners without a fuser block"]
    for method in FUSE_METHODS:
        names = fuser.get(method, [])
        if not isinstance(names, list) or any(n not in conditioners for n in names):
            problems.append(f"fuser {method} {names!r}: expected names of conditioners")
    if fuser.get("prepend"):
        problems.append("fuser prepend is not supported (Kyutai's LM supports only sum and cross)")
    if fuser.get("cross") and not cross_attention:
        problems.append("fuser cross needs cross_attention true")
    if cross_attention and not fuser.get("cross"):
        problems.append("cross_attention true needs a fuser cross condition")
    return problems


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
