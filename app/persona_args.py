"""The model by name (`--model`) and the persona options of `chat` and `run`: a role and a voice for PersonaPlex.

The order is the app's usual one: what the options alone tell is checked before anything downloads (the text, the
files, the model's kind when it is a known one), the rest once the model's files and config are known, before the
slow loading; the persona is fed to the model after its warm-up, before the microphone opens.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from moshi_mlx import MoshiError, Pipeline, catalog, hub
from moshi_mlx.persona.voice import VoiceAudio, VoiceEmbedding, read_voice_audio, read_voice_embedding
from moshi_mlx.persona.voices import DEFAULT_VOICE, KNOWN_VOICES, NAME, read_published_voice
from moshi_mlx.stream.pipeline import load_text_tokenizer

from .memory import needed_gib, total_memory_gib

if TYPE_CHECKING:
    from moshi_mlx.persona.session import Persona

# NVIDIA's default role (`offline.py --text-prompt`), used when a PersonaPlex model is given none.
DEFAULT_PERSONA = ("You are a wise and friendly teacher. Answer questions or provide advice in a clear and engaging "
                   "way.")
MAX_PERSONA_BYTES = 1 << 20
LICENCES_SEEN = "licences-noted"  # in moshi-mlx's cache folder: the repos whose licence line was said


def voice_name(text: str) -> str:
    """--voice: moshiko or moshika (Moshi), or the name of a PersonaPlex voice (NATF2...)."""
    if not NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a voice name (letters, digits, '-' and '_')")
    return text


def add_persona_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "persona", "a role and a voice for PersonaPlex models (--model personaplex or personaplex-rl); "
        "Moshi itself takes neither")
    group.add_argument("--persona", metavar="TEXT", default=None,
                       help='the role, e.g. "You are a patient French teacher." (default: PersonaPlex\'s '
                       "assistant, a wise and friendly teacher)")
    group.add_argument("--persona-file", metavar="FILE", default=None, help="the role from a UTF-8 text file")
    group.add_argument("--voice-prompt", metavar="FILE", default=None,
                       help="the voice from a recording (any audio file `run` reads: a few seconds of one "
                       f"speaker), or a PersonaPlex .pt voice; else --voice NAME (default {DEFAULT_VOICE})")


@dataclass(frozen=True)
class PersonaRequest:
    """What the options ask for, read and checked before anything downloads."""

    text: str | None
    voice_audio: VoiceAudio | None
    voice_file: Path | None  # a .pt voice, checked against the model once its config is known
    voice: str | None  # a published voice by name
    voice_bytes: bytes | None = None  # that voice's .pt, read from the model's voices.tgz

    @property
    def given(self) -> str | None:
        """The persona option that was given, for messages; None when none was."""
        return next((o for o, v in (("--persona", self.text), ("--voice-prompt", self.voice_audio or self.voice_file),
                                    (f"--voice {self.voice}", self.voice)) if v), None)


def read_request(args: argparse.Namespace) -> PersonaRequest:
    """The role's text and the voice prompt's file, read now (a bad one is refused before anything downloads)."""
    if args.persona is not None and args.persona_file is not None:
        raise MoshiError("give the role once: --persona TEXT or --persona-file FILE, not both")
    text = args.persona
    if args.persona_file is not None:
        text = _read_text(args.persona_file)
    if text is not None and not text.strip():
        raise MoshiError(f"{'--persona-file ' + args.persona_file if args.persona_file else '--persona'} is empty: "
                         "give the role, e.g. \"You are a patient French teacher.\"")
    voice = args.voice if args.voice not in (None, *hub.VOICES) else None
    audio, pt_file = None, None
    if args.voice_prompt is not None:
        if voice is not None:
            raise MoshiError(f"give one voice: --voice {voice} or --voice-prompt {args.voice_prompt}, not both")
        path = Path(args.voice_prompt).expanduser()
        if path.suffix.lower() == ".pt":
            if not path.is_file():
                raise MoshiError(f"voice prompt not found: {path}")
            pt_file = path
        else:
            audio = read_voice_audio(path)
    return PersonaRequest(text.strip() if text else None, audio, pt_file, voice)


def _read_text(path: str) -> str:
    file = Path(path).expanduser()
    try:
        if file.stat().st_size > MAX_PERSONA_BYTES:
            raise MoshiError(f"--persona-file {path} is {file.stat().st_size} bytes: a role is a few sentences")
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MoshiError(f"--persona-file not found: {path}") from None
    except IsADirectoryError:
        raise MoshiError(f"--persona-file {path} is a folder: give the text file") from None
    except UnicodeDecodeError:
        raise MoshiError(f"--persona-file {path} is not UTF-8 text") from None
    except OSError as e:
        raise MoshiError(f"cannot read --persona-file {path}: {(e.strerror or str(e)).lower()}") from None


def settle_model(args: argparse.Namespace) -> catalog.Checkpoint | None:
    """`--model NAME` as its repo, and the voice and precision a known checkpoint allows, before anything downloads
    (again on a second call: nothing changes). Returns the known checkpoint, if the model is one."""
    if args.model not in (None, "moshi"):
        known = catalog.by_name(args.model)
        if args.hf_repo is not None and args.hf_repo.lower() != known.repo.lower():
            raise MoshiError(f"--model {args.model} is {known.repo}: leave out --hf-repo {args.hf_repo}")
        args.hf_repo = known.repo
    elif args.model == "moshi" and args.hf_repo is not None:
        raise MoshiError(f"--model moshi picks Kyutai's repo by --voice and -q: leave out --hf-repo {args.hf_repo}")
    else:
        known = catalog.by_repo(args.hf_repo)
    if known is not None and known.persona and args.voice in hub.VOICES:
        raise MoshiError(f"{args.voice} is Moshi's own voice; {known.repo} speaks with PersonaPlex's voices: "
                         f"--voice {DEFAULT_VOICE} (or {', '.join(KNOWN_VOICES[:3])}...) or --voice-prompt FILE")
    if known is not None and not known.persona and args.voice not in (None, "moshika"):
        raise MoshiError(f"{known.repo} speaks with Moshika's voice only: leave out --voice {args.voice}")
    if known is not None and args.moshi_weights is None:
        _check_precision(args, known)
    return known


def check_request(args: argparse.Namespace, request: PersonaRequest,
                  known: catalog.Checkpoint | None) -> PersonaRequest:
    """Refuse persona options for a model known to take none, and read a published voice from the model's repo:
    both before the weights download. Returns the request with the voice's bytes."""
    persona_model = known is not None and known.persona
    kyutai_moshi = args.hf_repo is None and args.moshi_weights is None and args.config is None
    if (known is not None and not persona_model) or kyutai_moshi:
        if request.voice and request.voice.upper() not in KNOWN_VOICES:  # a typo, e.g. moshica
            raise MoshiError(f"unknown voice {request.voice!r}: Moshi speaks as moshiko or moshika; PersonaPlex's "
                             "voices (NATF0-3, NATM0-3, VARF0-4, VARM0-4) need --model personaplex")
        if request.given:
            raise MoshiError(_not_persona(request, known.repo if known else "Moshi"))
    if persona_model and request.voice_audio is None and request.voice_file is None:
        name = (request.voice or DEFAULT_VOICE).upper()
        request = replace(request, voice=name, voice_bytes=read_published_voice(known.repo, name))
    return request


