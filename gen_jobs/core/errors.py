"""The one exception type that reaches users as a one-line message, not a traceback."""

from __future__ import annotations

# How Python's traceback names the exception; Ray carries a worker's exception to the
# driver as this text (Ray Data's UserCodeException keeps no picklable cause).
_TRACEBACK_MARK = "gen_jobs.core.errors.UserError: "


class UserError(Exception):
    """Bad input from the user: the message says what was wrong and how to fix it.

    The command-line entry points catch it, print `error: <message>` on stderr and
    exit with status 2; every other exception is a bug and keeps its traceback.
    """


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError behind `error`: itself, a cause, or one raised in a Ray worker (task, actor, Ray Data UDF)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, UserError) and _TRACEBACK_MARK not in str(error):
            return error
        text = str(error)
        if _TRACEBACK_MARK in text:  # the last one is the innermost: the worker's own raise
            message = text.rsplit(_TRACEBACK_MARK, 1)[1].split("\n\n", 1)[0].strip()
            return UserError(message)
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None
