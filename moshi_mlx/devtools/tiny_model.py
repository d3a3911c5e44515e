"""A complete tiny model on disk: Moshi (random, the 7B's structure), Mimi (random, full size), a text tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model.config import LmConfig
from ..stream.pipeline import Pipeline
from .random_lm import tiny_config, write_random_lm
from .random_mimi import write_random_mimi
from .tiny_tokenizer import write_tiny_tokenizer


@dataclass(frozen=True)
class TinyModel:
    """The files of a tiny model, as the CLI's model options name them."""

    moshi_weights: Path
    config: Path
    mimi_weights: Path
    tokenizer: Path

    def cli_args(self) -> list[str]:
        return ["--moshi-weights", str(self.moshi_weights), "--config", str(self.config),
                "--mimi-weights", str(self.mimi_weights), "--tokenizer", str(self.tokenizer)]

    def load_pipeline(self, seed: int | None = 0, **options) -> Pipeline:
        """`Pipeline.load` on these files (`options` as it takes them: `mimi`, `dtype`, temperatures...)."""
        return Pipeline.load(self.moshi_weights, self.mimi_weights, self.tokenizer, LmConfig.from_json(self.config),
                             seed=seed, **options)


def write_tiny_model(
    directory: str | Path, mimi_weights: str | Path | None = None, seed: int = 0, config: LmConfig | None = None
) -> TinyModel:
    """Write a tiny model into `directory`; a random Mimi too unless `mimi_weights` names one (about 385 MB).

    `config`: another tiny LM structure (e.g. `random_lm.tiny_persona_config()`), its card 2048."""
    directory = Path(directory)
    # Mimi's codes go up to 2047: the LM's audio tables must be that large.
    weights, config_path = write_random_lm(directory, config or tiny_config(card=2048), seed=seed)
    if mimi_weights is None:
        mimi_weights = directory / "mimi.safetensors"
        if not mimi_weights.exists():
            write_random_mimi(mimi_weights, seed=seed)
    tokenizer = write_tiny_tokenizer(directory / "tokenizer.model")
    return TinyModel(weights, config_path, Path(mimi_weights), tokenizer)
