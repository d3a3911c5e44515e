"""`moshi-mlx serve`: Moshi over Kyutai's websocket protocol, for a browser (our page at `/`) or Kyutai's clients."""

from __future__ import annotations

import argparse
import re
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from moshi_mlx import MoshiError
from moshi_mlx.codec import FRAME_S, choose_backend
from moshi_mlx.stream.recording import WavRecorder

from .chat import choose_model
from .checks import check_output_folder
from .interrupt import interrupt_on_termination
from .model_args import add_model_args, add_sampling_args, check_model_files, load_files
from .parser import Parser, non_negative_int
from .persona_args import add_persona_args, check_request, make_persona, note_licence, read_request, settle_model
from .transcript import Transcript

TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


def port(text: str) -> int:
    value = non_negative_int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1 to 65535)")
    return value


def host_name(text: str) -> str:
    if not text or any(c.isspace() or c in "/?#@" for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return text


def token(text: str) -> str:
    if text != "none" and not TOKEN_CHARS.match(text):
        raise argparse.ArgumentTypeError("a token is 8 to 128 letters, digits, '-' or '_' (or `none`)")
    return text


def static_source(text: str) -> str | Path:
    """`none` (no page), or a folder with an `index.html` (served as Kyutai's server serves its client)."""
    if text == "none":
        return text
    folder = Path(text).expanduser()
    if not (folder / "index.html").is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a folder with an index.html (or `none` for no page)")
    return folder


def ssl_folder(text: str) -> Path:
    folder = Path(text).expanduser()
    missing = [name for name in ("cert.pem", "key.pem") if not (folder / name).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"{text} has no {' and no '.join(missing)} (make them e.g. with openssl)")
    return folder


def output_folder(text: str) -> Path:
    """A folder for one file per conversation (made if it does not exist; existing files are never touched)."""
    try:
        return check_output_folder("the folder", text)
    except MoshiError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="moshi-mlx serve",
        description="Serve Moshi to a browser (open the printed address) or to Kyutai's clients, over Kyutai's "
        "websocket protocol. One conversation at a time. Ctrl-C ends the live conversation and stops.",
    )
    parser.add_argument("--host", type=host_name, default="localhost",
                        help="address to listen on (default localhost: this machine only; any other needs --ssl)")
    parser.add_argument("--port", type=port, default=8998, help="port (default 8998)")
    parser.add_argument("--ssl", type=ssl_folder, default=None, metavar="DIR",
                        help="serve https from DIR/cert.pem and DIR/key.pem (browsers give the microphone only to "
                        "https pages, or to localhost)")
    parser.add_argument("--token", type=token, default=None,
                        help="access token asked of clients (default: a new one each run when --host is not "
                        "localhost, none on localhost; `none`: never, for Kyutai's clients, which cannot send one)")
    parser.add_argument("--static", type=static_source, default=None, metavar="DIR",
                        help="the page at /: our own (default), DIR with an index.html, or `none`")
    parser.add_argument("--transcript-dir", type=output_folder, default=None, metavar="DIR",
                        help="write each conversation's transcript (Moshi's words, timestamped) into DIR")
    parser.add_argument("--record-dir", type=output_folder, default=None, metavar="DIR",
                        help="write each conversation as a stereo WAV (the client left, Moshi right) into DIR")
    parser.add_argument("--max-backlog", type=non_negative_int, default=2, metavar="FRAMES",
                        help="input frames allowed to wait before the oldest are skipped to keep up (default 2)")
    add_model_args(parser)
    add_sampling_args(parser)
    add_persona_args(parser)
    return parser.parse_args(argv)


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


class TimedTranscript:
    """The engine's transcript sink (a piece, or None, per frame) as `Transcript`'s timestamped lines."""

    def __init__(self, path: Path):
        self.transcript = Transcript(path)
        self.frames = 0

    def write(self, piece: str | None) -> None:
        self.transcript.add(self.frames * FRAME_S, piece)
        self.frames += 1

    def close(self) -> None:
        self.transcript.close()


def fresh_path(folder: Path, stem: str, suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def conversation_files(args: argparse.Namespace):
    """The server's per-conversation outputs: number -> (recorder or None, transcript or None)."""

    def open_outputs(number: int) -> tuple[Any, Any]:
        stem = f"conversation-{time.strftime('%Y%m%d-%H%M%S')}-{number}"
        transcript = TimedTranscript(fresh_path(args.transcript_dir, stem, ".txt")) if args.transcript_dir else None
        try:
            recorder = WavRecorder(fresh_path(args.record_dir, stem, ".wav")) if args.record_dir else None
        except BaseException:
            if transcript is not None:
                transcript.close()
            raise
        return recorder, transcript

    return open_outputs


def address(args: argparse.Namespace, access: str | None) -> str:
    host = args.host if args.host not in ("0.0.0.0", "::", "") else socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    query = f"?token={access}" if access else ""
    return f"{'https' if args.ssl else 'http'}://{host}:{args.port}/{query}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    interrupt_on_termination()
    from moshi_mlx.server.main_thread import MainThreadExecutor, run  # aiohttp: only for this command
    from moshi_mlx.server.web import Server, is_loopback, ssl_context

    local = is_loopback(args.host)
    if not local and args.ssl is None:
        raise MoshiError(f"--host {args.host} lets other machines connect: give --ssl DIR (cert.pem, key.pem), as "
                         "browsers give the microphone only to https pages")
    access = None if args.token == "none" else args.token or (None if local else secrets.token_urlsafe(12))
    context = ssl_context(args.ssl) if args.ssl else None
    say = Console(stderr=True, highlight=False, soft_wrap=True)
    request = check_request(args, read_request(args), known := settle_model(args))
    files = choose_model(args, say)
    choose_backend(args.mimi)
    check_model_files(files, "serve")
    persona = make_persona(args, request, files, known)
    note_licence(known)
    pipeline = load_files(args, files, say.status("Loading Moshi...", spinner="dots") if sys.stderr.isatty()
                          else None)
    pipeline.persona = persona  # each conversation's engine feeds it after its warm-up, before the handshake
    static = "page" if args.static is None else None if args.static == "none" else args.static
    server = Server(pipeline, token=access, static=static, outputs=conversation_files(args),
                    max_backlog=args.max_backlog, log=log, inference=MainThreadExecutor())
    try:
        server.warm_up()
        url = address(args, access)
        run(server, args.host, args.port, context, on_ready=lambda: log(f"Moshi is ready at {url} (Ctrl-C to stop)"))
    finally:
        server.close()
        pipeline.close()
    log(f"stopped after {server.conversations} conversations ({server.refused} clients told it was busy)")
