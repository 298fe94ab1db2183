"""The one toy kit the tests start from: TOY_KIT, and `toy_kit(...)` for the same kit with whole top-level
sections replaced, added or dropped.

    from tests.kits import TOY_KIT, toy_kit, write_toy_kit

    toy_kit(student="{kind: yolo-cls, model: yolov8n-cls.yaml, imgsz: 224}", judge=None)   # YAML text
    write_toy_kit(folder, data="{images: photos, seed: 3}")                                # folder/kit.yaml
"""

from __future__ import annotations

from pathlib import Path

TOY_KIT = """\
name: toy
data: {images: imgs, val: 0.25}
ontology:
  classes:
    cat: [a cat, a kitten]
    dog: a dog
  background: [an empty room]
teacher: {kind: clip, model: ViT-B-32, pretrained: random}
student: {kind: clip-embed, model: mobilenetv3_small_100, imgsz: 224}
judge: {prompt: a cat}
"""


def _sections(text: str) -> dict[str, str]:
    """Top-level key -> its YAML value text (what follows `key:` up to the next top-level key)."""
    out: dict[str, str] = {}
    for line in text.splitlines(keepends=True):
        if line[:1].strip():
            key, _, value = line.partition(":")
            out[key] = value.strip() if value.strip() else "\n"
        else:
            out[key] += line
    return out


def toy_kit(**sections: str | None) -> str:
    """TOY_KIT's YAML with each given top-level section's value replaced by the text given (flow style on one line,
    or a block starting with a newline), added at the end when the toy kit has none, or dropped when None."""
    merged = _sections(TOY_KIT)
    for key, value in sections.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return "".join(f"{k}:{v}" if v.startswith("\n") else f"{k}: {v}\n" for k, v in merged.items())


def write_toy_kit(folder: Path, **sections: str | None) -> Path:
    """`toy_kit(**sections)` written to folder/kit.yaml; returns its path."""
    path = Path(folder) / "kit.yaml"
    path.write_text(toy_kit(**sections))
    return path
