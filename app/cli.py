"""The `moshi-mlx` command: one entry point dispatching to a module per subcommand."""

import importlib
import sys

SUBCOMMANDS = {
    "chat": "Talk with Moshi live (the default).",
    "run": "Run Moshi over a WAV file: its voice and transcript out.",
    "devices": "List audio input and output devices.",
    "download": "Fetch a model's files for offline use.",
    "quantize": "Quantize Kyutai's bf16 weights to 4 or 8 bits.",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: moshi-mlx [SUBCOMMAND] [options]\n\nsubcommands:")
        for name, text in SUBCOMMANDS.items():
            print(f"  {name:<10}{text}")
        return
    if argv and argv[0] in SUBCOMMANDS:
        name, argv = argv[0], argv[1:]
    else:
        name = "chat"
    module = importlib.import_module(f"moshi_mlx.app.{name}")
    module.main(argv)


if __name__ == "__main__":
    main()
