"""The kiosk's moderation rule, once, in numpy: what the device judge applies to a frame, what `dkit eval` and
the export's calibration report apply to the held-out images, so their figures are the device's.

    from dkit.edge.infer.moderation import moderate, penalise

    verdicts = moderate(prompt_cos, text_cos, unsafe_cos, cfg, score=raw)    # array of ok|text|no_match|blocked
    final = penalise(raw, verdicts, cfg)                                      # the score shown (NaN: blocked)
    shown = shown_score(raw)                                                  # what the kiosk displays

Arrays broadcast: `prompt_cos` (...) is each image's cosine to its prompt, `text_cos` (..., T) and `unsafe_cos`
(..., U) its cosines to the text and unsafe prompts (T or U may be 0), `score` (...) the 0-100 score before
moderation. In order (the first that holds wins), with the thresholds of `cfg` (dkit.edge.bundle.manifest.JudgeConfig):
- `blocked`: an unsafe prompt is closer than the prompt by more than `unsafe_margin`;
- `text`: a text prompt ("handwriting", ...) is closer than the prompt by more than `text_margin`; the shown score
  is multiplied by `text_penalty`;
- `no_match`: the score as shown (`shown_score`: rounded to SCORE_DECIMALS) is below `no_match_score` (skipped
  when `score` is None: no calibration yet); whether the caller passes the raw or the shown score, the comparison
  is the same, so the device's verdicts and the export's figures cannot differ by rounding;
- `ok` otherwise.
"""

from __future__ import annotations

import numpy as np

from dkit.edge.bundle.manifest import JudgeConfig

VERDICTS = ("ok", "text", "no_match", "blocked")
SCORE_DECIMALS = 1  # a 0-100 score is shown, stored and compared with no_match_score at this many decimals


def shown_score(score: np.ndarray | float) -> np.ndarray:
    """The 0-100 score as the kiosk shows and compares it: rounded to SCORE_DECIMALS (numpy's rounding, the one
    rule for the device judge and every figure computed from its verdicts)."""
    return np.round(np.asarray(score, np.float64), SCORE_DECIMALS)


def _closest(cos: np.ndarray) -> np.ndarray:
    """(..., K) -> (...) the largest cosine, -inf when K is 0."""
    cos = np.asarray(cos, np.float64)
    return cos.max(axis=-1) if cos.shape[-1] else np.full(cos.shape[:-1], -np.inf)


def moderate(prompt_cos: np.ndarray | float, text_cos: np.ndarray, unsafe_cos: np.ndarray, cfg: JudgeConfig, *,
             score: np.ndarray | float | None = None) -> np.ndarray:
    """The verdict per image (and prompt): an array of strings shaped like `prompt_cos` broadcast."""
    prompt_cos = np.asarray(prompt_cos, np.float64)
    blocked = _closest(unsafe_cos) > prompt_cos + cfg.unsafe_margin
    text = _closest(text_cos) > prompt_cos + cfg.text_margin
    no_match = np.zeros_like(blocked) if score is None else shown_score(score) < cfg.no_match_score
    shape = np.broadcast_shapes(blocked.shape, text.shape, np.shape(no_match))
    return np.select([blocked, text, no_match], ["blocked", "text", "no_match"], "ok").reshape(shape)


def penalise(score: np.ndarray | float, verdicts: np.ndarray, cfg: JudgeConfig) -> np.ndarray:
    """The score shown: x text_penalty for `text`, NaN for `blocked` (no score), else the score."""
    score = np.asarray(score, np.float64)
    return np.where(verdicts == "blocked", np.nan, np.where(verdicts == "text", score * cfg.text_penalty, score))


def verdict_agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """The share of equal verdicts between two verdict arrays (student vs teacher); None when empty."""
    return None if np.size(a) == 0 else float(np.mean(np.asarray(a) == np.asarray(b)))
