"""Exceptions raised at the kit's boundaries, each with the exit code the CLI returns for it.

The CLI prints `dkit: error: <message>` on one line and exits with `exit_code`; nothing here
carries a traceback to the user. Exit codes: 1 a run failed, 2 bad arguments or kit YAML,
3 a model or data file is missing (offline), 4 an optional extra is not installed.
"""

from __future__ import annotations


class DkitError(Exception):
    """Base class: an error the user can act on, shown without a traceback."""

    exit_code = 1


class UsageError(DkitError):
    """A command-line argument is wrong (an override that does not parse, a path that is not there)."""

    exit_code = 2


class KitError(DkitError):
    """The kit YAML (or an override of it) is invalid.

    Rendered as one line: `<file>: <key.path>: expected <what>, got <value>`, or
    `<file>: <key.path>: <problem>` when the problem is not a wrong value (an unknown key, bad YAML).
    """

    exit_code = 2

    def __init__(
        self,
        file: str,
        key: str,
        expected: str | None = None,
        got: object = ...,
        *,
        problem: str | None = None,
        source: str | None = None,
    ):
        self.file, self.key, self.expected, self.got, self.source = file, key, expected, got, source
        where = file if source is None else f"{file} ({source})"
        if problem is None:
            problem = f"expected {expected}" + ("" if got is ... else f", got {_short(got)}")
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


class NotInStoreError(DkitError):
    """A model or data file is neither in the local model store nor downloadable right now."""

    exit_code = 3


class DownloadError(DkitError):
    """A download started but did not complete or did not verify; nothing was left behind."""

    exit_code = 3


class MissingExtraError(DkitError):
    """An optional dependency of an install extra (`distill`, `export`) is not installed."""

    exit_code = 4

    def __init__(self, what: str, module: str, extra: str):
        from dkit.edge.infer.extras import install_hint

        self.what, self.module, self.extra = what, module, extra
        super().__init__(
            f"{what} needs the Python package '{module}', which is not installed; "
            f"install the '{extra}' extra: {install_hint(extra)}"
        )


def _short(value: object, limit: int = 80) -> str:
    """repr(value), shortened in the middle past `limit` characters: a long path keeps its file name."""
    text = repr(value)
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return text[:keep] + "..." + text[-keep:]


def require(module: str, *, what: str, extra: str):
    """Import an optional heavy module, or raise MissingExtraError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:  # the module itself, or torch beneath it
        raise MissingExtraError(what, e.name or module, extra) from e
