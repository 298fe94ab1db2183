"""Pieces every `dkit` command module shares: the epilog, the parent parsers, the command table, kit loading.

A command module describes its subcommands as `Command` rows (name, help, description, handler, whether it
takes the kit arguments, its own arguments) and registers them with `register_commands`. Nothing here
imports a stage module: those are imported inside the handlers, so a base (edge-only) install can run
`dkit run` and `dkit serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dkit.core.errors import DkitError

log = logging.getLogger("dkit")

# The one table of exit codes (dkit.core.errors gives each error its code). Every command's --help lists the
# codes that command can return (Command.exits), with these meanings unless the command words one its own way.
EXIT_CODES: dict[int, str] = {
    0: "done",
    1: "a run failed",
    2: "bad arguments",
    3: "a model or data file is missing (offline)",
    4: "an optional extra is not installed",
    130: "interrupted",
}
ExitCodes = Mapping[int, "str | None"]  # code -> this command's wording (None: EXIT_CODES')
# Commands on a kit (label, train, ...): a kit YAML that can be bad, files to download, extras to import.
KIT_EXITS: ExitCodes = {0: None, 1: None, 2: "bad kit YAML or arguments", 3: None, 4: None, 130: None}
# Commands without a kit (run, serve, doctor, ...): no kit YAML to be bad, nothing to download, no extra needed
# (a backend that is not installed is a wrong --backend: 2).
DEVICE_EXITS: ExitCodes = {0: None, 1: "a run failed (a broken bundle, a failed check)",
                           2: "bad arguments (an unknown option or value, a path that is no bundle)", 130: None}
KIT_ENVIRONMENT = "environment: DKIT_HOME (model store, default ~/.cache/dkit), DKIT_OFFLINE=1 (never download).\n"
DEVICE_ENVIRONMENT = ("environment: DKIT_HOME (where dkit run keeps its measured backend choice, default "
                      "~/.cache/dkit).\n")


def exit_codes_text(exits: ExitCodes) -> str:
    """'exit codes: 0 done, 2 bad arguments, 130 interrupted.' from a command's codes, wrapped at 110 columns."""
    import textwrap

    words = ", ".join(f"{code} {text or EXIT_CODES[code]}" for code, text in sorted(exits.items()))
    return textwrap.fill(f"exit codes: {words}.", 110) + "\n"


EPILOG = exit_codes_text(KIT_EXITS) + KIT_ENVIRONMENT  # `dkit --help`: every code

Handler = Callable[[argparse.Namespace], int]
Arg = tuple[tuple[str, ...], dict[str, Any]]


def arg(*flags: str, **kwargs: Any) -> Arg:
    """One `add_argument(*flags, **kwargs)` call, as data."""
    return flags, kwargs


@dataclass(frozen=True)
class FromEnv:
    """An argument default read from the environment when the parser is built (not when a module is imported)."""

    var: str


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help line, description, handler, kit arguments or not, its own arguments, the
    exit codes it can return (None: a kit command's KIT_EXITS, a device command's DEVICE_EXITS) and the environment
    line of its --help."""

    name: str
    help: str
    description: str
    handler: Handler | None
    kit: bool = False
    arguments: tuple[Arg, ...] = ()
    exits: ExitCodes | None = None
    environment: str | None = None  # the epilog's environment line ("" none); None: by kind, as exits


@dataclass(frozen=True)
class Parents:
    """The shared parent parsers: verbosity (-v/-q) for every command, the kit arguments for kit commands."""

    verbosity: argparse.ArgumentParser
    kit: argparse.ArgumentParser

    def of(self, command: Command) -> list[argparse.ArgumentParser]:
        return [self.verbosity, self.kit] if command.kit else [self.verbosity]


def kit_arguments() -> argparse.ArgumentParser:
    """The parent parser of the commands that work on a kit: KIT, --data, --out, --set."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("kit", metavar="KIT", help="kit YAML file, e.g. datasets/coco128/kit.yaml")
    p.add_argument("--data", metavar="DIR", help="folder of images (overrides data.images in the kit)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<kit name>/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a kit value, validated like the file; repeatable "
                        "(e.g. --set teacher.imgsz=1280 --set export.precisions=[fp32,int8])")
    return p


def add_command(sub: argparse._SubParsersAction, command: Command, parents: Parents,
                **parser_kwargs: Any) -> argparse.ArgumentParser:
    """Add `command` to the subparsers `sub`; `parser_kwargs` go to `add_parser` (epilog, formatter_class)."""
    p = sub.add_parser(command.name, help=command.help, description=command.description,
                       parents=parents.of(command), **parser_kwargs)
    for flags, kwargs in command.arguments:
        p.add_argument(*flags, **{k: os.environ.get(v.var) if isinstance(v, FromEnv) else v
                                  for k, v in kwargs.items()})
    if command.handler is not None:
        p.set_defaults(handler=command.handler)
    return p


