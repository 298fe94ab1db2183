"""One side of the arm64/x86 parity check: run with the interpreter of a base-only install (no torch).

For the detect and classify bundles it stores, per image: a hash of the decoded BGR pixels, the preprocessed
input tensor (exactly what dkit.edge feeds onnxruntime) and the raw model output. With --ref (the x86 side's
output folder) it also runs the model on the *x86* input tensors, which separates preprocessing from inference.
For the judge bundle it stores the image embeddings of Quick Draw doodles (PNG, rendered the kiosk way on x86),
their verdicts against the kit prompt and a new prompt (tokenized and embedded on this machine), the tokens and
the new prompt's embedding.

    python probe.py --bundles DIR --images DIR --doodles DIR --out DIR [--ref DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from dkit.edge.infer.judge import Judge
from dkit.edge.infer.runtime import Runtime
from dkit.edge.stream.sources import _decode

NEW_PROMPT = "a purple giraffe riding a bicycle"


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})


def cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("features", "flags")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


HWCAP = {1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve"}
HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16", 23: "sme"}


def hwcaps() -> str:
    """aarch64 feature bits the process sees (AT_HWCAP/AT_HWCAP2 of /proc/self/auxv; qemu-user emulates it)."""
    if platform.machine() != "aarch64":
        return ""
    try:
        words = np.frombuffer(Path("/proc/self/auxv").read_bytes(), np.uint64).reshape(-1, 2)
    except (OSError, ValueError):
        return "unknown"
    aux = {int(k): int(v) for k, v in words}
    h, h2 = aux.get(16, 0), aux.get(26, 0)
    return " ".join([n for b, n in HWCAP.items() if h >> b & 1] + [n for b, n in HWCAP2.items() if h2 >> b & 1])


def probe_model(bundle: Path, files: list[Path], out: Path, ref: Path | None, tag: str) -> None:
    rt = Runtime.load(bundle, warmup=0)
    names, hashes, tensors, raws, cross = [], [], [], [], []
    ref_npz = np.load(ref / f"{tag}.npz") if ref else None
    for i, p in enumerate(files):
        bgr = _decode(p)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        x, _ = rt.preprocess(rgb)
        names.append(p.name)
        hashes.append(hashlib.sha256(np.ascontiguousarray(bgr).tobytes()).hexdigest())
        tensors.append(x[0])
        if ref_npz is not None:  # the model on the x86 input tensor; on our own only where the two differ
            assert str(ref_npz["names"][i]) == p.name, (ref_npz["names"][i], p.name)
            ref_x = ref_npz["tensors"][i][None]
            cross.append(rt.infer(ref_x)[0])
            raws.append(cross[-1] if np.array_equal(ref_x, x) else rt.infer(x)[0])
        else:
            raws.append(rt.infer(x)[0])
        print(f"probe: {tag} {i + 1}/{len(files)} {p.name}", flush=True)  # noqa: T201 - progress
    extra = {"cross_raw": np.stack(cross)} if cross else {}
    np.savez_compressed(out / f"{tag}.npz", names=np.array(names), decoded_sha256=np.array(hashes),
                        tensors=np.stack(tensors), raw=np.stack(raws), **extra)
    rt.close()
    print(f"probe: {tag}: {len(files)} images", flush=True)  # noqa: T201 - a command-line tool's output


def probe_judge(bundle: Path, files: list[Path], out: Path) -> None:
    rt = Runtime.load(bundle, warmup=0)
    judge = Judge(rt)
    prompt = rt.manifest.judge_config.prompt or "a cat"
    tokens = judge.tokenizer([t.format(NEW_PROMPT) for t in judge.templates])
    new = judge.embed_prompt(NEW_PROMPT)
    embs, verdicts = [], []
    for p in files:
        rgb = cv2.cvtColor(_decode(p), cv2.COLOR_BGR2RGB)
        e = rt(rgb).embedding
        embs.append(e)
        for pr in (prompt, NEW_PROMPT):
            v = judge.judge(e, pr)
            verdicts.append({"image": p.name, "prompt": pr, "cosine": v.cosine, "score": v.score,
                             "verdict": v.verdict})
    np.savez_compressed(out / "judge.npz", names=np.array([p.name for p in files]), embeddings=np.stack(embs),
                        tokens=tokens, new_prompt=new, prompts=rt.prompt_embeddings)
    (out / "judge_verdicts.json").write_text(json.dumps({"prompt": prompt, "new_prompt": NEW_PROMPT,
                                                         "verdicts": verdicts}, indent=1))
    rt.close()
    print(f"probe: judge: {len(files)} doodles, prompts {prompt!r} and {NEW_PROMPT!r}", flush=True)  # noqa: T201 - a command-line tool's output


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--doodles", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ref", type=Path)
    ap.add_argument("--only", choices=["detect", "classify", "judge"], help="one bundle only (diagnosis)")
    ap.add_argument("--limit", type=int, default=0, help="the first N images only (diagnosis)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    files = images(a.images)[:a.limit or None]
    import importlib.metadata as md
    env = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
           "onnxruntime": ort.__version__, "opencv": cv2.__version__, "cpu_features": cpu_features(),
           "hwcaps": hwcaps(), "qemu_cpu": os.environ.get("QEMU_CPU", ""),
           "dkit_file": sys.modules["dkit.edge.infer.runtime"].__file__,
           "packages": {d.metadata["Name"].lower(): d.version for d in md.distributions()}}
    (a.out / "env.json").write_text(json.dumps(env, indent=1, sort_keys=True))
    print(f"probe: {env['machine']} python {env['python']} numpy {env['numpy']} onnxruntime {env['onnxruntime']} "  # noqa: T201 - a command-line tool's output
          f"opencv {env['opencv']}{' hwcaps ' + env['hwcaps'] if env['hwcaps'] else ''}", flush=True)
    if a.only in (None, "detect"):
        probe_model(a.bundles / "detect", files, a.out, a.ref, "detect")
    if a.only in (None, "classify"):
        probe_model(a.bundles / "classify", files, a.out, a.ref, "classify")
    if a.only in (None, "judge"):
        probe_judge(a.bundles / "judge", images(a.doodles), a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
