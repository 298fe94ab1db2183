"""`dkit service run|serve`: the generated systemd units, validated by systemd's own `systemd-analyze verify` where it
is installed (and always by the parser below: systemd's quoting, specifiers and $ expansion, undone), plus the
kiosk autostart files and the atomic writes."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dkit.cli.main import main
from dkit.cli.service import exec_quote

DKIT = Path(sys.executable).parent / "dkit"
ANALYZE = shutil.which("systemd-analyze")
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "read-only"}


def systemd_words(line: str) -> list[str]:
    """ExecStart= words as systemd reads them: double or single quotes, C escapes in quotes, then %% -> % and
    $$ -> $ (specifier and variable expansion of literal text)."""
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        word = ""
        if line[i] in "\"'":
            quote, i = line[i], i + 1
            while line[i] != quote:
                if line[i] == "\\":
                    i += 1
                word += line[i]
                i += 1
            i += 1
            assert i == len(line) or line[i] == " ", f"a quote must end its word: {line!r}"
        else:
            while i < len(line) and line[i] != " ":
                assert line[i] not in "\"'\\", f"unquoted special character in {line!r}"
                word += line[i]
                i += 1
        words.append(word.replace("%%", "\x00").replace("$$", "$").replace("\x00", "%"))
    return words


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat, as Environment= does); comments and blank lines skipped."""
    units: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            section = units.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None and key == key.strip() and key.isidentifier(), line
        section.setdefault(key, []).append(value)
    return units


def verify(unit: Path) -> None:
    """`systemd-analyze verify`: exit 0 and not one complaint about this file (unknown keys only warn)."""
    if ANALYZE is None:  # test_systemd_analyze_catches_a_bad_unit is skipped and says so; the parser checks ran
        return
    done = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=30)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def _dkit_with_spaces(tmp_path: Path) -> Path:
    """A real executable dkit at a path with a space in it."""
    folder = tmp_path / "my tools"
    folder.mkdir()
    exe = folder / "dkit"
    shutil.copy(DKIT if DKIT.is_file() else shutil.which("dkit"), exe)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    """A folder named like a bundle at a path with spaces (the unit only names it; nothing loads it)."""
    b = tmp_path / "event day" / "judge bundle"
    b.mkdir(parents=True)
    return b


