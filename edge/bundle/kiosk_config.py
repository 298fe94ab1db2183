"""The kiosk's limits and thresholds (`KioskConfig`): rates, the work queue, near-duplicates, retention and the disk
quota, connection caps and timeouts, the name blocklist. Every field has a default sized for one kiosk at an event;
a kit sets its own in `judge.kiosk:` (exported into the bundle's manifest) and `dkit serve --set KEY=VALUE`
overrides one for a run:

    from dkit.edge.bundle.kiosk_config import KioskConfig

    cfg = KioskConfig.from_dict(manifest.judge.kiosk).with_overrides(["submit_rate=0.5", "max_disk_mb=200"])

A bad key or value is a ValueError naming it (`kiosk.score_rate: expected a number >= 0, got 'fast'`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class KioskConfig:
    """The kiosk's limits and thresholds, one field each; the defaults suit one kiosk at an event.

    A kit sets its own under `judge.kiosk:` (carried into the bundle's manifest), `dkit serve --set KEY=VALUE`
    overrides one for a run: `KioskConfig.from_dict(manifest.judge.kiosk).with_overrides(["submit_rate=0.5"])`.
    A rate of 0 turns its limit off; a value under its floor is a ValueError naming the key.
    """

    # per-client token buckets (by IP address): a bucket of `burst` requests refilled at `rate` per second
    score_rate: float = 2.0  # POST /api/score: camera mode's live score asks once a second
    score_burst: float = 10.0  # POST /api/score: requests a client may make at once before its rate applies
    submit_rate: float = 0.2  # POST /api/submissions: one every 5 s on average ...
    submit_burst: float = 5.0  # ... after a burst of 5
    # the work queue: images scored at once, and how many more may wait (beyond that: 503 + Retry-After)
    workers: int = 2
    queue: int = 8  # images that may wait for a worker
    queue_per_client: int = 2  # places in the work queue (scoring + waiting) one client may hold at once
    screen_reserve: int = 2  # places of the queue only the kiosk's own screen (loopback) may take
    # a request body must keep arriving at this many bytes/s on average, counted on the bytes received, after a
    # 5 s grace (bodies.BODY_GRACE), else 408: an upload holding a place in the queue cannot trickle (0: off)
    min_body_rate: float = 16384.0
    # decoding: every upload is decoded once, in a decoder process killed past `decode_timeout` seconds (400)
    decode_timeout: float = 2.0
    max_scans: int = 100  # scans of a progressive JPEG (counted from its markers before decoding); more: 400
    # scoring budgets: /api/score answers the score as the screen shows it, in steps of `score_step` points, and at
    # most `score_budget` times per client and prompt in `score_window` seconds (0: no budget); the kiosk's own
    # screen (loopback) has no budget
    score_step: float = 5.0
    score_budget: int = 300  # /api/score answers per client and prompt in `score_window` (0: no budget)
    score_window: float = 3600.0  # seconds the score budget is counted over
    # a submission whose shape (dkit.edge.kiosk.dupes: turned, mirrored, cropped, moved, shrunk, inverted) has cosine >=
    # `dup_shape` with one of its prompt's best `keep_top` (above 1: off), or with any shown entry of its prompt whose
    # perceptual hash is within `dup_bits` (of 64), is refused; dup_bits -1 turns every duplicate check off, the
    # refusal of drawings the operator hid or deleted (on that prompt) too
    dup_bits: int = 6
    dup_shape: float = 0.95  # shape cosine at or above which a drawing is a near-duplicate (above 1: off)
    # retention: a submission stays while it is in its prompt's top `keep_top` or among the last `keep_last`
    keep_top: int = 100
    keep_last: int = 1000  # the newest submissions kept whatever their rank
    max_disk_mb: float = 512.0  # thumbnails + database; past it the oldest unranked entries go, then 507
    # connections: caps (a connection over them is closed at once) and timeouts in seconds
    max_connections: int = 512
    max_connections_per_client: int = 16  # a browser opens <= 6 per host; a few devices may share one address
    header_timeout: float = 10.0  # from connecting (or the end of the last response) to a request's full headers
    body_timeout: float = 30.0  # to receive a whole request body
    keep_alive: float = 5.0  # an idle keep-alive connection is closed after this
    write_timeout: float = 10.0  # a response the client does not read (its socket buffer full) is cut off after this
    max_header_bytes: int = 16384  # a request's headers (all of them): more is answered 431
    strikes: int = 4  # connections of one client closed for a deadline within `strike_window` s: then it is refused
    strike_window: float = 60.0  # seconds strikes are counted over, and how long a struck client is refused
    blocklist: str | None = None  # a text file of words refused in player names (one per line, # comments)
    blocked_names: tuple[str, ...] = ()  # words refused in names, carried in the manifest (a kit's blocklist file)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "blocklist":
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"kiosk.blocklist: expected a file path, got {value!r}")
                continue
            if f.name == "blocked_names":
                if not isinstance(value, tuple) or not all(isinstance(w, str) for w in value):
                    raise ValueError(f"kiosk.blocked_names: expected a list of strings, got {value!r}")
                continue
            want_int = f.type == "int"
            ok = isinstance(value, int if want_int else (int, float)) and not isinstance(value, bool)
            floor = _FLOORS.get(f.name, 0)
            if not ok or value < floor:
                kind = "an integer" if want_int else "a number"
                raise ValueError(f"kiosk.{f.name}: expected {kind} >= {floor}, got {value!r}")
        if self.submit_rate > 0 and self.submit_burst < 1 or self.score_rate > 0 and self.score_burst < 1:
            raise ValueError("kiosk: a bucket's burst must be >= 1 when its rate is set")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> KioskConfig:
        """From a kit's or manifest's `kiosk` mapping; unknown keys are refused by name."""
        doc = dict(doc or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"kiosk.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
        if isinstance(doc.get("blocked_names"), list):
            doc["blocked_names"] = tuple(doc["blocked_names"])
        return cls(**doc)

    def with_overrides(self, items: Iterable[str]) -> KioskConfig:
        """A copy with `KEY=VALUE` overrides (`dkit serve --set`), each value parsed as its field's type."""
        types = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().removeprefix("kiosk.")
            if not sep or key not in types or key == "blocked_names":
                raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(types))}")
            changes[key] = _parse(key, types[key], text.strip())
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_FLOORS = {"workers": 1, "max_connections": 1, "max_connections_per_client": 1, "dup_bits": -1, "queue_per_client": 1,
           "max_scans": 1, "max_header_bytes": 1024, "strikes": 1, "decode_timeout": 0.01}


def _parse(key: str, kind: str, text: str) -> Any:
    if kind.startswith("str"):
        return None if text.lower() in ("", "none", "null") else text
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError as e:
        raise ValueError(f"--set {key}={text!r}: expected {'an integer' if kind == 'int' else 'a number'}") from e
