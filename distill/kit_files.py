"""Every file a kit needs from the model store: resolved (downloaded when a network allows), or missing, all at once.

    from dkit.core.kit import load_kit
    from dkit.core.store import ModelStore
    from dkit.distill.kit_files import kit_files, require_files

    kit = load_kit("datasets/coco128/kit.yaml")
    for f in kit_files(kit, ModelStore()):        # what `dkit fetch KIT` prints
        print(f.role, f.found or f.problem)
    require_files(kit, ModelStore(), "datasets/coco128/kit.yaml")   # what `dkit label` checks first

The files: the teacher's weights, a CLIP teacher's YOLO box proposer (detection kits), the YOLO student's starting
weights (optional: it trains from scratch without them), a clip-embed backbone checkpoint (student.pretrained)
and the images (data.images, or the data.url archive). `require_files` raises one NotInStoreError (exit 3)
naming every missing required file, what to run (`dkit fetch KIT` where there is a network) and the local-files
route (docs/WORKFLOW.md, "Offline: the model store"), instead of stopping at the first one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from dkit.core.errors import NotInStoreError


@dataclasses.dataclass(frozen=True)
class KitFile:
    """One file a kit needs: where it was found, or why it is missing."""

    role: str  # teacher, proposer, student, backbone, images
    found: str | None = None  # its path (None: missing, or nothing set)
    problem: str | None = None  # the NotInStoreError message: the file, where to put it, where to get it
    optional: str = ""  # why the kit works without it ("" : required)
    note: str = ""  # nothing to resolve (no images set), said instead of a path

    @property
    def missing(self) -> bool:
        return self.problem is not None and not self.optional


def kit_files(kit, store, *, optional: bool = True) -> list[KitFile]:
    """Resolve each file the kit needs in `store`, downloading what is missing when it can (see the docstring);
    `optional=False` leaves out the files the kit can do without."""
    from dkit.distill.students import student_plugin
    from dkit.distill.teachers import teacher_weights

    files = [_resolve("teacher", lambda: teacher_weights(kit, store))]
    proposer = kit.teacher.proposer
    if kit.teacher.kind == "clip" and kit.task == "detect" and proposer.kind == "yolo":
        files.append(_resolve("proposer", lambda: store.yolo_weights(proposer.model)))
    s = kit.student
    if optional and student_plugin(s.kind).weights_in_store:
        files.append(_resolve("student", lambda: store.yolo_weights(s.model),
                              optional=" (optional: training starts from scratch)"))
    if s.pretrained is not None:  # a timm checkpoint the clip-embed backbone starts from: never downloaded
        files.append(_resolve("backbone", lambda: store.backbone_checkpoint(s.pretrained)))
    if kit.data.images is not None:
        files.append(KitFile("images", found=str(kit.data.images)))
    elif kit.data.url is not None:
        d = kit.data
        files.append(_resolve("images", lambda: store.dataset(d.url, sha256=d.sha256, subdir=d.subdir)))
    else:
        files.append(KitFile("images", note="none set (pass --data DIR to label)"))
    return files


def require_files(kit, store, kit_arg: str) -> list[KitFile]:
    """kit_files, or one NotInStoreError listing every missing required file and the two ways out. The libraries
    labeling needs (the teacher's, the engine's) are checked first: a missing extra fails before any download."""
    from dkit.core.errors import require
    from dkit.distill.engines import engine
    from dkit.distill.teachers import TEACHERS

    engine(kit.label.engine)
    require(TEACHERS[kit.teacher.kind].partition(":")[0], what=f"the {kit.teacher.kind} teacher", extra="distill")
    files = kit_files(kit, store, optional=False)
    missing = [f for f in files if f.missing]
    if missing:
        lines = "\n".join(f"  {f.role}: {f.problem}" for f in missing)
        raise NotInStoreError(
            f"{len(missing)} file(s) the kit needs are not in the model store ({store.root}) and cannot be "
            f"downloaded here:\n{lines}\n"
            f"  -> on a machine with a network run `dkit fetch {kit_arg}`, then copy {store.root} here (or set "
            "DKIT_HOME to the copy); or run on local files: place the weights as named above and pass --data DIR, "
            "e.g. `make distill KIT=datasets/coco128/kit.yaml DATA=DIR` with yolov8n.pt in the store (README: "
            "Set-up; docs/WORKFLOW.md: Offline)")
    return files


def _resolve(role: str, resolve: Callable[[], object], optional: str = "") -> KitFile:
    try:
        return KitFile(role, found=str(resolve()), optional=optional)
    except NotInStoreError as e:
        return KitFile(role, problem=str(e), optional=optional)
