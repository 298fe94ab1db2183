"""The `base` and `devenv` markers (tests/conftest.py): a device-side test that needs a dev-only module is marked and
skipped naming it; one that is not marked but skips for a missing module fails, so `make test` never drops it."""

from __future__ import annotations

import types

import pytest

from tests import conftest

MISSING = "dkit_no_such_module_for_the_marker_test"


def _item(*marks: pytest.MarkDecorator) -> types.SimpleNamespace:
    found = {m.mark.name: m.mark for m in marks}
    return types.SimpleNamespace(nodeid="tests/edge/test_x.py::test_y", get_closest_marker=found.get)


def _report(reason: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(skipped=True, outcome="skipped", longrepr=("test_x.py", 1, f"Skipped: {reason}"))


def _made(item, report):
    """What the pytest_runtest_makereport wrapper returns for `report`."""
    wrapper = conftest.pytest_runtest_makereport(item, None)
    next(wrapper)
    with pytest.raises(StopIteration) as done:
        wrapper.send(report)
    return done.value.value


def test_a_base_test_skipped_for_a_missing_module_fails_and_says_to_mark_it():
    made = _made(_item(pytest.mark.base), _report("could not import 'torch': No module named 'torch'"))
    assert made.outcome == "failed" and "@pytest.mark.devenv(MODULE)" in made.longrepr and "torch" in made.longrepr


@pytest.mark.parametrize(("marks", "reason"), [
    ((pytest.mark.devenv("torch"),), "could not import 'torch': No module named 'torch'"),  # marked: skips
    ((pytest.mark.base,), "real test assets not found"),  # another reason: skips
])
def test_other_skips_stay_skips(marks, reason):
    assert _made(_item(*marks), _report(reason)).outcome == "skipped"


def test_a_devenv_test_is_skipped_naming_what_is_missing():
    with pytest.raises(pytest.skip.Exception, match=f"needs {MISSING} \\(not in a base install\\)"):
        conftest.pytest_runtest_setup(_item(pytest.mark.devenv("json", MISSING)))
    conftest.pytest_runtest_setup(_item(pytest.mark.devenv("json")))  # installed: runs


def test_the_device_side_tests_are_marked_base(request):
    here = request.node
    assert here.get_closest_marker("base") is None  # tests/ itself runs in the dev venv
    edge = [i for i in request.session.items if i.path.is_relative_to(conftest.ROOT / "tests" / "edge")]
    for item in edge:
        assert (item.get_closest_marker("base") is None) == (item.get_closest_marker("devenv") is not None), item
