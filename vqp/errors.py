"""The one exception type that user-facing layers turn into a one-line message."""


class VqpError(Exception):
    """A problem with the user's input, options or environment (not a bug in vqp)."""
