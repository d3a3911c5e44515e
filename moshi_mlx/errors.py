"""User-facing errors: one line that says what went wrong and what to do."""


class MoshiError(Exception):
    """An error caused by the user's input or environment, shown as a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name when it has none (for one-line reports)."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__
