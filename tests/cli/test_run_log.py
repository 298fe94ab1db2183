"""Logs a user can read: the kit's own lines on the terminal, the libraries' chatter in RUN_DIR/logs/, no escape codes
in files; and the log scope puts back everything it touched."""

from __future__ import annotations

import io
import logging
import sys
import types
import warnings
from pathlib import Path

import pytest

from dkit.cli import run_log as rl
from dkit.core.logfile import LogFile, PlainFormatter, strip_ansi
from dkit.core.run import RunDir
from tests.conftest import link_images, run_dkit

ESC = "\x1b"


def test_strip_ansi_removes_colours_bar_redraws_and_titles():
    assert strip_ansi("\x1b[34m\x1b[1mtrain:\x1b[0m 18 images") == "train: 18 images"
    assert strip_ansi("\r\x1b[K  1/3 2.0it/s") == "  1/3 2.0it/s"
    assert strip_ansi("\x1b]0;title\x07done\x1b(B\x1b[m") == "done"  # a window title, `tput sgr0`
    assert strip_ansi("plain [1m] text") == "plain [1m] text"  # brackets without ESC stay
    record = logging.makeLogRecord({"msg": "\x1b[1m%s\x1b[0m", "args": ("bold",), "levelno": 20})
    assert PlainFormatter("%(message)s").format(record) == "bold"


def test_log_file_is_made_on_the_first_record_with_a_header(tmp_path):
    path = RunDir(tmp_path / "run").log_file("train")
    assert path == tmp_path / "run" / "logs" / "train.log"
    handler = LogFile(path, "dkit train kit.yaml")
    assert not (tmp_path / "run").exists()  # nothing logged, nothing made
    handler.handle(logging.makeLogRecord({"name": "ultralytics", "msg": "\x1b[34mengine/trainer:\x1b[0m epochs=1",
                                          "levelno": logging.DEBUG, "levelname": "DEBUG"}))
    handler.close()
    lines = path.read_text().splitlines()
    assert lines[0].startswith("==== dkit train kit.yaml, ") and lines[1].endswith("DEBUG ultralytics: "
                                                                                  "engine/trainer: epochs=1")


def test_terminal_filter_shows_the_kits_own_lines_and_library_errors():
    f = rl.TerminalFilter(logging.INFO, logging.ERROR)

    def shown(name, level):
        return f.filter(logging.makeLogRecord({"name": name, "levelno": level}))

    assert shown("dkit", logging.INFO) and shown("dkit.distill.label", logging.WARNING)
    assert not shown("dkit.distill.label", logging.DEBUG)
    assert not shown("root", logging.INFO) and not shown("py.warnings", logging.WARNING)
    assert not shown("dkitten", logging.INFO)  # another package whose name starts with "dkit"
    assert shown("ultralytics", logging.ERROR)


@pytest.fixture
def terminal():
    """A root handler named as setup_terminal names its own (pytest keeps the root logger's), writing to a buffer;
    a fake `ultralytics.utils` with a stdout handler on the `ultralytics` logger as Ultralytics sets one up."""
    root, ultra = logging.getLogger(), logging.getLogger(rl.ULTRALYTICS)
    buf, lib_buf = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.set_name(rl.TERMINAL)
    lib_handler = logging.StreamHandler(lib_buf)
    lib_handler.set_name(rl.ULTRALYTICS_HANDLER)
    saved = root.level, ultra.level, ultra.propagate, sys.modules.get("ultralytics.utils")
    root.addHandler(handler)
    ultra.addHandler(lib_handler)
    ultra.setLevel(logging.INFO)
    ultra.propagate = False
    sys.modules["ultralytics.utils"] = types.SimpleNamespace(VERBOSE=True)
    root.setLevel(logging.WARNING)
    yield types.SimpleNamespace(out=buf, lib_out=lib_buf, handler=handler, lib_handler=lib_handler)
    root.removeHandler(handler)
    ultra.removeHandler(lib_handler)
    root.setLevel(saved[0])
    ultra.setLevel(saved[1])
    ultra.propagate = saved[2]
    if saved[3] is None:
        sys.modules.pop("ultralytics.utils")
    else:
        sys.modules["ultralytics.utils"] = saved[3]


def _chatter() -> None:
    logging.getLogger("dkit.distill.label").info("split: 6 held-out images")
    logging.getLogger("dkit.distill.label").debug("a detail for the log")
    logging.info("Parsing model identifier. Schema: None, Identifier: ViT-S-32")  # open_clip logs on the root
    logging.getLogger(rl.ULTRALYTICS).info("\x1b[34m\x1b[1mengine/trainer: \x1b[0mepochs=1")
    logging.getLogger(rl.ULTRALYTICS).error("\x1b[34mval:\x1b[0m found 6 images in 1 classes")
    warnings.warn("`get_trial_id` is meant to only be called inside a Tuner", UserWarning, stacklevel=1)