def register_commands(sub: argparse._SubParsersAction, parents: Parents,
                      commands: Iterable[Command]) -> list[argparse.ArgumentParser]:
    """Add top-level commands (with the shared epilog, descriptions printed as written), in order."""
    return [add_command(sub, c, parents, epilog=epilog_for(c), formatter_class=argparse.RawDescriptionHelpFormatter)
            for c in commands]


def exits_of(command: Command) -> ExitCodes:
    """The exit codes `command` can return: its own `exits`, else a kit command's (bad kit YAML, a missing model
    file, a missing extra) or a device command's; a group (handler None, e.g. `bench`) the kit ones, which cover
    its subcommands'."""
    if command.exits is not None:
        return command.exits
    return KIT_EXITS if command.kit or command.handler is None else DEVICE_EXITS


def epilog_for(command: Command) -> str:
    """The --help epilog of `command`: exactly the exit codes it can return (EXIT_CODES' wording unless it has its
    own), and the environment variables it reads."""
    if command.environment is not None:
        return exit_codes_text(exits_of(command)) + command.environment
    kit = command.kit or command.handler is None
    return exit_codes_text(exits_of(command)) + (KIT_ENVIRONMENT if kit else DEVICE_ENVIRONMENT)


def load(args: argparse.Namespace):
    """The kit named on the command line, validated, with its overrides applied."""
    from dkit.core.kit import load_kit

    kit = load_kit(args.kit, data=args.data, overrides=args.overrides)
    if kit.teacher.is_random:
        log.warning(
            "teacher.pretrained is 'random': the teacher is UNTRAINED. Labels, evaluation and bundles "
            "made from this kit are meaningless and are marked as such. Use it for tests only."
        )
    return kit


@contextlib.contextmanager
def edge_errors() -> Iterator[None]:
    """Re-raise the edge's own exceptions as the CLI's errors, hence its exit codes (the edge has no
    dkit.core.errors dependency of its own)."""
    from dkit.core.errors import UsageError
    from dkit.edge.bundle import BundleError, NoSuchBundleError
    from dkit.edge.infer.runtime import RuntimeConfigError
    from dkit.edge.stream.sources import SourceError

    # the first match wins: a path that is no bundle is a wrong argument (2), a broken bundle a failure (1)
    errors = {NoSuchBundleError: UsageError, BundleError: DkitError, RuntimeConfigError: UsageError,
              SourceError: UsageError}
    try:
        yield
    except tuple(errors) as e:
        raise next(v for k, v in errors.items() if isinstance(e, k))(str(e)) from e


def _plain(value: Any) -> Any:
    """Dataclass dict -> YAML-safe values (paths as strings)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


# The training stages (the `distill` and `export` extras) need Python 3.11+; the base install (dkit run, serve,
# doctor, device-pack) runs on 3.10 too. `make compat` checks both statically (vermin).
TRAINING_PYTHON = (3, 11)


class UnsupportedPythonError(DkitError):
    """A training stage run on a Python the training extras do not support (exit 4, like a missing extra)."""

    exit_code = 4


def require_training_python(what: str) -> None:
    """Raise UnsupportedPythonError, one line, when this interpreter is older than TRAINING_PYTHON."""
    import sys

    if tuple(sys.version_info[:2]) < TRAINING_PYTHON:
        have = ".".join(str(v) for v in sys.version_info[:3])
        need = ".".join(str(v) for v in TRAINING_PYTHON)
        raise UnsupportedPythonError(
            f"{what} needs Python {need} or newer (this is Python {have}): the training extras ('distill', "
            f"'export') do not support it; the base install (dkit run, dkit serve) does. Train and export on a "
            f"machine with Python {need}+, then copy the bundle here")


def import_stage(module: str, *, what: str, extra: str):
    """Import a stage module (dkit.distill.*, dkit.export.*) for a command; a third-party package it needs that
    is not installed (a base install has no Pillow, torch, ...) is a MissingExtraError naming the extra: exit 4.
    On a Python older than the training side supports (TRAINING_PYTHON) it is an UnsupportedPythonError: exit 4."""
    import importlib

    from dkit.core.errors import MissingExtraError

    require_training_python(what)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "dkit":
            raise
        raise MissingExtraError(what, e.name or module, extra) from e

