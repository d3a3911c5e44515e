"""`moshi-mlx say`: Kyutai's streaming text-to-speech (DSM TTS), spoken as it is generated and/or written to a WAV."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moshi_mlx import MoshiError, hub
from moshi_mlx.codec import BACKENDS, Codec, choose_backend, load_codec
from moshi_mlx.model.text import check_vocabulary
from moshi_mlx.stream.audio_io import write_wav
from moshi_mlx.stream.pipeline import load_text_tokenizer
from moshi_mlx.tts.model import DEFAULT_REPO, TtsModel, check_tts_config, quantize_like_kyutai
from moshi_mlx.tts.prefix import AUDIO_SUFFIXES, load_prefix
from moshi_mlx.tts.speak import Speaker, synthesize
from moshi_mlx.tts.voices import DEFAULT_VOICE, VOICE_REPO, find_voice

from .checks import check_outputs
from .interrupt import interrupt_on_termination
from .model_args import DTYPES, add_dtype_arg, codec_line
from .parser import Parser, repo_id, seed, temperature
from .say_screen import WordScreen


def _cfg_coef(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 10.0:
        raise argparse.ArgumentTypeError(f"{text} is not a CFG coefficient (a number above 0, at most 10)")
    return value


def build_parser() -> Parser:
    parser = Parser(prog="moshi-mlx say", description="Read text aloud with Kyutai's DSM TTS: spoken on the speaker "
                    "as it is generated, and/or written to a 24 kHz WAV. Text comes from the command line, --file, or "
                    "standard input (a line at a time, each spoken as it arrives).")
    parser.add_argument("text", nargs="*", help="the text to say")
    parser.add_argument("--file", default=None, help="a UTF-8 text file to say")
    parser.add_argument("-o", "--out", default=None, help="write the voice to this WAV file")
    parser.add_argument("--no-play", action="store_true", help="do not play on the speaker (needs -o)")
    parser.add_argument("--voice", action="append", default=None,
                        help=f"a voice of --voice-repo by name, or a voice file (.safetensors; a recording such as "
                        f".wav for models that clone one, e.g. tts-0.75b-en-public); twice for a dialogue (one turn "
                        f"per line, alternating). Default: {DEFAULT_VOICE}")
    parser.add_argument("--voice-repo", type=repo_id, default=VOICE_REPO, help=f"voices repo (default {VOICE_REPO})")
    parser.add_argument("--cfg-coef", type=_cfg_coef, default=2.0,
                        help="classifier-free guidance: how closely to follow the text and voice (default 2.0)")
    parser.add_argument("--temp", type=temperature, default=0.6, help="sampling temperature (0 = greedy; 0.6)")
    parser.add_argument("--seed", type=seed, default=None, help="random seed: the same text gives the same audio")
    parser.add_argument("-q", "--quantize", dest="quant", choices=["4", "8", "bf16"], default=None,
                        help="quantize the weights on loading (Kyutai publishes bf16; default: as the file holds)")
    parser.add_argument("--hf-repo", type=repo_id, default=DEFAULT_REPO, help=f"model repo (default {DEFAULT_REPO})")
    parser.add_argument("--moshi-weights", default=None, help="local TTS weights (.safetensors)")
    parser.add_argument("--mimi-weights", default=None, help="local Mimi weights (.safetensors)")
    parser.add_argument("--tokenizer", default=None, help="local text tokenizer (SentencePiece .model)")
    parser.add_argument("--config", default=None, help="local model config.json")
    parser.add_argument("--mimi", choices=BACKENDS, default="auto", help="audio codec backend (default auto)")
    parser.add_argument("--output-device", default=None, help="speaker (name or index; default: the system's)")
    parser.add_argument("--verbose", action="store_true", help="say the time to first audio and the speed")
    parser.add_argument("--quiet", action="store_true", help="do not show the words")
    add_dtype_arg(parser)
    return parser


def _texts(args: argparse.Namespace) -> Iterator[list[str]]:
    """Scripts (lists of turns) in order: the command line's or the file's text, else stdin's lines."""
    dialogue = len(args.voice or []) > 1
    if args.text and args.file:
        raise MoshiError("give the text on the command line or with --file, not both")
    if args.text or args.file:
        if args.file:
            try:
                text = Path(args.file).expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise MoshiError(f"cannot read --file {args.file}: {e}") from None
        else:
            text = " ".join(args.text)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise MoshiError("nothing to say: the text is empty")
        yield lines if dialogue else [" ".join(lines)]
        return
    if sys.stdin.isatty():
        raise MoshiError("nothing to say: give the text, --file, or pipe it to standard input")
    said = False
    for line in sys.stdin:
        if line.strip():
            said = True
            yield [line.strip()]
    if not said:
        raise MoshiError("nothing to say: standard input was empty")


