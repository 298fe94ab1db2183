"""Write the pip constraints for the device install: `python constraints.py MODE OUT`.

MODE verified: every package of the base install's dependency closure pinned (==) to the version of the x86
               interpreter running this script, i.e. what the bundles were built and checked with (default);
     repo:     the lines of the repo's constraints.txt that name a base dependency (their ranges as written);
     none:     nothing (pip picks the newest wheels; how the earlier hand-made arm64 venv was made).
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str) -> dict[str, str]:
    seen: dict[str, str] = {}
    todo = [r for r in md.requires(root) or [] if "extra ==" not in r]
    while todo:
        req = todo.pop()
        if ";" in req:  # an environment marker: keep those that hold on Linux/CPython 3.11 (platform-neutral ones)
            req, marker = req.split(";", 1)
            if "extra" in marker or "sys_platform == \"win32\"" in marker or "platform_system == \"Windows\"" in marker:
                continue
        name = canon(re.split(r"[ <>=!~\[(]", req.strip(), maxsplit=1)[0])
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist.version
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return seen


def main() -> int:
    mode, out = sys.argv[1], Path(sys.argv[2])
    base = closure("distill-kit")
    lines = [f"# dkit device constraints ({mode}), written by tools/arm64/constraints.py"]
    if mode == "verified":
        lines += [f"{n}=={v}" for n, v in sorted(base.items())]
    elif mode == "repo":
        for line in (REPO / "constraints.txt").read_text().splitlines():
            s = line.split("#", 1)[0].strip()
            if s and canon(re.split(r"[ <>=!~\[]", s, maxsplit=1)[0]) in base:
                lines.append(s)
    elif mode != "none":
        sys.exit(f"unknown constraints mode {mode!r} (verified, repo, none)")
    out.write_text("\n".join(lines) + "\n")
    print(f"constraints ({mode}): {len(lines) - 1} pins -> {out}")  # noqa: T201 - a command-line tool's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
