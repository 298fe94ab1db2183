"""`dkit service run|serve ...`: a systemd unit that starts `dkit run` or `dkit serve` at boot, and (kiosk) a Chromium
kiosk-mode autostart for the desktop session.

    dkit service run /opt/dkit/bundle --source 0 --jsonl              # prints dkit-run.service
    dkit service serve /opt/dkit/bundle --kiosk --out deploy/          # writes dkit-serve.service, dkit-kiosk.desktop,
                                                                       # labwc-autostart into deploy/ (atomically)

The subcommands take the same arguments as `dkit run` / `dkit serve` (the rows of dkit.cli.device.RUN / SERVE, so
they cannot drift apart), and the unit's ExecStart is that command line with every path made absolute, quoted for
systemd. The unit runs as a dedicated system user (User=dkit; the `useradd --system` line is printed), restarts on
failure, keeps its state in /var/lib/dkit (StateDirectory=, WorkingDirectory=, DKIT_HOME), is hardened
(NoNewPrivileges, ProtectSystem=strict with ReadWritePaths= for the folders it writes, ProtectHome=read-only,
PrivateTmp) and, for the kiosk, reads the admin token from an EnvironmentFile= (DKIT_ADMIN_TOKEN=...), never from
the unit itself. The install commands go to stderr when the files go to stdout, to stdout when --out writes them.
Only the standard library: it runs on a base install.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dkit.cli.common import Arg, Command, Parents, add_command, arg, epilog_for, register_commands
from dkit.cli.device import RUN, SERVE
from dkit.core.errors import UsageError
from dkit.core.files import atomic_write

STATE_DIR = "/var/lib/dkit"  # StateDirectory=dkit: created by systemd, owned by the service user, writable
SAFE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")
CREDENTIALS = re.compile(r"^([a-zA-Z][\w+.-]*://)[^/@]*@")  # rtsp://user:pass@host/...


class Raw(str):
    """An ExecStart= word written as is: `${VAR}`, which systemd replaces with one argument from EnvironmentFile=."""


@dataclass(frozen=True)
class GeneratedFile:
    name: str
    text: str
    mode: int = 0o644


# ------------------------------------------------------------------------------------------ quoting


def _check_line(value: str) -> str:
    if any(c in value for c in "\n\r\x00"):
        raise UsageError(f"{value!r}: a newline or NUL cannot go into a systemd unit")
    return value


def exec_quote(word: str) -> str:
    """One ExecStart= word: bare when it is plain, else in double quotes with \\ and " escaped; % (specifiers) and $
    (variable expansion) doubled, so the program receives `word` exactly."""
    _check_line(word)
    if isinstance(word, Raw) or SAFE.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def value_quote(word: str) -> str:
    """One word of a quoted list setting (Environment=, ReadWritePaths=): as exec_quote, but $ is not special there."""
    _check_line(word)
    if SAFE.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def path_value(path: str) -> str:
    """A single-path setting (WorkingDirectory=, EnvironmentFile=): taken whole, only specifiers expanded."""
    return _check_line(path).replace("%", "%%")


# ------------------------------------------------------------------------------------------ the command line


def dkit_executable(explicit: str | None = None) -> list[str]:
    """The absolute command that starts this dkit: --dkit, else argv[0] when it is the `dkit` script, else `dkit` on
    PATH, else this Python with `-m dkit`."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_absolute():
            found = shutil.which(explicit)
            path = Path(found) if found else path.absolute()
        return [str(path)]
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "dkit" and argv0.is_file() and os.access(argv0, os.X_OK):
        return [str(argv0.absolute())]
    found = shutil.which("dkit")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "dkit"]


def _dest(flags: tuple[str, ...], kwargs: dict) -> str:
    return kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")


def _absolute(value: str) -> str:
    return str(Path(value).expanduser().absolute())


PATH_OPTIONS = {"bundle", "save", "db", "admin_token_file"}


def _source(spec: str) -> str:
    """A --source that names a local file or folder becomes absolute; cameras and URLs stay as they are."""
    if spec.isdigit() or "://" in spec or spec.startswith("/dev/"):
        return spec
    return _absolute(spec) if Path(spec).expanduser().exists() else spec


