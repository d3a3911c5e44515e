"""Checks made before any work starts: which options name files, and that every output can be written without
touching an input.

Files are compared by identity (device and inode), not by name: the same file spelt differently, through a
symbolic link or a hard link, is the same file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from moshi_mlx import MoshiError

INPUT, OUTPUT, OUTPUT_DIR, NOT_A_FILE = "input", "output", "output folder", "not a file"

# What every free-form option (no `type`, no `choices`) of every subcommand names, by its dest. A new option
# must be added here: tests/test_validation.py walks the parsers and fails on one it does not find.
FILE_ROLES: dict[str, str] = {
    "input": INPUT,  # run's audio file; quantize's checkpoint (a file, a folder or a repo id)
    "moshi_weights": INPUT,
    "mimi_weights": INPUT,
    "tokenizer": INPUT,
    "config": INPUT,
    "wav": INPUT,
    "out": OUTPUT,
    "transcript": OUTPUT,
    "record": OUTPUT,
    "report_json": OUTPUT,
    "trace": OUTPUT,
    "output": OUTPUT_DIR,
    "hf_repo": NOT_A_FILE,
    "input_device": NOT_A_FILE,
    "output_device": NOT_A_FILE,
    "simulate_echo": NOT_A_FILE,  # DELAY_MS[:GAIN_DB]
    "persona": NOT_A_FILE,  # the role's text
    "persona_file": INPUT,
    "voice_prompt": INPUT,  # an audio file or a PersonaPlex .pt voice
    "file": INPUT,  # say's text file
    "text": NOT_A_FILE,  # say's text
    "voice": NOT_A_FILE,  # say's voice: a name in the voices repo (a local voice file is checked by say itself)
    "voice_repo": NOT_A_FILE,
}

PathLike = str | os.PathLike


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # follows symbolic links
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _probe(path: Path) -> None:
    """Open for writing without changing anything: append to an existing file, or create and remove a new one."""
    existed = path.exists()
    flags = os.O_WRONLY | os.O_NONBLOCK | (os.O_APPEND if existed else os.O_CREAT | os.O_EXCL)
    try:
        os.close(os.open(path, flags, 0o644))
    except OSError as e:
        raise MoshiError(f"cannot write {path}: {(e.strerror or str(e)).lower()}") from None
    if not existed:
        path.unlink(missing_ok=True)


def check_outputs(
    outputs: Mapping[str, PathLike | None],
    inputs: Mapping[str, PathLike | None] | None = None,
    source: PathLike | None = None,
    planned: Mapping[str, PathLike] | None = None,
) -> None:
    """Every output (`{option: path}`) can be written, and none is an input (`{label: path}`, e.g.
    `{"--tokenizer": path}`), `source` ("the input file"), another output or a `planned` file (`{label: path}`,
    written later into a folder that may not exist yet).

    Nothing is truncated: an existing output is opened for appending, a new one created and removed again.
    """
    known: dict[object, str] = {}
    if source is not None:
        key = _identity(Path(source).expanduser())
        if key is not None:
            known[key] = "the input file"
    for label, path in (inputs or {}).items():
        key = _identity(Path(path).expanduser()) if path is not None else None
        if key is not None:
            known.setdefault(key, label if label.startswith("the ") else f"the {label} file")
    for label, path in (planned or {}).items():
        target = Path(path).expanduser()
        key = _identity(target)
        if key in known:
            raise MoshiError(f"{target} would be written as {label}, but it is {known[key]}: choose another "
                             "output folder")
        known[key or target.resolve()] = label
        known.setdefault(target.resolve(), label)
    for option, path in outputs.items():
        if path is None:
            continue
        try:
            _check_output(option, Path(path).expanduser(), path, known)
        except OSError as e:  # e.g. a name too long for the file system
            raise MoshiError(f"cannot write {path}: {(e.strerror or str(e)).lower()}") from None


def _check_output(option: str, target: Path, path: PathLike, known: dict[object, str]) -> None:
    key = _identity(target) or target.resolve()
    if key in known:
        raise MoshiError(f"{option} {path} is {known[key]}: give another file name")
    if target.is_dir():
        raise MoshiError(f"cannot write {path}: it is a folder; give a file name")
    if not target.resolve().parent.is_dir():
        raise MoshiError(f"cannot write {path}: its folder does not exist")
    _probe(target)
    known[key] = f"also given to {option}"
    known.setdefault(target.resolve(), f"also given to {option}")


def check_output_folder(option: str, path: PathLike) -> Path:
    """A folder to write files into: an existing folder, or one that can be made (its nearest existing parent is a
    writable folder)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise MoshiError(f"{option} {path} is a file: give a folder to write into")
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MoshiError(f"cannot make {option} {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MoshiError(f"cannot write into {option} {path}: permission denied")
    return folder
