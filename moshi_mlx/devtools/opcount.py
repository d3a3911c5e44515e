"""Count the operations MLX evaluates and the host synchronisations that evaluate them.

Every way Python code can make MLX compute and wait (`mx.eval`, and `item`, `tolist`, `bool`, `int`, `float` on
an array) is wrapped while an `OpCounter` is active: before the wait, the pending graph of what is being evaluated
is exported with `mx.export_to_dot` and its operation nodes are counted. Arrays already evaluated appear as
leaves, so over a step the counts add up to the operations run, each once; a compiled function counts one node
per fused kernel it runs. `mx.async_eval` is counted too and run at once; the later wait for its arrays (an
`mx.eval` or a read of one of them) is the sync. Reading an array with `np.array` is not wrapped: call `sync` first.

This module imports nothing but MLX, so another package's environment can load it by path (benchmarks/).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

_NODE = re.compile(r'\[label ="([^"]*)", shape=rectangle\]')
# Methods of mx.array that evaluate the array and hand its value to Python.
_READERS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


def graph_ops(*arrays: Any) -> Counter:
    """Operation nodes (by primitive name) of the unevaluated graph behind `arrays` (arrays, or trees of them)."""
    leaves = [a for _, a in tree_flatten(list(arrays)) if isinstance(a, mx.array)]
    if not leaves:
        return Counter()
    out = io.StringIO()
    mx.export_to_dot(out, *leaves)
    return Counter(_NODE.findall(out.getvalue()))


class OpCounter:
    """Context manager: `ops` (total), `by_name` (per primitive) and `syncs` (host waits that ran work)."""

    def __init__(self) -> None:
        self.by_name: Counter = Counter()
        self.syncs = 0
        self._saved: dict[str, Any] = {}
        self._in_flight: set[int] = set()  # ids of arrays sent by async_eval and not waited for yet

    @property
    def ops(self) -> int:
        return sum(self.by_name.values())

    def sync(self, *arrays: Any) -> None:
        """Count the pending work behind `arrays` as one host synchronisation (if there is any), then evaluate."""
        ops = graph_ops(*arrays)
        ids = {id(a) for _, a in tree_flatten(list(arrays)) if isinstance(a, mx.array)}
        if ops or ids & self._in_flight:
            self.by_name.update(ops)
            self.syncs += 1
        self._in_flight -= ids
        self._saved.get("eval", mx.eval)(*arrays)

    def reset(self) -> None:
        self.by_name.clear()
        self.syncs = 0
        self._in_flight.clear()

    def _async_eval(self, *arrays: Any) -> None:
        # Counted and run at once (work left in flight would be counted again at the next sync); the wait for
        # these arrays counts as the sync.
        self.by_name.update(graph_ops(*arrays))
        self._in_flight.update(id(a) for _, a in tree_flatten(list(arrays)) if isinstance(a, mx.array))
        self._saved["eval"](*arrays)

    def __enter__(self) -> OpCounter:
        self._saved["eval"], self._saved["async_eval"] = mx.eval, mx.async_eval
        mx.eval, mx.async_eval = self.sync, self._async_eval
        for name in _READERS:
            original = getattr(mx.array, name, None)
            if original is None:
                continue
            self._saved[name] = original

            def reader(array: mx.array, *args: Any, _original: Any = original) -> Any:
                self.sync(array)
                return _original(array, *args)

            setattr(mx.array, name, reader)
        return self

    def __exit__(self, *exc: Any) -> None:
        mx.eval, mx.async_eval = self._saved.pop("eval"), self._saved.pop("async_eval")
        for name, original in self._saved.items():
            setattr(mx.array, name, original)
        self._saved.clear()
