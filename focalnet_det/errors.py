"""User-facing errors: the tools print them as one line (no traceback) and exit non-zero."""


class UserError(Exception):
    """A mistake in what the user gave us (file, key, value); the message names the culprit."""


def one_line(error):
    """The line to show for ``error``. A UserError raised in a DataLoader worker or a launched process arrives
    wrapped in a traceback that ends with ``...UserError: <message>``: the message is taken from there."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "UserError: " in line:
            return line.split("UserError: ", 1)[1]
    return lines[-1] if lines else type(error).__name__


def run_tool(main):
    """A tool's ``__main__``: exit with ``main()``'s status, or print a UserError as one line
    (``<tool>: error: ...``) and exit 2."""
    import os
    import sys

    try:
        sys.exit(main())
    except UserError as e:
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        sys.exit(2)
