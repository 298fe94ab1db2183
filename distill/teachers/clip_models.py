"""Built open_clip models and their prompt embeddings, reused within one process.

One `dkit run` (label, train, eval, export) or one test session builds the same CLIP teacher several
times: each build creates the model and loads its weights (seconds), and each teacher embeds the same
prompts again. `ClipModels` keeps the last few built models, keyed by everything that defines them (see
`ClipModelKey`), and per model the embeddings of the prompt sets it has embedded, so a second teacher of
the same kit reuses both.

A cached model is shared only while it is as it was built: its parameters and buffers are the same
tensors, unmodified (torch's in-place version counters), on the same device, of the same dtype, and no
submodule has changed its attributes (eval mode, a patched method, a hook). A teacher whose model was moved
(`model.cpu()`), cast, switched to training or otherwise changed is never handed to the next build: the
entry is dropped and the model built afresh.

    from dkit.distill.teachers.clip_models import ClipModels

    models = ClipModels(size=2)
    clip = models.get(key, build)              # build() -> ClipModel, called on a miss only
    vector = models.embed(key, clip, (templates, prompts), compute)  # compute() -> np.ndarray, on a miss only
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClipModelKey:
    """Everything that defines a built open_clip model.

    model: the open_clip model name. weights: ("random", seed) for untrained weights, else the checkpoint
    file's path and content identity (its sha256, or for an open_clip tag's store file its size and
    modification time). load: the tag's config that travels with the weights (QuickGELU, mean/std,
    interpolation, resize mode). device: where the model lives.
    """

    model: str
    weights: tuple
    load: tuple
    device: str


@dataclasses.dataclass(eq=False)
class ClipModel:
    """A built open_clip model in eval mode, its image preprocessing and tokenizer, and what is read off it once."""

    model: object
    preprocess: Callable
    tokenizer: Callable
    logit_scale: float
    dim: int
    signature: tuple = ()  # state_signature(model) when it was cached

    def unchanged(self) -> bool:
        """True while the model is as it was when cached (same tensors, unmodified, same place, eval mode)."""
        return bool(self.signature) and state_signature(self.model) == self.signature


def state_signature(model) -> tuple:
    """What a shared model must keep to be shared: per parameter and buffer its identity, in-place version
    counter, device and dtype; per submodule its attributes (eval mode, anything set on it such as a patched
    method, and how many hooks it has). Cheap: no tensor data is read."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return (tuple((name, id(t), t._version, str(t.device), t.dtype) for name, t in tensors),
            tuple(_attributes(m) for m in model.modules()))


def _attributes(module) -> tuple:
    return id(module), tuple((k, id(v), len(v) if isinstance(v, dict) else None)
                             for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules"))


class ClipModels:
    """A bounded cache (least recently used first out) of built open_clip models and their prompt embeddings.

    Args:
        size: how many models to keep (each holds its weights in memory).
        prompt_sets: how many prompt-set embeddings to keep per model.
    """

    def __init__(self, size: int = 2, prompt_sets: int = 4096):
        self.size, self.prompt_sets = size, prompt_sets
        self._models: OrderedDict[ClipModelKey, ClipModel] = OrderedDict()
        self._prompts: dict[ClipModelKey, OrderedDict] = {}
        self._lock = threading.Lock()

    def get(self, key: ClipModelKey, build: Callable[[], ClipModel]) -> ClipModel:
        """The model for `key`: the cached one while it is unchanged, else `build()`'s, cached."""
        with self._lock:
            cached = self._models.get(key)
            if cached is not None and cached.unchanged():
                self._models.move_to_end(key)
                return cached
            self._drop(key)
        built = build()
        built.signature = state_signature(built.model)
        with self._lock:
            self._drop(key)
            self._models[key] = built
            self._prompts[key] = OrderedDict()
            while len(self._models) > self.size:
                self._drop(next(iter(self._models)))
        return built

    def embed(self, key: ClipModelKey, clip: ClipModel, prompt_set: Hashable,
              compute: Callable[[], np.ndarray]) -> np.ndarray:
        """`compute()`'s embedding of one prompt set (e.g. (templates, prompts)) by `clip`, cached while `clip`
        is the cached model for `key` and unchanged; a copy, so a caller's edits never reach the cache."""
        with self._lock:
            shared = self._models.get(key) is clip and clip.unchanged()
            table = self._prompts.get(key) if shared else None
            if table is not None and prompt_set in table:
                table.move_to_end(prompt_set)
                return table[prompt_set].copy()
        vector = compute()
        if table is not None:
            with self._lock:
                if self._prompts.get(key) is table:
                    table[prompt_set] = vector.copy()
                    while len(table) > self.prompt_sets:
                        table.popitem(last=False)
        return vector

    def clear(self) -> None:
        """Forget every model and embedding."""
        with self._lock:
            self._models.clear()
            self._prompts.clear()

    def _drop(self, key: ClipModelKey) -> None:
        self._models.pop(key, None)
        self._prompts.pop(key, None)