def _not_persona(request: PersonaRequest, model: str) -> str:
    return (f"{request.given} needs a PersonaPlex model, trained to take a role and a voice prompt, and {model} is "
            "not one: add --model personaplex (NVIDIA's PersonaPlex) or --model personaplex-rl")


def _check_precision(args: argparse.Namespace, known: catalog.Checkpoint) -> None:
    """A known checkpoint comes in bf16 only: another -q, or too little memory, points at `moshi-mlx quantize`."""
    how = (f"make a q4 with `moshi-mlx quantize {known.repo} --bits 4 -o {known.name}-q4`, then add "
           f"--moshi-weights {known.name}-q4/model.q4.safetensors --config {known.name}-q4/config.json")
    if args.quant is not None and hub.normalize_quant(args.quant) not in known.quants:
        raise MoshiError(f"{known.repo} publishes bf16 weights only: leave out -q {args.quant}, or {how}")
    need, total = needed_gib(known.weights_gib), total_memory_gib()
    if need > total:
        raise MoshiError(f"not enough memory for {known.repo} in bf16: it needs about {need:.1f} GiB and this machine "
                         f"has {total:.1f} GiB; {how}")
    args.quant = "bf16"


def make_persona(args: argparse.Namespace, request: PersonaRequest, files: hub.ModelFiles,
                 known: catalog.Checkpoint | None) -> Persona | None:
    """The persona to feed (None for a model that takes none), checked against the model's config, tokenizer and
    context before the weights load, and said in one line (with the defaults it took)."""
    config = files.config
    if not config.takes_persona:
        if request.given:
            raise MoshiError(_not_persona(request, Path(args.moshi_weights).name if args.moshi_weights else
                                          (files.repo or "this model")))
        return None
    text = request.text or DEFAULT_PERSONA
    voice: VoiceAudio | VoiceEmbedding | None = request.voice_audio
    name = None
    if request.voice_file is not None:
        voice = read_voice_embedding(request.voice_file, request.voice_file.name, config)
    elif voice is None:
        name = (request.voice or DEFAULT_VOICE).upper()
        data = request.voice_bytes or read_published_voice(files.repo or catalog.by_name("personaplex").repo, name)
        voice = read_voice_embedding(data, name, config)
    from moshi_mlx.persona.session import Persona

    persona = Persona.make(load_text_tokenizer(files.tokenizer), text, voice, name)
    note = persona.check_context(config)
    defaults = [what for what, given in (("role", request.text), ("voice", request.voice_audio or request.voice_file
                                                                         or args.voice)) if not given]
    why = f" (PersonaPlex's default {' and '.join(defaults)}: --persona and --voice choose)" if defaults else ""
    print(f"Persona: {persona.describe()}{why}", file=sys.stderr)
    if note:
        print(note, file=sys.stderr)
    return persona