def command_line(command: Command, args: argparse.Namespace,
                 secrets: dict[str, str] | None = None) -> list[str]:
    """`dkit run|serve ...` rebuilt from the parsed arguments: the positional, then each option that differs from its
    default, in the order the command declares them. A --source URL with a password in it becomes `${DKIT_SOURCE_N}`
    and goes into `secrets` (for the EnvironmentFile=): a unit file is readable by every user."""
    words: list[str] = [command.name]
    for flags, kwargs in command.arguments:
        dest = _dest(flags, kwargs)
        value = getattr(args, dest, None)
        positional = not flags[0].startswith("-")
        if dest in PATH_OPTIONS and isinstance(value, str):
            value = _absolute(value)
        if dest == "source" and value:
            value = [_source(v) for v in value]
            if secrets is not None:
                for i, v in enumerate(value):
                    if CREDENTIALS.match(v):
                        var = f"DKIT_SOURCE_{len(secrets) + 1}"
                        secrets[var] = v
                        value[i] = Raw("${" + var + "}")
        if positional:
            words.append(str(value))
        elif kwargs.get("action") == "store_true":
            if value:
                words.append(flags[-1])
        elif kwargs.get("action") == "append":
            for item in value or ():
                words += [flags[-1], item if isinstance(item, Raw) else str(item)]
        elif value is not None and value != kwargs.get("default"):
            words += [flags[-1], f"{value:g}" if isinstance(value, float) else str(value)]
    return words


# ------------------------------------------------------------------------------------------ the files


def _under(path: str, folder: str) -> bool:
    return Path(path) == Path(folder) or Path(folder) in Path(path).parents


def write_paths(kind: str, args: argparse.Namespace, home: str) -> list[str]:
    """The folders the service writes outside its StateDirectory: they must exist (ReadWritePaths=)."""
    wanted = [home]
    if kind == "serve":
        wanted.append(str(Path(_absolute(args.db)).parent))
    if kind == "run" and args.save:
        wanted.append(str(Path(_absolute(args.save)).parent))
    out: list[str] = []
    for p in wanted:
        if not _under(p, STATE_DIR) and p not in out:
            out.append(p)
    return out


