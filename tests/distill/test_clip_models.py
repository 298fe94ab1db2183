"""The in-process cache of built CLIP models and prompt embeddings (dkit.distill.teachers.clip_models): a second
teacher of the same kit reuses the model and the embeddings, bit for bit what a fresh build gives; another key, a
changed checkpoint file or a model changed after it was built is never shared; the cache stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from dkit.core.kit import load_kit  # noqa: E402
from dkit.core.store import ModelStore  # noqa: E402
from dkit.distill.students.clip_embed.prompts import prompt_embeddings  # noqa: E402
from dkit.distill.teachers import build_teacher  # noqa: E402
from dkit.distill.teachers import clip as clip_teacher  # noqa: E402
from dkit.distill.teachers.clip_models import ClipModel, ClipModelKey, ClipModels  # noqa: E402

KIT = """\
name: t
ontology:
  classes:
    cat: [a cat, a kitten]
    dog: [a dog]
  background: [nothing]
teacher: {{kind: clip, model: ViT-S-32, pretrained: random, templates: {templates}}}
student: {{kind: clip-embed, model: mobilenetv3_small_050, imgsz: 64}}
"""


def kit_with(folder: Path, templates: str = '["a photo of {}."]'):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kit.yaml").write_text(KIT.format(templates=templates))
    return load_kit(folder / "kit.yaml")


def embeddings(teacher) -> np.ndarray:
    return np.concatenate([teacher.text, teacher.background, teacher.embed_prompts([["a car"], ["a bus", "a van"]])])


def test_a_second_teacher_reuses_the_model_and_gives_what_a_fresh_build_gives(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_teacher, "MODELS", ClipModels(size=2))
    kit, store = kit_with(tmp_path / "a"), ModelStore(tmp_path / "store", offline=True)
    first = build_teacher(kit, store)
    cached = embeddings(first)
    again = build_teacher(kit, store)
    assert again.model is first.model and again is not first
    assert np.array_equal(embeddings(again), cached)
    assert np.array_equal(prompt_embeddings(kit, again), prompt_embeddings(kit, first))

    monkeypatch.setattr(clip_teacher, "MODELS", ClipModels(size=2))  # nothing cached: the build of before
    fresh = build_teacher(kit, store)
    assert fresh.model is not first.model
    assert np.array_equal(embeddings(fresh), cached)
    assert (fresh.cache_key, fresh.id, fresh.dim, fresh.logit_scale) == (first.cache_key, first.id, first.dim,
                                                                          first.logit_scale)

    other = build_teacher(kit_with(tmp_path / "b", '["art of {}."]'), store)  # other templates: same model
    assert other.model is fresh.model
    uncached = other._embed_set(["a cat", "a kitten"], ("art of {}.",))
    assert np.array_equal(other.text[0], uncached) and not np.array_equal(other.text[0], first.text[0])


def test_a_teacher_whose_model_was_changed_shares_it_no_more(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_teacher, "MODELS", ClipModels(size=2))
    kit, store = kit_with(tmp_path), ModelStore(tmp_path / "store", offline=True)
    first = build_teacher(kit, store)
    text = first.text.copy()
    with torch.no_grad():
        first.model.logit_scale.add_(1.0)  # in place: the next teacher must not see it
        first.model.token_embedding.weight.mul_(2.0)
    second = build_teacher(kit, store)
    assert second.model is not first.model and second.logit_scale == first.logit_scale  # read off a fresh build
    assert second.model.logit_scale.item() != first.model.logit_scale.item()
    assert np.array_equal(second.text, text)
    changed = first._embed_set(["a cat", "a kitten"], ("a photo of {}.",))
    assert not np.array_equal(changed, text[0])
    assert np.array_equal(first.embed_prompts([["a cat", "a kitten"]])[0], changed)  # its own model, not the cache
    second.model = first.model  # a teacher given another model embeds with it
    assert np.array_equal(second.embed_prompts([["a cat", "a kitten"]])[0], changed)
    second.model = second._clip.model
    second.model.train()
    assert build_teacher(kit, store).model is not second.model


def model_key(name: str = "m", device: str = "cpu") -> ClipModelKey:
    return ClipModelKey(name, ("random", 0), (), device)


def tiny() -> ClipModel:
    return ClipModel(torch.nn.Linear(2, 2).eval(), preprocess=lambda x: x, tokenizer=lambda x: x,
                     logit_scale=1.0, dim=2)


def test_the_cache_is_bounded_and_a_key_never_returns_another_model():
    models, built = ClipModels(size=2), []

    def build():
        built.append(tiny())
        return built[-1]

    a = models.get(model_key("a"), build)
    assert models.get(model_key("a"), build) is a and len(built) == 1
    b = models.get(model_key("b"), build)
    assert b is not a and models.get(model_key("a", device="cuda:0"), build) not in (a, b)
    assert len(built) == 3 and len(models._models) == 2  # "a" on cpu, the least recently used, went out
    assert models.get(model_key("a"), build) is not a and len(built) == 4


@pytest.mark.parametrize("change", ["in place", "dtype", "train", "patched method", "hook", "replaced weight"])
def test_a_changed_model_is_built_again(change):
    models = ClipModels(size=2)
    first = models.get(model_key(), tiny)
    net = first.model
    if change == "in place":
        with torch.no_grad():
            net.weight.mul_(2)
    elif change == "dtype":
        net.double()
    elif change == "train":
        net.train()
    elif change == "patched method":
        net.forward = lambda x: x
    elif change == "hook":
        net.register_forward_hook(lambda *a: None)
    else:
        net.weight = torch.nn.Parameter(torch.zeros(2, 2))
    assert not first.unchanged()
    assert models.get(model_key(), tiny) is not first


def test_prompt_embeddings_are_cached_per_model_as_copies():
    models, key, calls = ClipModels(size=2), model_key(), []
    clip = models.get(key, tiny)

    def compute():
        calls.append(1)
        return np.ones(2, np.float32)

    first = models.embed(key, clip, ("t", ("a cat",)), compute)
    first[0] = 5.0  # the caller's copy
    assert models.embed(key, clip, ("t", ("a cat",)), compute).tolist() == [1.0, 1.0] and len(calls) == 1
    models.embed(key, clip, ("t", ("a dog",)), compute)
    assert len(calls) == 2
    stranger = tiny()  # not the cached model of that key: never cached
    models.embed(key, stranger, ("t", ("a cat",)), compute)
    assert len(calls) == 3
    with torch.no_grad():
        clip.model.weight.add_(1)  # changed: its embeddings are computed again
    models.embed(key, clip, ("t", ("a cat",)), compute)
    assert len(calls) == 4


def test_a_rewritten_checkpoint_file_is_another_key(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"one")
    first = clip_teacher._model_key("ViT-S-32", path, "digest-one", {}, "cpu")
    second = clip_teacher._model_key("ViT-S-32", path, "digest-two", {}, "cpu")
    tag = clip_teacher._model_key("ViT-S-32", path, None, {"quick_gelu": True, "mean": [0.5] * 3}, "cpu")
    path.write_bytes(b"longer")
    retag = clip_teacher._model_key("ViT-S-32", path, None, {"quick_gelu": True, "mean": [0.5] * 3}, "cpu")
    assert len({first, second, tag, retag}) == 4
    assert clip_teacher._model_key("ViT-S-32", None, None, {}, "cpu").weights == ("random", 0)
