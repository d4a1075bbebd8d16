"""Shared command-line plumbing: parse with argparse, validate with pydantic, fail in one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from gen_jobs.errors import UserError


def validate_args(cls: type[BaseModel], values: dict) -> BaseModel:
    from gen_jobs.recipes import describe_validation_error

    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise UserError(describe_validation_error(e, cls, "argument")) from e


def run_main(body: Callable[[], int | None]) -> int:
    """Run a command: UserError -> `error: ...` on stderr and exit 2; storage that stays
    unreachable -> `error: ...` and exit 1 (work already written is kept); Ctrl-C -> exit 130."""
    from gen_jobs import storage

    try:
        return body() or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        failure = storage.describe_failure(e)
        if failure is None:
            raise
        print(f"error: {failure}. Everything written whole so far is kept; run the same command again "
              "(for generate, with --resume) once the store answers", file=sys.stderr)
        return 1
