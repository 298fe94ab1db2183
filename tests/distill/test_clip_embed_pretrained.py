"""clip-embed `student.pretrained`: the backbone starts from a real timm checkpoint file in the model store.

The checkpoints are written here by timm itself (the test backbone, mobilenetv3_small_050, with its 1000-class
head, as timm publishes it), into a temporary store folder; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from dkit.core.errors import NotInStoreError, UsageError  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill.label import label_images  # noqa: E402
from dkit.distill.students import clip_embed  # noqa: E402
from dkit.distill.students.clip_embed import training  # noqa: E402
from dkit.edge.bundle.hashing import sha256_file  # noqa: E402
from tests.conftest import link_images  # noqa: E402
from tests.distill.test_clip_embed import make_kit  # noqa: E402

BACKBONE = "mobilenetv3_small_050"


def timm_state(backbone: str = BACKBONE, seed: int = 123) -> dict:
    """A full timm model's weights (classifier included), seeded so that they differ from the student's init."""
    torch.manual_seed(seed)
    return {k: v.clone().contiguous() for k, v in timm.create_model(backbone, pretrained=False).state_dict().items()}


def write_safetensors(store: Path, name: str, state: dict) -> Path:
    store.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_file(state, str(store / name))
    return store / name


def test_backbone_weights_are_the_checkpoint_files(tmp_path):
    state = timm_state()
    store = ModelStore(tmp_path / "store", offline=True)
    path = store.backbone_checkpoint(write_safetensors(store.root, "mnv3.safetensors", state).name)
    assert path == store.root / "mnv3.safetensors"
    model = clip_embed.build_student(BACKBONE, 64, seed=0, checkpoint=path)
    own = model.backbone.state_dict()
    assert set(own) == set(state) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(own[k], state[k]) for k in own)
    scratch = clip_embed.build_student(BACKBONE, 64, seed=0)
    assert torch.equal(model.proj.weight, scratch.proj.weight)  # the projection is still the seeded one
    assert not torch.equal(own["conv_stem.weight"], scratch.backbone.state_dict()["conv_stem.weight"])

    # a torch file that nests the weights the way training scripts do ("state_dict", "module." prefixes)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, store.root / "mnv3.pth")
    nested = clip_embed.build_student(BACKBONE, 64, checkpoint=store.backbone_checkpoint("mnv3.pth"))
    assert all(torch.equal(v, state[k]) for k, v in nested.backbone.state_dict().items())


def test_a_missing_checkpoint_names_the_file_and_the_store_folder(tmp_path):
    store = ModelStore(tmp_path / "store", offline=True)
    with pytest.raises(NotInStoreError) as info:
        store.backbone_checkpoint("mnv3.safetensors")
    assert "mnv3.safetensors" in str(info.value) and str(store.root / "mnv3.safetensors") in str(info.value)
    with pytest.raises(NotInStoreError, match="is a path"):
        store.backbone_checkpoint("weights/mnv3.safetensors")


def test_a_checkpoint_of_something_else_is_refused_naming_the_keys(tmp_path):
    store = tmp_path / "store"
    renamed = {("stem_conv.weight" if k == "conv_stem.weight" else k): v for k, v in timm_state().items()}
    path = write_safetensors(store, "renamed.safetensors", renamed)
    with pytest.raises(UsageError) as info:
        clip_embed.build_student(BACKBONE, 64, checkpoint=path)
    message = str(info.value)
    assert str(path) in message and BACKBONE in message
    assert "1 missing keys: conv_stem.weight" in message and "1 unexpected keys: stem_conv.weight" in message

    other = write_safetensors(store, "wider.safetensors", timm_state("mobilenetv3_small_100"))
    shape = r"193 keys of another shape: blocks.0.0.conv_pw.weight \(16, 16, 1, 1\) \(the model's is \(8, 16, 1, 1\)\)"
    with pytest.raises(UsageError, match=shape):
        clip_embed.build_student(BACKBONE, 64, checkpoint=other)

    (store / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read .*junk.pth"):
        clip_embed.build_student(BACKBONE, 64, checkpoint=store / "junk.pth")


def test_training_starts_from_the_checkpoint_and_resume_refuses_a_changed_file(assets, tmp_path, monkeypatch):
    images = link_images(assets / "data/imagenet-sample", "*.JPEG", 8, tmp_path / "imgs")
    store = ModelStore(tmp_path / "store", offline=True)
    path = write_safetensors(store.root, "mnv3.safetensors", timm_state())
    kit = make_kit(tmp_path, images, epochs=1, overrides=["student.pretrained=mnv3.safetensors", "student.batch=4"])
    scratch_kit = make_kit(tmp_path, images, epochs=1, overrides=["student.batch=4"])
    run = tmp_path / "run"
    label_images(kit, run, store=store, progress=False, report=False)

    prints = {name: training._prepare(k, run, store).fingerprint for name, k in (("pre", kit), ("none", scratch_kit))}
    assert prints["pre"]["pretrained"] == {"file": "mnv3.safetensors", "sha256": sha256_file(path)}
    assert prints["none"]["pretrained"] is None and prints["pre"]["student"] == prints["none"]["student"]

    built = []

    def recording(*args, **kwargs):
        model = clip_embed.build_student(*args, **kwargs)
        built.append({k: v.clone() for k, v in model.backbone.state_dict().items()})
        return model

    monkeypatch.setattr(training, "build_student", recording)
    summary = clip_embed.train(kit, run, store=store, progress=False)
    assert summary["started_from"] == "pretrained: mnv3.safetensors" and summary["epochs"] == 1
    on_file = safetensors_torch.load_file(str(path))
    assert all(torch.equal(v, on_file[k]) for k, v in built[0].items())  # before the first step
    config = json.loads((run / "student" / "student.json").read_text())
    assert config["started_from"] == "pretrained: mnv3.safetensors" and config["student"]["pretrained"] == path.name
    assert config["pretrained"] == {"file": "mnv3.safetensors", "sha256": sha256_file(path), "path": str(path)}
    best = torch.load(run / "student" / "weights" / "best.pt", weights_only=True)
    assert best["started_from"] == "pretrained: mnv3.safetensors"
    assert clip_embed.train(kit, run, store=store, progress=False)["already_trained"]

    write_safetensors(store.root, "mnv3.safetensors", timm_state(seed=7))  # same name, other weights
    with pytest.raises(UsageError, match=r"other backbone checkpoint \(student.pretrained\)"):
        clip_embed.train(kit, run, store=store, progress=False)
    with pytest.raises(UsageError, match="other backbone checkpoint"):
        clip_embed.train(scratch_kit, run, store=store, progress=False)
    summary = clip_embed.train(kit, run, store=store, progress=False, restart=True)
    assert summary["started_from"] == "pretrained: mnv3.safetensors" and not summary["resumed"]