def test_run_log_routes_library_chatter_to_the_file_and_restores_everything(tmp_path, terminal):
    root, own, ultra = logging.getLogger(), logging.getLogger("dkit"), logging.getLogger(rl.ULTRALYTICS)
    before = (root.level, own.level, list(root.handlers), list(ultra.handlers), list(ultra.filters),
              list(terminal.handler.filters), list(terminal.lib_handler.filters), warnings.showwarning)
    path = tmp_path / "logs" / "train.log"
    with rl.run_log(path, verbosity=0, title="dkit train"):
        assert sys.modules["ultralytics.utils"].VERBOSE is False  # its progress bars are off
        _chatter()
    text = path.read_text()
    assert "INFO dkit.distill.label: split: 6 held-out images" in text
    assert "DEBUG dkit.distill.label: a detail for the log" in text
    assert "INFO root: Parsing model identifier" in text and "INFO ultralytics: engine/trainer: epochs=1" in text
    assert "WARNING py.warnings: " in text and "UserWarning: `get_trial_id`" in text and ESC not in text
    shown = terminal.out.getvalue()
    assert "split: 6 held-out images" in shown
    assert "Parsing model identifier" not in shown and "get_trial_id" not in shown and "a detail" not in shown
    # an error, plain: no terminal codes (a real Ultralytics, imported by an earlier test, prefixes its errors with its
    # own "ERROR ❌ " through a filter on its logger)
    assert terminal.lib_out.getvalue().removeprefix("ERROR ❌ ") == "val: found 6 images in 1 classes\n"
    after = (root.level, own.level, list(root.handlers), list(ultra.handlers), list(ultra.filters),
             list(terminal.handler.filters), list(terminal.lib_handler.filters), warnings.showwarning)
    assert after == before and sys.modules["ultralytics.utils"].VERBOSE is True


def test_run_log_quiets_ultralytics_imported_after_the_stage_started(tmp_path, terminal):
    sys.modules.pop("ultralytics.utils")
    with rl.run_log(tmp_path / "x.log"):
        sys.modules["ultralytics.utils"] = utils = types.SimpleNamespace(VERBOSE=True)  # the stage imports it
        logging.getLogger(rl.ULTRALYTICS).info("Ultralytics 8.4 Python-3.11 CPU")
        assert utils.VERBOSE is False
    assert utils.VERBOSE is True and terminal.lib_out.getvalue() == ""
    assert "INFO ultralytics: Ultralytics 8.4" in (tmp_path / "x.log").read_text()


def test_verbose_shows_the_libraries_lines_again(tmp_path, terminal):
    with rl.run_log(tmp_path / "x.log", verbosity=1):
        assert sys.modules["ultralytics.utils"].VERBOSE is True  # left alone: its bars draw
        _chatter()
    shown = terminal.out.getvalue()
    assert "Parsing model identifier" in shown and "get_trial_id" in shown and "a detail for the log" in shown
    assert "engine/trainer" in terminal.lib_out.getvalue()  # Ultralytics prints as it would
    assert "Parsing model identifier" in (tmp_path / "x.log").read_text()


# ------------------------------------------------------------------------------------------ the real commands

CLS_KIT = """\
name: cls
data: {{images: {images}, val: 6}}
ontology: {{classes: {{animal: [an animal], thing: [a thing]}}}}
teacher: {{kind: clip, model: ViT-S-32, pretrained: random, abstain: {{margin: 0.0}}}}
student: {{kind: yolo-cls, model: yolov8n-cls.pt, imgsz: 32, epochs: 1, batch: 8}}
"""


def test_label_and_train_show_the_kits_lines_and_log_the_rest(tmp_path, assets):
    """A real `dkit label` (a random CLIP teacher: open_clip's lines) and `dkit train` (a yolo-cls student from
    scratch: Ultralytics' argument dump, layer table, bars and Ray's warning when Ray is installed), 24 real photos."""
    pytest.importorskip("open_clip")
    pytest.importorskip("ultralytics")
    images = link_images(assets / "data/imagenet-sample", "*.JPEG", 24, tmp_path / "imgs")
    (tmp_path / "kit.yaml").write_text(CLS_KIT.format(images=images))
    args = [str(tmp_path / "kit.yaml"), "--out", str(tmp_path / "run")]
    env = {"DKIT_HOME": str(tmp_path / "home"), "DKIT_OFFLINE": "1"}
    label = run_dkit("label", *args, env=env, timeout=300)
    assert label.returncode == 0, label.stderr
    train = run_dkit("train", *args, env=env, timeout=300)
    assert train.returncode == 0, train.stderr

    terminal = label.stdout + label.stderr + train.stdout + train.stderr
    assert "labels: " in label.stdout and "dkit: INFO: split: " in label.stderr  # the kit's own lines and summary
    assert "student epoch 1/1: loss" in train.stderr and "trained: 1 epochs" in train.stdout
    for chatter in ("Parsing model identifier", "engine/trainer", "ultralytics.nn.modules", "GFLOPs",
                    "Starting training", "UserWarning", ESC):
        assert chatter not in terminal, chatter

    logs = RunDir(tmp_path / "run")
    label_log, train_log = logs.log_file("label").read_text(), logs.log_file("train").read_text()
    assert "INFO root: Parsing model identifier" in label_log and "dkit.distill" in label_log
    assert "INFO ultralytics: engine/trainer: " in train_log and "ultralytics.nn.modules.conv.Conv" in train_log
    assert "student epoch 1/1: loss" in train_log
    if "ray" in _installed():
        assert "WARNING py.warnings: " in train_log
    for path in (*Path(logs.root / "logs").iterdir(), logs.student / "train.log"):
        assert ESC not in path.read_text(), path

    again = run_dkit("label", *args, "-v", env=env, timeout=300)  # the cache answers; the teacher is still built
    assert again.returncode == 0 and "Parsing model identifier" in again.stderr


def _installed() -> set[str]:
    import importlib.util

    return {name for name in ("ray",) if importlib.util.find_spec(name) is not None}