def test_serve_unit_verifies_and_quotes_paths(tmp_path, bundle_dir, capsys, monkeypatch):
    monkeypatch.setenv("DKIT_ADMIN_TOKEN", "s3cret-in-my-shell")
    exe = _dkit_with_spaces(tmp_path)
    out = tmp_path / "deploy"
    db = tmp_path / "data 100%" / "kiosk $db.sqlite"
    rc = main(["service", "serve", str(bundle_dir), "--host", "0.0.0.0", "--port", "8080", "--db", str(db),
               "--set", "submit_rate=0.5", "--dkit", str(exe), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    unit_file = out / "dkit-serve.service"
    assert f"wrote {unit_file}" in printed
    assert "sudo useradd --system" in printed and " dkit\n" in printed
    assert ("sudo cp " + str(unit_file).replace(" ", "\\ ") in printed or f"sudo cp '{unit_file}'" in printed)
    assert "sudo systemctl daemon-reload && sudo systemctl enable --now dkit-serve" in printed
    text = unit_file.read_text()
    assert "s3cret" not in text and "DKIT_ADMIN_TOKEN=" not in text  # the token never goes into the unit
    verify(unit_file)

    unit = parse_unit(text)
    service = unit["Service"]
    assert service["User"] == ["dkit"] and service["Restart"] == ["on-failure"] and service["RestartSec"] == ["5"]
    assert service["WorkingDirectory"] == ["/var/lib/dkit"] and service["StateDirectory"] == ["dkit"]
    assert "DKIT_HOME=/var/lib/dkit" in service["Environment"]
    assert service["EnvironmentFile"] == ["/etc/dkit/dkit-serve.env"]
    assert {k: service[k] for k in HARDENING} == {k: [v] for k, v in HARDENING.items()}
    assert systemd_words(service["ReadWritePaths"][0]) == [str(db.parent)]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert systemd_words(service["ExecStart"][0]) == [
        str(exe), "serve", str(bundle_dir), "--host", "0.0.0.0", "--port", "8080", "--db", str(db),
        "--set", "submit_rate=0.5"]
    assert list(out.iterdir()) == [unit_file]  # no temporary file left behind
    assert stat.S_IMODE(unit_file.stat().st_mode) == 0o644


def test_run_unit_makes_sources_absolute(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["dkit", "service", "run", "bundle", "--source", "rtsp://user:pw@cam/stream"])
    (tmp_path / "bundle").mkdir()
    (tmp_path / "shots").mkdir()
    rc = main(["service", "run", "bundle", "--source", "0", "--source", "rtsp://user:pw@cam/stream",
               "--source", "shots", "--jsonl", "--precision", "int8", "--save", "out/run.mp4", "--name", "cam-1",
               "--user", "vision", "--restart-sec", "2.5", "--dkit", str(DKIT)])
    assert rc == 0
    captured = capsys.readouterr()
    unit = parse_unit(captured.out)
    service = unit["Service"]
    assert systemd_words(service["ExecStart"][0]) == [
        str(DKIT), "run", str(tmp_path / "bundle"), "--source", "0", "--source", "${DKIT_SOURCE_1}",
        "--source", str(tmp_path / "shots"), "--jsonl", "--save", str(tmp_path / "out/run.mp4"), "--precision", "int8"]
    assert "rtsp://***@cam/stream" in captured.out  # the invocation comment, redacted
    assert "pw" not in captured.out  # the stream's password goes to the root-only EnvironmentFile, not the unit
    assert service["EnvironmentFile"] == ["/etc/dkit/cam-1.env"]
    assert "DKIT_SOURCE_1=rtsp://user:pw@cam/stream" in captured.err and "umask 077" in captured.err
    assert service["User"] == ["vision"] and service["RestartSec"] == ["2.5"]
    assert systemd_words(service["ReadWritePaths"][0]) == [str(tmp_path / "out")]
    assert "enable --now cam-1" in captured.err and "--groups video vision" in captured.err
    path = tmp_path / "cam-1.service"
    path.write_text(captured.out)
    verify(path)


def test_kiosk_autostart_files(tmp_path, bundle_dir, capsys):
    out = tmp_path / "deploy"
    assert main(["service", "serve", str(bundle_dir), "--port", "8001", "--kiosk", "--dkit", str(DKIT),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["dkit-kiosk.desktop", "dkit-serve.service", "labwc-autostart"]
    desktop = configparser.ConfigParser(interpolation=None)
    desktop.optionxform = str
    desktop.read(out / "dkit-kiosk.desktop")
    entry = desktop["Desktop Entry"]
    assert entry["Type"] == "Application"
    exec_line = entry["Exec"]
    assert exec_line.startswith('sh -c "') and exec_line.endswith('"') and "%" not in exec_line
    assert "chromium-browser --kiosk --noerrdialogs --disable-infobars http://127.0.0.1:8001/" in exec_line
    assert "curl -sf -o /dev/null http://127.0.0.1:8001/healthz" in exec_line
    labwc = (out / "labwc-autostart").read_text().splitlines()
    assert labwc[0].startswith("#") and labwc[1].startswith("sh -c '") and labwc[1].endswith("' &")
    assert subprocess.run(["sh", "-n", "-c", labwc[1]]).returncode == 0  # valid shell
    assert "~/.config/autostart/" in printed and "~/.config/labwc/autostart" in printed
    verify(out / "dkit-serve.service")


def test_refusals(tmp_path, bundle_dir, capsys):
    assert main(["service", "serve", str(bundle_dir), "--admin-token", "abc"]) == 2
    assert "never goes into a unit" in capsys.readouterr().err
    assert main(["service", "serve", str(bundle_dir), "--out", str(tmp_path / "o"), "--print"]) == 2
    assert main(["service", "run", str(bundle_dir), "--source", "0", "--name", "bad name"]) == 2
    assert main(["service", "run", str(bundle_dir), "--source", "0", "--workdir", "relative"]) == 2
    assert not (tmp_path / "o").exists()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    assert main(["service", "serve", str(bundle_dir), "--admin-token-file", str(token), "--dkit", str(DKIT)]) == 0
    text = capsys.readouterr().out
    assert "EnvironmentFile" not in text and "t0ken" not in text and f"--admin-token-file {token}" in text


def test_exec_quote_round_trips():
    for word in ["plain", "/a b/c", 'say "hi"', "back\\slash", "100%", "$HOME", "it's", "a;b", "", "-x"]:
        assert systemd_words(exec_quote(word) if word else '""') == [word]
    with pytest.raises(Exception, match="newline"):
        exec_quote("a\nb")


def test_help_and_default_print(bundle_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["service", "serve", "--help"])
    assert info.value.code == 0 and "--kiosk" in capsys.readouterr().out
    assert main(["service", "serve", str(bundle_dir), "--dkit", str(DKIT)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# dkit-serve.service") and "[Service]" in captured.out
    assert "sudo systemctl enable --now dkit-serve" in captured.err  # the commands stay out of the unit on stdout


@pytest.mark.skipif(os.name != "posix", reason="POSIX paths")
def test_default_executable_is_absolute(bundle_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(DKIT), "service", "run", str(bundle_dir), "--source", "0"])
    assert main(["service", "run", str(bundle_dir), "--source", "0"]) == 0
    service = parse_unit(capsys.readouterr().out)["Service"]
    exe = systemd_words(service["ExecStart"][0])[0]
    assert Path(exe).is_absolute() and os.access(exe, os.X_OK)


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed: the units were checked by the parser only")
def test_systemd_analyze_catches_a_bad_unit(tmp_path):
    """The validator is real: a unit with a relative ExecStart= fails it."""
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=relative/dkit serve b\n")
    done = subprocess.run([ANALYZE, "verify", str(bad)], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "bad.service" in done.stderr
