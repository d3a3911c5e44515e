"""Development aids: random-weight checkpoints in Kyutai's formats, a tiny text tokenizer, operation counting,
resident memory, a virtual sound card (Linux)."""
