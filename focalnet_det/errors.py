"""User-facing errors: the tools print them as one line (no traceback) and exit non-zero."""


class UserError(Exception):
    """A mistake in what the user gave us (file, key, value); the message names the culprit."""
