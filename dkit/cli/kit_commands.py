"""`dkit check` and `dkit fetch`: commands about the kit itself (is it valid, are its files in the model store)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from dkit.cli.common import Command, Parents, _plain, import_stage, load, log, register_commands
from dkit.core.errors import NotInStoreError


def cmd_check(args: argparse.Namespace) -> int:
    import yaml

    kit = load(args)
    note = kit.abstain_note()
    if note:
        log.warning("%s", note)
    doc = _plain(dataclasses.asdict(kit))
    sys.stdout.write(f"# {args.kit}: valid. Runs go to {kit.run_dir(args.out)}\n")
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=110, default_flow_style=None))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from dkit.core.store import ModelStore

    kit_files = import_stage("dkit.distill.kit_files", what="dkit fetch", extra="distill").kit_files
    kit = load(args)
    store = ModelStore()
    sys.stdout.write(f"model store: {store.root}{' (offline)' if store.offline else ''}\n")
    files = kit_files(kit, store)
    for f in files:
        if f.note:
            sys.stdout.write(f"  {f.role:8s} {f.note}\n")
        elif f.problem:
            sys.stdout.write(f"  {f.role:8s} MISSING  {f.problem}{f.optional}\n")
        else:
            sys.stdout.write(f"  {f.role:8s} ok       {f.found}\n")
    missing = sum(f.missing for f in files)
    if missing:
        sys.stderr.write(f"dkit: error: {missing} file(s) missing from the model store (see above)\n")
        return NotInStoreError.exit_code
    return 0


COMMANDS = (
    Command("check", "validate a kit YAML and print it resolved",
            "Validate a kit YAML (with any --data/--set overrides) and print the resolved kit as YAML, "
            "with absolute paths and every default filled in.", cmd_check, kit=True,
            exits={0: None, 2: "bad kit YAML or arguments", 130: None}),
    Command("fetch", "put the kit's weights and images into the model store",
            "Resolve every file the kit needs (teacher weights, student starting weights, images) in the "
            "model store ($DKIT_HOME), downloading what is missing. Run it on a machine with a network, "
            "then copy $DKIT_HOME to an offline one.", cmd_fetch, kit=True),
)


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `check` and `fetch` to the `dkit` subcommands."""
    register_commands(sub, parents, COMMANDS)
