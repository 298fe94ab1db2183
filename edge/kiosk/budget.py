"""What the public routes give away of a score, and how often. POST /api/score: the score as the event screen
shows it (rounded to `score_step` points), never the cosine or the unrounded score, and at most `score_budget`
scores per client and prompt in `score_window` seconds (429 + Retry-After past it). A blind hill climb that reads
the score to a tenth of a point and queries without end finds the model's favourite scribble; steps of 5 points
and a budget per prompt leave it a few hundred coarse answers, while a player's live score (once a second, on the
kiosk's own screen, which has no budget) reads the same number the screen shows.

    from dkit.edge.kiosk.budget import charge, public_score, public_submission, whole

    charge(state, client, prompt)        # ApiError(429) when the client's budget for this prompt is spent
    return public_score(state, verdict)  # {"prompt", "score", "verdict", "looks_like"}
    public_submission(verdict)           # POST /api/submissions: the score to a whole point, no raw score/cosine
    whole(57.46)                         # 57: the leaderboard's scores, as the screen shows them

POST /api/submissions and GET /api/leaderboard answer whole points (what the screen shows: Math.round), never the
raw score or the cosine; the board is still ordered, and a rank computed, by the stored one-decimal score. Only the
token-protected admin API shows stored scores as they are.

The budget is a token bucket per (client, prompt) of `score_budget` tokens refilled over `score_window`
(dkit.edge.kiosk.limits.Buckets: at most MAX_CLIENTS kept, the least recently used dropped first).
"""

from __future__ import annotations

import math

from dkit.edge.infer.judge import Verdict
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.limits import is_kiosk_screen
from dkit.edge.kiosk.state import KioskState


def charge(state: KioskState, client: str, prompt: str) -> None:
    """Take one score from `client`'s budget for `prompt`; ApiError(429, retry_after) when it is spent. The kiosk's
    own screen and a budget of 0 are not charged."""
    cfg = state.cfg
    if cfg.score_budget <= 0 or is_kiosk_screen(client):
        return
    wait = state.score_budgets.take(f"{client}\n{prompt}")
    if wait > 0:
        state.stats.count("score_budget")
        raise ApiError(429, f"this address has used its {cfg.score_budget} scores for this prompt: draw and submit, "
                            f"or try again in {math.ceil(wait)} s", retry_after=wait)


def public_score(state: KioskState, verdict: Verdict) -> dict:
    """What /api/score answers: the prompt, the score as the screen shows it (in steps of `score_step` points; None
    when blocked), the verdict and the prompt the image looks most like."""
    return {"prompt": verdict.prompt, "score": coarse(verdict.score, state.cfg.score_step),
            "verdict": verdict.verdict, "looks_like": verdict.looks_like}


def public_submission(verdict: Verdict) -> dict:
    """What POST /api/submissions answers of the verdict: the score to a whole point (what the screen shows; None
    when blocked), the verdict, the moderation reason and the prompt it looks like; never the raw score or the
    cosine. A blocked drawing is not stored, so the duplicate check never stops it: a precise answer there would be
    an unbudgeted /api/score. The rank is computed from the stored score (one decimal), not from this one."""
    return {"prompt": verdict.prompt, "score": whole(verdict.score), "verdict": verdict.verdict,
            "reason": verdict.reason, "looks_like": verdict.looks_like}


def whole(score: float | None) -> int | None:
    """`score` to a whole point, halves up (as the screen's Math.round shows it); None stays None."""
    return None if score is None else int(math.floor(float(score) + 0.5))


def coarse(score: float | None, step: float) -> float | None:
    """`score` (0-100) to the nearest multiple of `step` (halves up), within 0-100; to one decimal when step is 0."""
    if score is None:
        return None
    if step <= 0:
        return round(float(score), 1)
    return float(min(100.0, max(0.0, math.floor(score / step + 0.5) * step)))
