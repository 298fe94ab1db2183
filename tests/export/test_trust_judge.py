"""Issue #24, the judge's figures: the score calibration is fitted on what the device computes for a typed prompt,
on training images only; both moderation figures judge the same prompts; int8 quantizes a ResNet encoder's
convolutions (the linear-convolution rule is the YOLO detection head's only)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

pytest.importorskip("open_clip")
pytest.importorskip("onnx")

from dkit.edge.bundle.manifest import Calibration, ModelEntry  # noqa: E402
from dkit.edge.infer.judge import Judge  # noqa: E402
from dkit.edge.infer.runtime import Runtime  # noqa: E402
from tests.conftest import ASSETS, link_images  # noqa: E402


def _split(run):
    from dkit.distill.students import clip_embed

    records = clip_embed.labelled_records(run)
    return [r for r in records if r.split == "train"], [r for r in records if r.split == "val"]


def _device_embeddings(rt: Runtime, records) -> np.ndarray:
    """(N, D) the device's student embedding of each record's image, decoded as the device decodes a file."""
    return np.stack([rt(cv2.cvtColor(cv2.imread(r.source), cv2.COLOR_BGR2RGB)).embedding for r in records])


def _groups(cos: np.ndarray, prompt_class: np.ndarray, image_class: np.ndarray) -> dict[str, np.ndarray]:
    match = prompt_class[None, :] == image_class[:, None]
    return {"best": cos[match], "rest": cos[~match]}


def test_finding8_judge_calibration_fits_device_single_prompts_on_train_split(judge_run):
    """The curve's input cosines are the device's: the bundle's student on each training image against each ontology
    prompt embedded by the device judge as a typed prompt (one prompt x the templates); no held-out image enters
    the fit; the student-teacher agreement is measured on held-out images only."""
    from dkit.distill.students import clip_embed
    from dkit.distill.teachers import build_teacher

    kit, run, store, _ = judge_run
    train, val = _split(run)
    assert train and val
    texts = [p for prompts in kit.ontology.classes.values() for p in prompts]  # each ontology prompt on its own
    prompt_class = np.array([c for c, prompts in enumerate(kit.ontology.classes.values()) for _ in prompts])
    teacher = build_teacher(kit, store)
    with Runtime.load(run / "bundle") as rt:
        judge = Judge(rt)
        c = rt.manifest.calibration.to_dict()
        typed = np.stack([judge.embed_prompt(p) for p in texts])  # what the kiosk scores a typed prompt with
        s_train, s_val = _device_embeddings(rt, train), _device_embeddings(rt, val)
    t_train = clip_embed.teacher_embeddings(train, teacher, run)
    t_val = clip_embed.teacher_embeddings(val, teacher, run)
    image_class = (t_train @ teacher.text.T).argmax(1)  # the teacher's class of each training image

    # the knots' percentiles are those of the device's cosines on the training images, to float precision
    device = _groups(s_train @ typed.T, prompt_class, image_class)
    for group, values in device.items():
        for q, knot in c["percentiles"][group].items():
            assert np.percentile(values, float(q)) == pytest.approx(knot, abs=2e-5), (group, q)
    # the teacher's curve likewise, from its cached embeddings against the same device prompt embeddings
    teacher_groups = _groups(t_train @ typed.T, prompt_class, image_class)
    for group, values in teacher_groups.items():
        for q, knot in c["teacher"]["percentiles"][group].items():
            assert np.percentile(values, float(q)) == pytest.approx(knot, abs=2e-5), (group, q)
    # adding the held-out images (as the fit did before) moves the knots: the check above can tell
    with_val = _groups(np.concatenate([s_train, s_val]) @ typed.T, prompt_class,
                       np.concatenate([image_class, (t_val @ teacher.text.T).argmax(1)]))
    assert any(np.percentile(with_val[g], float(q)) != pytest.approx(k, abs=2e-5)
               for g in ("best", "rest") for q, k in c["percentiles"][g].items())

    assert c["split"] == "train" and c["images"] == len(train) and c["prompts"] == texts

    # the agreement: held-out images only, (image, prompt) pairs, the device's scores through each curve
    a = c["agreement"]
    assert a["split"] == "val" and a["pairs"] == len(val) * len(texts)
    cal_s, cal_t = Calibration.from_dict(c), Calibration.from_dict(c["teacher"])
    mine, theirs = cal_s.to_score(s_val @ typed.T).ravel(), cal_t.to_score(t_val @ typed.T).ravel()
    assert a["mean_abs_score_diff"] == pytest.approx(float(np.abs(mine - theirs).mean()), abs=0.01)


def test_finding9a_eval_and_export_moderation_judge_the_same_prompts(judge_run):
    """dkit eval's moderation_agreement and the export's verdict report judge the same prompts (judge.prompt
    included), and the export's `moderation_agreement` is eval's figure on the same embeddings."""
    from dkit.distill.students import clip_embed
    from dkit.distill.students.clip_embed.evaluation import _moderation
    from dkit.distill.students.clip_embed.prompts import judge_prompts, moderation_sets
    from dkit.distill.teachers import build_teacher
    from dkit.export.judge import verdict_agreement_report

    kit, run, store, _ = judge_run
    # a kiosk prompt that is not among judge.prompts: the eval used to leave it out, the export kept it
    kit = dataclasses.replace(kit, judge=dataclasses.replace(kit.judge, prompt="a dog"))
    assert judge_prompts(kit) == ["a dog", "a cat", "a raccoon driving a tractor"]
    teacher = build_teacher(kit, store)
    prompts, text, unsafe, cfg = moderation_sets(kit, teacher)
    np.testing.assert_allclose(prompts, teacher.embed_prompts([[p] for p in judge_prompts(kit)]), atol=1e-6)
    assert cfg == kit.judge.device_config() and len(text) == 4 and len(unsafe) == 1
    _, val = _split(run)
    with Runtime.load(run / "bundle") as rt:
        student = _device_embeddings(rt, val)
        c = rt.manifest.calibration.to_dict()
    teacher_emb = clip_embed.teacher_embeddings(val, teacher, run)
    report = verdict_agreement_report(student, teacher_emb, (prompts, text, unsafe, cfg), c, c["teacher"])
    assert report["pairs"] == len(val) * 3
    assert report["moderation_agreement"] == pytest.approx(_moderation(kit, teacher, student, teacher_emb), abs=1e-4)
    # the shipped bundle's figure is over its kit's judge prompts too (a cat, a raccoon driving a tractor)
    assert c["agreement"]["moderation"]["pairs"] == len(val) * len(judge_prompts(judge_run[0]))


def test_finding9d_int8_quantizes_a_resnet_clip_embed_encoders_convolutions(tmp_path):
    """int8 of a small ResNet clip-embed student: every convolution quantized but the first (raw pixels); the
    'no activation after it' rule stays with the YOLO detection head (before: 12 of 20 left in float)."""
    import onnx
    import torch

    from dkit.core.kit import load_kit
    from dkit.distill.students.clip_embed import build_student, preprocess_spec
    from dkit.export.judge import _onnx_export
    from dkit.export.variants import make_variant

    if not (ASSETS / "README.md").is_file():
        pytest.skip(f"real test assets not found at {ASSETS}")
    images = link_images(ASSETS / "data/imagenet-sample", "*.JPEG", 6, tmp_path / "imgs")
    (tmp_path / "kit.yaml").write_text(
        f"name: resnet-int8\ndata: {{images: {images}}}\n"
        "ontology: {classes: {animal: [an animal]}, background: [an empty scene]}\n"
        "teacher: {kind: clip, model: ViT-S-32-alt, pretrained: random}\n"
        "student: {kind: clip-embed, model: resnet18, imgsz: 64}\n"
        "export: {precisions: [fp32, int8], accuracy_guard: 0.0, archive: false}\n")
    kit = load_kit(tmp_path / "kit.yaml")
    spec = preprocess_spec(kit)
    model = build_student("resnet18", 32, seed=0).eval()
    fp32 = tmp_path / "student.onnx"
    _onnx_export(model, (torch.zeros(1, 3, 64, 64),), fp32, ["images"], ["embedding"], kit.export.opset)
    rgb = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(images.iterdir())]
    entry = make_variant("int8", fp32, tmp_path, kit, rgb[:2], rgb[2:], spec, "embed")
    assert isinstance(entry, ModelEntry)  # not Refused

    graph = onnx.load(str(tmp_path / entry.file)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = [n.name for n in convs if n.input[1] in dequantized]
    floating = [n.name for n in convs if n.input[1] not in dequantized]
    assert len(convs) == 20  # ResNet-18: the stem, 16 in its blocks, 3 shortcuts
    assert len(floating) == 1 and len(quantized) == 19, floating  # only the input convolution stays float
