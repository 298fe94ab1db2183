"""The `dkit` command line: --help everywhere, exit codes, one-line errors."""

from __future__ import annotations

import pytest

from dkit.cli.main import build_parser, main
from dkit.core.version import __version__
from tests.conftest import RECIPES, run_dkit, run_main

KIT = str(RECIPES / "imagenette" / "kit.yaml")

HELP = [
    ([], "label"),
    (["check"], "--set KEY.PATH=VALUE"),
    (["fetch"], "DKIT_HOME"),
    (["label"], "--data DIR"),
    (["train"], "--out RUN_DIR"),
    (["eval"], "--ground-truth PATH"),
    (["export"], "bundle"),
    (["run"], "--source SRC"),
    (["serve"], "--port"),
    (["serve"], "--admin-token-file"),
    (["doctor"], "BUNDLE"),
    (["service", "serve"], "--kiosk"),
    (["bench", "attack"], "--serve-set"),
    (["bench"], "runtime"),
    (["bench", "label"], "KIT"),
    (["bench", "runtime"], "--source DIR"),
    (["bench", "serve"], "BUNDLE"),
]


@pytest.mark.parametrize(("command", "text"), HELP, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_help_everywhere(command, text, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dkit") and text in out


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


MISSING_BUNDLE = [
    ["run", "no/such/bundle", "--source", "0"],
    ["serve", "no/such/bundle"],
    ["bench", "runtime", "no/such/bundle", "--source", "."],
]


@pytest.mark.parametrize("argv", MISSING_BUNDLE, ids=lambda v: " ".join(v[:2]))
def test_edge_commands_name_a_missing_bundle(argv, capsys):
    assert main(argv) == 2  # a wrong argument, like a kit path that does not exist
    captured = capsys.readouterr()
    assert captured.out == ""  # no fake output
    assert "no/such/bundle: no such bundle" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("argv", [["label"], ["run", "b"], ["frobnicate"], ["check", KIT, "--set"]])
def test_argument_errors_exit_2(argv, capsys):
    result = run_main(capsys, *argv)
    assert result.returncode == 2 and "usage: dkit" in result.stderr


def test_every_subcommand_has_a_handler():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "==SUPPRESS==" or a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == {"check", "fetch", "label", "train", "eval", "export", "run", "serve", "bench", "doctor",
                                "service", "device-pack"}


def test_python_dash_m_is_the_console_script():
    result = run_dkit("--version")
    assert result.returncode == 0 and __version__ in result.stdout
