"""The one exception type that user-facing layers turn into a one-line message."""


class VqpError(Exception):
    """A problem with the user's input, options or environment (not a bug in vqp)."""


def one_line(e: BaseException) -> str:
    """Any exception (a library's, often multi-line) as the first line of its text, else its type's name."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
