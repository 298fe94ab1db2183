"""Issue #24: the device judge and every figure computed from its verdicts compare the same score with
no_match_score (the shown one, rounded by dkit.edge.infer.moderation.shown_score)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dkit.edge.bundle.manifest import Calibration, JudgeConfig
from dkit.edge.infer import moderation
from dkit.edge.infer.moderation import moderate

NONE = np.zeros((0,))


@pytest.mark.parametrize(("raw", "expected"), [(14.96, "ok"), (14.95, "ok"), (14.94, "no_match"), (15.0, "ok")])
def test_finding9b_no_match_rounding_compares_the_shown_score(raw, expected):
    """A raw score that shows as 15.0 is not below no_match_score 15, whoever passes it (raw or shown)."""
    cfg = JudgeConfig(no_match_score=15.0)
    assert str(moderate(0.3, NONE, NONE, cfg, score=raw)) == expected
    assert str(moderate(0.3, NONE, NONE, cfg, score=moderation.shown_score(raw))) == expected
    assert moderate(np.full(3, 0.3), np.zeros((3, 0)), np.zeros((3, 0)), cfg, score=np.full(3, raw)).tolist() \
        == [expected] * 3


def test_finding9b_no_match_rounding_device_judge_agrees_with_unrounded_callers(judge_bundle):
    """The device judge (which shows one decimal) and the export's report (which passes the curve's raw score)
    give the same verdict for a score just under no_match_score."""
    import cv2

    from dkit.edge.infer.judge import Judge
    from dkit.edge.infer.runtime import Runtime
    from tests.conftest import ASSETS

    rgb = cv2.cvtColor(cv2.imread(str(sorted((ASSETS / "data" / "photos").glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    with Runtime.load(judge_bundle) as rt:
        judge = Judge(rt)
        judge.cfg = dataclasses.replace(judge.cfg, text_margin=2.0, unsafe_margin=2.0, no_match_score=15.0)
        judge.calibration = Calibration((-1.0, 1.0), (14.96, 14.96))  # every cosine scores 14.96 before rounding
        emb = rt(rgb).embedding
        v = judge.judge(emb, "a raccoon driving a tractor")
        exported = moderate(v.cosine, judge.text_emb @ emb, judge.unsafe_emb @ emb, judge.cfg,
                            score=judge.to_score(v.cosine))  # as dkit.export.judge passes it: unrounded
    assert v.raw_score == 15.0 and v.score == 15.0
    assert v.verdict == str(exported) == "ok"
