"""Development aids: random-weight checkpoints in Kyutai's formats, operation counting, resident memory."""
