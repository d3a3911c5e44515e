"""The `moshi-mlx` command: one entry point dispatching to a module per subcommand."""

from __future__ import annotations

import importlib
import os
import sys

SUBCOMMANDS = {
    "chat": "Talk with Moshi live (the default).",
    "serve": "Serve Moshi to a browser or Kyutai's clients (Kyutai's websocket protocol).",
    "run": "Run Moshi over a WAV file: its voice and transcript out.",
    "say": "Read text aloud with Kyutai's TTS, spoken as it is generated.",
    "transcribe": "Speech to text (Kyutai's STT) from an audio file, or live from the microphone.",
    "devices": "List audio input and output devices.",
    "download": "Fetch a model's files for offline use.",
    "quantize": "Quantize Kyutai's bf16 weights to 4 or 8 bits.",
    "bench": "Measure speed and memory on this machine with random weights (no download).",
}


def _usage() -> str:
    lines = ["usage: moshi-mlx [SUBCOMMAND] [options]", "", "subcommands:"]
    lines += [f"  {name:<10}{text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "`moshi-mlx SUBCOMMAND --help` for its options; with no subcommand, `chat`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return
    if argv and argv[0] == "--version":
        from moshi_mlx import __version__

        print(f"moshi-mlx {__version__}")
        return
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        print(f"error: unknown subcommand {argv[0]!r}: use one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        sys.exit(2)
    if argv and argv[0] in SUBCOMMANDS:
        name, argv = argv[0], argv[1:]
    else:
        name = "chat"
    # Imported late: a subcommand's heavy imports (mlx, sounddevice) must not slow down or break the others.
    from moshi_mlx import MoshiError

    try:
        try:
            module = importlib.import_module(f"moshi_mlx.app.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"moshi_mlx.app.{name}":
                raise
            raise MoshiError(f"`moshi-mlx {name}` is not part of this version") from None
        module.main(argv)
    except MoshiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `moshi-mlx devices | head`: the reader left; keep Python's exit-time flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as e:
        # The system refused something mid-way (a full disk, a vanished folder): one line, as for the others.
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # a bug or a failing library: one line here, the traceback in a log file
        from .failure import describe

        print(f"error: {describe(name, e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
