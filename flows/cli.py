"""The ``memscore`` command line: one subcommand per module.

Each subcommand lives in its own module with ``add_arguments(parser)`` and
``run(args) -> int``; :data:`COMMANDS` maps names to those modules. Errors that
mean "the run could not do its job" (unknown model, missing weights, unreadable
SOURCE, bad human data) print one line ``memscore: error: ...`` and exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from memscore.errors import UserError, find_user_error  # the one marker; UserError is re-exported for the commands

COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("memscore.flows.score_cli", "score every image under SOURCE and write Parquet to DEST"),
    "sample": ("memscore.flows.sample_cli", "write a small sample archive of real photos (from scikit-image)"),
    "models": ("memscore.flows.models_cli", "list the registered models, their size and their feature layers"),
    "analyze": ("memscore.flows.analyze_cli", "compare scores with human memorability data (Spearman, bootstrap CIs, split-half)"),
    "sql": ("memscore.flows.sql_cli", "run DuckDB SQL over a memscore output folder (views scores and errors)"),
    "train": ("memscore.flows.train_cli", "train a model (m3m, resmem-retrain, memnet-baseline, ...) on your human data"),
    "prune": ("memscore.flows.prune_cli", "remove from DEST the rows of files no longer in SOURCE (deleted or renamed)"),
    "compare": ("memscore.flows.compare_cli", "compare models on the same test images: Spearman with CI, size, speed"),
    "report": ("memscore.flows.report_cli", "write an offline HTML report of DEST: provenance, histograms, gallery, model vs human"),
}


def parse_storage_options(text: str | None) -> dict | None:
    """``--storage-options`` JSON as a dict (None when not given); a UserError otherwise."""
    import json

    if not text:
        return None
    try:
        options = json.loads(text)
    except ValueError as error:
        raise UserError(f"--storage-options is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise UserError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return options


class CommandLineError(SystemExit):
    """A refused command line, already shown as one line; exit status 1."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (unknown option, a value out of range, a missing
    argument) are one line ``memscore: error: <command>: <message>`` on stderr and exit
    status 1, like every other input memscore refuses (argparse's own: usage and exit 2).
    ``--help`` is unchanged (exit 0). Its commands' parsers are of this class too."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.split()[-1] if " " in self.prog else ""
        line = " ".join(message.split())
        print(f"memscore: error: {command + ': ' if command else ''}{line}", file=sys.stderr)
        raise CommandLineError(1)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="memscore",
        description="Score image archives with memorability models and check them against human memory data.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=module.__doc__.strip().splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=getattr(module, "EPILOG", None))
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; a command's options may come before, between or after its positionals.

    Plain argparse stops taking positionals once an option follows the first one
    (``memscore sql DEST --csv SQL`` would be refused), so each command's own
    arguments are parsed with ``parse_intermixed_args``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, _ = parser.parse_known_args(argv)  # the command (and -h / errors at the top level)
    position = argv.index(args.command)
    command_parser = _command_parsers(parser)[args.command]
    return command_parser.parse_intermixed_args(argv[position + 1:], namespace=argparse.Namespace(command=args.command))


def _command_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps the subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("the parser has no commands")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
    except CommandLineError as refused:  # the line is printed already
        return int(refused.code)
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("memscore: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"memscore: error: {user_error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
