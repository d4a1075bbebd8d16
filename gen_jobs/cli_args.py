"""Shared command-line plumbing: parse with argparse, validate with pydantic, fail in one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from gen_jobs.core.errors import UserError, user_error_in


def print_error(message: str) -> None:
    """`error: <message>` on stderr as one line, whatever it quotes (newlines, undecodable file names)."""
    line = " ".join(message.split("\n")).encode("utf-8", "backslashreplace").decode("utf-8")
    print(f"error: {line}", file=sys.stderr)


class _Verbose(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        from gen_jobs.core.console import set_verbose

        set_verbose()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <what>; see <prog> --help`, exit 2 (no usage block);
    every command takes --verbose (Ray's and libraries' own output too: gen_jobs.core.console)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action=_Verbose, nargs=0, default=argparse.SUPPRESS,
                          help="show Ray's and libraries' own log lines too (also: RAYGEN_LOG_LEVEL=INFO)")

    def error(self, message: str):
        print_error(f"{message}; see `{self.prog} --help`")
        sys.exit(2)


def validate_args(cls: type[BaseModel], values: dict) -> BaseModel:
    from gen_jobs.core.recipes import describe_validation_error

    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise UserError(describe_validation_error(e, cls, "argument")) from e


def run_main(body: Callable[[], int | None]) -> int:
    """Run a command: UserError (here or in a Ray worker) -> `error: ...` on stderr and exit 2; storage that stays
    unreachable -> `error: ...` and exit 1 (work already written is kept); Ctrl-C -> exit 130."""
    from gen_jobs.core import storage

    try:
        return body() or 0
    except UserError as e:  # (a Ray task's error subclasses its cause: its text is a whole traceback)
        print_error(str(user_error_in(e)))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's --help (0) and its one-line errors (2): a return code, as for the rest
        return e.code if isinstance(e.code, int) else 2
    except Exception as e:
        found = user_error_in(e)  # raised in a Ray worker: the same one line as in the driver
        if found is not None:
            print_error(str(found))
            return 2
        failure = storage.describe_failure(e)
        if failure is None:
            raise
        print_error(f"{failure}. Everything written whole so far is kept; run the same command again "
                    "(for generate, with --resume) once the store answers")
        return 1