def unit_text(kind: str, args: argparse.Namespace, *, name: str, exec_words: list[str], home: str,
              env_file: str | None, invocation: str) -> str:
    writable = write_paths(kind, args, home)
    what = "the kiosk web app" if kind == "serve" else "scoring camera frames"
    lines = [
        f"# {name}.service: dkit {kind} ({what}), started at boot and restarted when it fails.",
        f"# Made by: {invocation}",
        f"# Install: sudo cp {name}.service /etc/systemd/system/ && sudo systemctl daemon-reload && "
        f"sudo systemctl enable --now {name}",
        "[Unit]",
        f"Description=dkit {kind} {path_value(exec_words[_bundle_index(exec_words)])}",
        "Documentation=https://github.com/distill-kit/distill-kit#readme",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"User={args.user}",
        "SupplementaryGroups=video",  # cameras (/dev/video*) and, on a Jetson, the GPU (/dev/nvhost-*)
        f"WorkingDirectory={path_value(args.workdir)}",
        "StateDirectory=dkit",
        f"Environment={value_quote('DKIT_HOME=' + home)}",
        "Environment=DKIT_OFFLINE=1",
        "Environment=PYTHONUNBUFFERED=1",
    ]
    if env_file:
        lines.append(f"EnvironmentFile={path_value(env_file)}")
    lines += [
        "ExecStart=" + " ".join(exec_quote(w) for w in exec_words),
        "Restart=on-failure",
        f"RestartSec={args.restart_sec:g}",
        "TimeoutStopSec=30",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
    ]
    if writable:
        lines.append("ReadWritePaths=" + " ".join(value_quote(p) for p in writable))
    lines += [
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _bundle_index(words: list[str]) -> int:
    """Index of the bundle in the ExecStart words (right after the run/serve word)."""
    return next(i for i, w in enumerate(words) if w in ("run", "serve")) + 1


def kiosk_url(args: argparse.Namespace) -> str:
    host = args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{args.port}/"


def browser_command(args: argparse.Namespace) -> str:
    """Wait until the kiosk answers (/healthz), then Chromium in kiosk mode on it; a shell line."""
    url = kiosk_url(args)
    browser = " ".join(shlex.quote(w) for w in shlex.split(args.browser))
    return (f"until curl -sf -o /dev/null {url}healthz; do sleep 2; done; "
            f"exec {browser} --kiosk --noerrdialogs --disable-infobars {url}")


def kiosk_files(args: argparse.Namespace, name: str) -> list[GeneratedFile]:
    line = browser_command(args)
    if any(c in line for c in '"`$\\%'):
        raise UsageError(f"--browser {args.browser!r}: quotes, $, % and backslashes cannot go into the autostart entry")
    desktop = "\n".join([
        "[Desktop Entry]",
        "Type=Application",
        "Name=dkit kiosk",
        f"Comment=Chromium in kiosk mode on the dkit kiosk ({name}.service), full screen at login",
        f'Exec=sh -c "{line}"',
        "Terminal=false",
        "X-GNOME-Autostart-enabled=true",
    ]) + "\n"
    labwc = (f"# Chromium in kiosk mode on the dkit kiosk ({name}.service): append this line to "
             "~/.config/labwc/autostart\n"
             f"sh -c '{line}' &\n")
    return [GeneratedFile("dkit-kiosk.desktop", desktop), GeneratedFile("labwc-autostart", labwc)]


def instructions(kind: str, args: argparse.Namespace, *, name: str, folder: str, home: str, env_file: str | None,
                 kiosk: bool, secrets: dict[str, str] | None = None) -> str:
    user = args.user
    steps = ["# the service user (no login, in the video group for the cameras and a Jetson's GPU):",
             f"sudo useradd --system --user-group --home-dir {STATE_DIR} --shell /usr/sbin/nologin --groups video "
             f"{user}"]
    writable = write_paths(kind, args, home)
    if writable:
        steps += ["# the folders it writes (ReadWritePaths= needs them to exist):",
                  f"sudo install -d -o {user} -g {user} " + " ".join(shlex.quote(p) for p in writable)]
    bundle = _absolute(args.bundle)
    steps += [f"#    the bundle must be readable by {user}: {shlex.quote(bundle)}"
              + (" (home folders are often private: copy it to /opt/dkit/)" if bundle.startswith("/home/") else "")]
    if env_file and secrets:
        lines = "\n".join(f"{k}={v if SAFE.fullmatch(v) else shlex.quote(v)}" for k, v in secrets.items())
        steps += ["# the stream passwords, readable by root only (the unit says ${DKIT_SOURCE_N}; systemd reads the "
                  "file before dropping to the user):",
                  f"sudo install -d -m 755 {shlex.quote(str(Path(env_file).parent))}",
                  f"sudo sh -c 'umask 077; cat > {shlex.quote(env_file)}' <<'EOF'\n{lines}\nEOF"]
    elif env_file:
        steps += ["# the admin token, readable by root only (systemd reads it before dropping to the user):",
                  f"sudo install -d -m 755 {shlex.quote(str(Path(env_file).parent))}",
                  f"sudo sh -c 'umask 077; echo \"DKIT_ADMIN_TOKEN=$(openssl rand -hex 16)\" > "
                  f"{shlex.quote(env_file)}'",
                  f"sudo cat {shlex.quote(env_file)}    # the token for /admin"]
    src = shlex.quote(str(Path(folder) / f"{name}.service"))
    steps += ["# install, start now and at every boot, then watch it:",
              f"sudo cp {src} /etc/systemd/system/ && sudo systemctl daemon-reload && "
              f"sudo systemctl enable --now {name}",
              f"systemctl status {name}; journalctl -u {name} -f"]
    if kiosk:
        desk = shlex.quote(str(Path(folder) / "dkit-kiosk.desktop"))
        labwc = shlex.quote(str(Path(folder) / "labwc-autostart"))
        steps += ["# the kiosk screen, as the desktop user (Raspberry Pi OS Bookworm with desktop autologin:",
                  "#    sudo raspi-config nonint do_boot_behaviour B4); either the XDG autostart entry:",
                  f"mkdir -p ~/.config/autostart && cp {desk} ~/.config/autostart/",
                  "#    or (labwc) the autostart line; wayfire: the same command under [autostart] in "
                  "~/.config/wayfire.ini",
                  f"mkdir -p ~/.config/labwc && grep -v '^#' {labwc} >> ~/.config/labwc/autostart",
                  "#    optional: no screen blanking: sudo raspi-config nonint do_blanking 1"]
    n = 0
    for i, step in enumerate(steps):  # number the steps: "# 1. ...", continuation lines "#    ..." stay
        if step.startswith("# ") and not step.startswith("#    "):
            n += 1
            steps[i] = f"# {n}. {step[2:]}"
    return "\n".join(steps) + "\n"


def write_atomically(folder: Path, files: list[GeneratedFile]) -> list[Path]:
    """Each file into `folder` with its mode, durably (dkit.core.files.atomic_write: a temporary file in the same
    folder, fsync, rename, fsync the folder): a reader sees the old file or the new one, never half of one."""
    return [atomic_write(folder / f.name, f.text, mode=f.mode, durable=True) for f in files]


# ------------------------------------------------------------------------------------------ the handler


def generate(kind: str, args: argparse.Namespace) -> tuple[str, list[GeneratedFile], str | None, dict[str, str]]:
    """(unit name, files, env file, its secret variables) for `dkit service run|serve` with these parsed arguments."""
    command = RUN if kind == "run" else SERVE
    name = args.name or f"dkit-{kind}"
    if not re.fullmatch(r"[A-Za-z0-9:_.\\-]+", name) or name.endswith(".service"):
        raise UsageError(f"--name {name!r}: a unit name is letters, digits and :_.- (without .service)")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*\$?", args.user):
        raise UsageError(f"--user {args.user!r}: not a valid user name")
    for opt in ("workdir", "home"):
        value = getattr(args, opt)
        if value and not Path(value).is_absolute():
            raise UsageError(f"--{opt} {value!r}: must be an absolute path")
    home = args.home or STATE_DIR
    env_file = None
    if kind == "serve":
        if args.admin_token:
            raise UsageError("--admin-token: the token never goes into a unit file (any user can read units); the "
                             "unit reads DKIT_ADMIN_TOKEN from --env-file instead (default /etc/dkit/NAME.env)")
        if not args.db:
            args.db = str(Path(args.bundle).expanduser().absolute().parent / "kiosk" / "kiosk.sqlite")
        if not args.no_admin and not args.admin_token_file:
            env_file = args.env_file or f"/etc/dkit/{name}.env"
            if not Path(env_file).is_absolute():
                raise UsageError(f"--env-file {env_file!r}: must be an absolute path")
    secrets: dict[str, str] = {}
    exec_words = dkit_executable(args.dkit) + command_line(command, args, secrets)
    if secrets:
        env_file = env_file or args.env_file or f"/etc/dkit/{name}.env"
        if not Path(env_file).is_absolute():
            raise UsageError(f"--env-file {env_file!r}: must be an absolute path")
    invocation = "dkit service " + " ".join(shlex.quote(CREDENTIALS.sub(r"\1***@", a)) for a in _invocation_args())
    files = [GeneratedFile(f"{name}.service", unit_text(kind, args, name=name, exec_words=exec_words, home=home,
                                                         env_file=env_file, invocation=invocation))]
    if kind == "serve" and args.kiosk:
        files += kiosk_files(args, name)
    return name, files, env_file, secrets


def _invocation_args() -> list[str]:
    argv = sys.argv[1:]
    return argv[argv.index("service") + 1:] if "service" in argv else argv


def cmd_service(args: argparse.Namespace) -> int:
    kind = args.service_kind
    if args.out and args.print:
        raise UsageError("--out and --print: choose one (print is the default)")
    name, files, env_file, secrets = generate(kind, args)
    home = args.home or STATE_DIR
    if args.out:
        folder = Path(args.out)
        for path in write_atomically(folder, files):
            sys.stdout.write(f"wrote {path}\n")
        sys.stdout.write("\n" + instructions(kind, args, name=name, folder=str(folder.absolute()), home=home,
                                             env_file=env_file, kiosk=kind == "serve" and args.kiosk,
                                             secrets=secrets))
        return 0
    for i, f in enumerate(files):
        if len(files) > 1:
            sys.stdout.write(("\n" if i else "") + f"# ==> {f.name} <==\n")
        sys.stdout.write(f.text)
    sys.stderr.write("\n# save the files (or use --out DIR), then:\n" + instructions(
        kind, args, name=name, folder=".", home=home, env_file=env_file, kiosk=kind == "serve" and args.kiosk,
        secrets=secrets))
    return 0


COMMON: tuple[Arg, ...] = (
    arg("--out", metavar="DIR", help="write the files into DIR (atomically: temporary file, then rename) and print "
        "the install commands; default: print the files to stdout (the commands to stderr)"),
    arg("--print", action="store_true", help="print the files to stdout (the default)"),
    arg("--name", metavar="UNIT", help="the unit's name, without .service (default: dkit-run / dkit-serve)"),
    arg("--user", default="dkit", help="the system user it runs as (default: %(default)s; the useradd line is "
        "printed)"),
    arg("--workdir", default=STATE_DIR, metavar="DIR", help="WorkingDirectory= (default: %(default)s, the unit's "
        "StateDirectory)"),
    arg("--home", metavar="DIR", help=f"DKIT_HOME for the service (TensorRT engine cache; default: {STATE_DIR})"),
    arg("--dkit", metavar="PATH", help="the dkit executable for ExecStart= (default: this one, absolute)"),
    arg("--restart-sec", type=float, default=5.0, metavar="S", help="RestartSec= (default: %(default)s)"),
    arg("--env-file", metavar="FILE", help="EnvironmentFile= (root-only) for what must not be in the unit: serve's "
        "DKIT_ADMIN_TOKEN, run's stream passwords (default: /etc/dkit/UNIT.env)"),
)
KIOSK: tuple[Arg, ...] = (
    arg("--kiosk", action="store_true", help="also a Chromium kiosk-mode autostart for the desktop session "
        "(dkit-kiosk.desktop for ~/.config/autostart/, and a labwc autostart line)"),
    arg("--browser", default="chromium-browser", help="the browser command (default: %(default)s, Raspberry Pi OS "
        "Bookworm; `chromium` on Debian)"),
    arg("--no-admin", action="store_true", help="no EnvironmentFile= (admin off unless --admin-token-file)"),
)


def _handler(kind: str):
    def handler(args: argparse.Namespace) -> int:
        args.service_kind = kind
        return cmd_service(args)
    return handler


# what `dkit service` can return: it checks its arguments and writes text files
SERVICE_EXITS = {0: None, 2: "bad arguments (an unknown option or value, a unit name, user or path a unit cannot "
                             "take, a token on the command line)", 130: None}
SERVICE = Command(
    "service", "write a systemd unit that starts `dkit run` or `dkit serve` at boot",
    "Write (or print) a systemd unit for `dkit run BUNDLE --source ...` or `dkit serve BUNDLE ...`: the same "
    "arguments as those commands, paths made absolute; a dedicated system user (User=dkit), Restart=on-failure, "
    "state in /var/lib/dkit, hardening (NoNewPrivileges, ProtectSystem=strict with ReadWritePaths= for the database "
    "folder, PrivateTmp), and for the kiosk the admin token from an EnvironmentFile= (never in the unit) and, with "
    "--kiosk, a Chromium kiosk-mode autostart. The install commands are printed.\n\nexamples:\n"
    "  dkit service run /opt/dkit/bundle --source 0 --jsonl > dkit-run.service\n"
    "  dkit service serve /opt/dkit/judge --host 0.0.0.0 --kiosk --out deploy/",
    None, exits=SERVICE_EXITS, environment="")

SERVICE_RUN = Command("run", "a unit for `dkit run`", "A systemd unit for `dkit run BUNDLE --source ...` (the "
                      "arguments of `dkit run`, then the unit's own).", _handler("run"),
                      arguments=RUN.arguments + COMMON, exits=SERVICE_EXITS, environment="")
SERVICE_SERVE = Command("serve", "a unit for `dkit serve` (and the kiosk screen)", "A systemd unit for `dkit serve "
                        "BUNDLE ...` (the arguments of `dkit serve`, then the unit's own), optionally with the "
                        "kiosk's Chromium autostart.", _handler("serve"),
                        arguments=SERVE.arguments + COMMON + KIOSK, exits=SERVICE_EXITS, environment="")


def register(sub: argparse._SubParsersAction, parents: Parents) -> None:
    """Add `service run|serve` to the `dkit` subcommands."""
    (p,) = register_commands(sub, parents, (SERVICE,))
    kinds = p.add_subparsers(title="services", metavar="KIND", required=True)
    for command in (SERVICE_RUN, SERVICE_SERVE):
        add_command(kinds, command, parents, epilog=epilog_for(command),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
