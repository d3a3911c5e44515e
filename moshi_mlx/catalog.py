"""Published checkpoints known by name (`--model`): their repos, layouts, files and licences.

Kyutai's own Moshi repos (`kyutai/moshiko-mlx-q4`...) are picked by `--voice` and `-q` as before (`hub.default_repo`);
these are the later ones, each a single PyTorch bf16 `model.safetensors` beside Moshi's Mimi and text tokenizer.
Their licences as their model cards state them (read 2026-12-06): PersonaPlex "Use of this model is governed by the
NVIDIA Open Model License Agreement" (commercial use allowed); Kyutai's RL checkpoints "licensed under CC BY-NC 4.0"
(`moshika-rl-seamless`) and "under a combination of CC BY-NC 4.0 and the NVIDIA Open Model License"
(`personaplex-rl-seamless`). All three repos are gated: their files download once the licence is accepted on the
repo's page while logged in to Hugging Face.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import MoshiError

NVIDIA_LICENCE = "NVIDIA Open Model License"
NON_COMMERCIAL = "CC BY-NC 4.0"


@dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint: `persona` when it has PersonaPlex's layout (it takes a role and a voice prompt)."""

    name: str
    repo: str
    persona: bool
    licence: str
    commercial: bool
    weights_gib: float  # the bf16 file's tensors, for the memory check before anything downloads
    about: str

    @property
    def quants(self) -> tuple[str, ...]:
        return ("bf16",)

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}"

    def licence_line(self) -> str:
        """The one line said when the checkpoint is first used."""
        use = "commercial use allowed" if self.commercial else "non-commercial use only"
        return f"Licence: {self.repo}'s weights are under the {self.licence} ({use}; {self.page})"


CHECKPOINTS = {
    c.name: c
    for c in (
        Checkpoint("moshika-rl", "kyutai/moshika-rl-seamless", False, NON_COMMERCIAL, False, 14.3,
                   "Kyutai's Moshika after RL on turn-taking and barge-in (Moshi's layout)"),
        Checkpoint("personaplex", "nvidia/personaplex-7b-v1", True, NVIDIA_LICENCE, True, 15.6,
                   "NVIDIA's PersonaPlex: Moshi trained to take a role and a voice prompt"),
        Checkpoint("personaplex-rl", "kyutai/personaplex-rl-seamless", True,
                   f"{NON_COMMERCIAL} together with the {NVIDIA_LICENCE}", False, 15.6,
                   "Kyutai's PersonaPlex after RL on turn-taking and barge-in"),
    )
}
MODEL_NAMES = ("moshi", *CHECKPOINTS)


def by_name(name: str) -> Checkpoint:
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise MoshiError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}") from None


def by_repo(repo: str | None) -> Checkpoint | None:
    """The known checkpoint a repo id names (case as Hugging Face ignores it), else None."""
    if repo is None:
        return None
    return next((c for c in CHECKPOINTS.values() if c.repo.lower() == repo.lower()), None)
