"""The `raygen` console script: one sub-command per job module.

    raygen demo | train | generate | verify | quality | serve  [--help]

Each sub-command is a plain module with `main(argv)`, also runnable as
`python -m gen_jobs.<job>` (what `ray job submit` runs); `serve` is `python -m serving.run`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("gen_jobs.demo", "train each family on its bundled data, generate, verify, score"),
    "train": ("gen_jobs.train", "train a model family on Ray Train"),
    "generate": ("gen_jobs.generate", "generate a sharded Parquet dataset with Ray Data"),
    "verify": ("gen_jobs.verify", "check a dataset against its manifest"),
    "quality": ("gen_jobs.quality_report", "a dataset's quality figures and its dataset card (README.md)"),
    "serve": ("serving.run", "serve models over an OpenAI-compatible HTTP API (Ray Serve)"),
}


def usage() -> str:
    lines = ["usage: raygen COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run `raygen COMMAND --help` for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from gen_jobs import __version__

        print(f"raygen {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