def prefill_progress(status: Any) -> Callable[[int, int], None] | None:
    """What a rich status line says while the persona is fed (None for plain output: the cost is said after)."""
    if status is None:
        return None

    def show(done: int, total: int) -> None:
        status.update(f"Reading the persona: {done}/{total} steps")

    return show


def feed_persona(pipeline: Pipeline, persona: Persona | None) -> None:
    """`run`: feed the persona now (a progress line on a terminal), then say what it cost."""
    pipeline.persona = persona
    if persona is None:
        return
    say = Console(stderr=True, highlight=False, soft_wrap=True)
    with say.status("Reading the persona...", spinner="dots") if say.is_terminal else nullcontext() as status:
        report = pipeline.new_conversation(prefill_progress(status))
    if report is not None:
        say.print(report.describe())


def note_licence(known: catalog.Checkpoint | None) -> None:
    """Say the checkpoint's licence in one line the first time it is used on this machine."""
    if known is None:
        return
    seen_file = _cache_dir() / LICENCES_SEEN
    try:
        seen = set(seen_file.read_text().split()) if seen_file.is_file() else set()
    except OSError:
        seen = set()
    if known.repo in seen:
        return
    print(known.licence_line(), file=sys.stderr)
    try:
        seen_file.parent.mkdir(parents=True, exist_ok=True)
        seen_file.write_text("".join(f"{repo}\n" for repo in sorted(seen | {known.repo})))
    except OSError:
        pass  # said again next time


def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "moshi-mlx"


def persona_inputs(args: argparse.Namespace) -> dict[str, str | None]:
    """The files the persona options read (for the subcommands that have them), for `check_outputs`."""
    options = ("--persona-file", "--voice-prompt")
    return {option: getattr(args, option[2:].replace("-", "_"), None) for option in options}
