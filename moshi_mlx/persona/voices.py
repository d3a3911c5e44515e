"""The published PersonaPlex voices: `voices.tgz` of the model's repo, one `voices/<NAME>.pt` each.

NVIDIA's code extracts the archive beside the download; here the one member asked for is read from it in
memory, so nothing is written into the Hugging Face cache and a cached archive works offline.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from .. import hub
from ..errors import MoshiError

VOICES_FILE = "voices.tgz"
# As NVIDIA's README lists them: natural (NAT) and more varied (VAR) voices, female (F) and male (M).
KNOWN_VOICES = (*(f"NATF{i}" for i in range(4)), *(f"NATM{i}" for i in range(4)),
                *(f"VARF{i}" for i in range(5)), *(f"VARM{i}" for i in range(5)))
DEFAULT_VOICE = "NATF2"  # the voice of NVIDIA's assistant example
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_VOICE_BYTES = 256 * 1024**2


def _voices(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The `.pt` voices an archive holds, by name (upper case)."""
    return {Path(m.name).stem.upper(): m for m in tar.getmembers()
            if m.isfile() and m.name.endswith(".pt") and NAME.fullmatch(Path(m.name).stem)}


def read_published_voice(repo: str, name: str) -> bytes:
    """The bytes of voice `name` (any case) from the repo's voices.tgz (downloaded once into the HF cache)."""
    archive = hub.fetch(repo, VOICES_FILE, "bf16", hint="its voices come with the model; use --voice-prompt FILE")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = _voices(tar)
            member = members.get(name.upper())
            if member is None:
                raise MoshiError(f"unknown voice {name!r}: {repo} has {', '.join(sorted(members)) or 'none'} "
                                 "(or --voice-prompt FILE for a voice from audio)")
            if member.size > MAX_VOICE_BYTES:
                raise MoshiError(f"voice {name} in {archive.name} is {member.size} bytes, not a voice; download it "
                                 "again")
            handle = tar.extractfile(member)
            if handle is None:
                raise MoshiError(f"voice {name} in {archive.name} cannot be read; download it again")
            return handle.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise MoshiError(f"{archive.name} of {repo} is damaged ({e}); download it again") from None
