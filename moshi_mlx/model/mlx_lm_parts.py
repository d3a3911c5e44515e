"""The parts of mlx-lm we use (KV caches, attention helpers, the sampler, the wired-memory limit), imported when
first used.

mlx-lm's package imports `transformers` as it loads (1.25 s of `import moshi_mlx`'s 1.4 s on a 2-core Linux VM):
a command that stops at a bad option, lists devices or downloads need not wait for it. Read the parts as
attributes at the time of use (`mlx_lm_parts.KVCache(...)`): importing a name from here loads mlx-lm at once.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "ConcatenateKVCache": "mlx_lm.models.cache",
    "KVCache": "mlx_lm.models.cache",
    "RotatingKVCache": "mlx_lm.models.cache",
    "create_causal_mask": "mlx_lm.models.base",
    "scaled_dot_product_attention": "mlx_lm.models.base",
    "make_sampler": "mlx_lm.sample_utils",
    "wired_limit": "mlx_lm.generate",
}
__all__ = list(_MODULES)


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads are plain module attributes
    return value