def _load(args: argparse.Namespace) -> tuple[TtsModel, Codec, str]:
    local = args.moshi_weights and args.mimi_weights and args.tokenizer and args.config
    files = hub.resolve_files(hf_repo=None if local else args.hf_repo, quant="bf16", moshi_weights=args.moshi_weights,
                              mimi_weights=args.mimi_weights, tokenizer=args.tokenizer, config=args.config)
    check_tts_config(files.config)
    tokenizer = load_text_tokenizer(files.tokenizer)
    check_vocabulary(tokenizer, files.config, files.tokenizer)
    model = TtsModel.load(files.moshi_weights, files.config, tokenizer, dtype=DTYPES[args.dtype])
    if args.quant in ("4", "8"):
        if model.lm.quantization:
            print(f"note: -q {args.quant} does not apply: the weights are already quantized", file=sys.stderr)
        else:
            quantize_like_kyutai(model.lm, int(args.quant))
    backend, why = choose_backend(args.mimi)
    codec = load_codec(files.mimi_weights, backend, num_codebooks=files.config.n_q)
    return model, codec, codec_line(backend, why)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    interrupt_on_termination()
    if args.no_play and not args.out:
        raise MoshiError("--no-play needs -o FILE: the voice would go nowhere")
    inputs = {"--moshi-weights": args.moshi_weights, "--mimi-weights": args.mimi_weights,
              "--tokenizer": args.tokenizer, "--config": args.config, "--file": args.file}
    inputs.update({f"the voice {Path(v).name}": v for v in args.voice or []
                   if Path(v).suffix.lower() in (".safetensors", *AUDIO_SUFFIXES)})
    check_outputs({"--out": args.out}, inputs)
    texts = _texts(args)
    if args.text or args.file:  # bad text is reported before the model loads (stdin's lines come after)
        texts = _chain(next(texts), texts)
    model, codec, codec_note = _load(args)
    if args.verbose:
        print(codec_note, file=sys.stderr)
    voices, prefix = [], None
    if model.multi_speaker:
        paths = [find_voice(v, model.config.model_id, args.voice_repo) for v in args.voice or [DEFAULT_VOICE]]
        voices = model.load_voices(paths)
    else:  # Kyutai's models without speaker embeddings clone one recording, fed before the text
        if len(args.voice or []) > 1:
            raise MoshiError("this model clones one voice from a recording: give --voice once")
        path = find_voice((args.voice or [DEFAULT_VOICE])[0], model.config.model_id, args.voice_repo, audio=True)
        prefix = load_prefix(path, codec, model.config.n_q)
    conditions, gen_coef = model.conditions(voices, args.cfg_coef)
    gen = model.generator(gen_coef, temp=args.temp, seed=args.seed)
    speaker = None if args.no_play else Speaker(args.output_device)
    if speaker is not None:
        speaker.choose()
        speaker.open()
    screen = WordScreen(enabled=not args.quiet)
    audio: list[np.ndarray] = []
    try:
        for turns in texts:
            _say(model, gen, codec, conditions, turns, speaker, screen, audio, args.verbose, prefix)
    finally:
        screen.close()
        codec.close()
        if speaker is not None:  # what is queued plays out (Ctrl-C stops it)
            queued_s = len(speaker.speaker) * speaker.stats.output.blocksize / speaker.stats.output.samplerate
            speaker.play_out_and_close(seconds=queued_s + 1.0)
        if args.out and audio:
            write_wav(args.out, np.concatenate(audio))
            print(f"wrote {args.out}", file=sys.stderr)


def _drain(queue) -> list:
    """Take what the output callback appended so far (it appends on its own thread; popleft is atomic)."""
    out = []
    while queue:
        out.append(queue.popleft())
    return out


def _chain(first: list[str], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield first
    yield from rest


def _say(model: TtsModel, gen, codec, conditions, turns: list[str], speaker: Speaker | None, screen: WordScreen,
         audio: list[np.ndarray], verbose: bool, prefix: np.ndarray | None = None) -> None:
    entries = model.entries(turns)
    start = time.perf_counter()
    first_audio = None
    screen.start([e.text for e in entries if e.tokens])
    frames = 0
    for frame in synthesize(gen, codec, entries, conditions, prefix=prefix):
        if first_audio is None:
            first_audio = frame.since_start_s
        audio.append(frame.pcm)
        frames += 1
        if speaker is not None:
            speaker.play(frame.pcm, tag=frame.index)
            played = [tag for tag, *_ in _drain(speaker.played) if isinstance(tag, int)]
            if played:
                screen.at(frame.words, max(played))
        else:
            screen.at(frame.words, frame.index)
    screen.done()
    if verbose:
        wall = time.perf_counter() - start
        seconds = frames * 0.08
        print(f"time to first audio {1000 * (first_audio or wall):.0f} ms; {seconds:.2f} s of audio in {wall:.2f} s "
              f"(real-time factor {wall / max(seconds, 1e-9):.2f})", file=sys.stderr)
