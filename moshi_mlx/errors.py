"""User-facing errors: one line that says what went wrong and what to do."""


class MoshiError(Exception):
    """An error caused by the user's input or environment, shown as a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
