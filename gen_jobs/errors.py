"""The one exception type that reaches users as a one-line message, not a traceback."""


class UserError(Exception):
    """Bad input from the user: the message says what was wrong and how to fix it.

    The command-line entry points catch it, print `error: <message>` on stderr and
    exit with status 2; every other exception is a bug and keeps its traceback.
    """
