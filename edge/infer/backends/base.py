"""The interface every inference backend implements (dkit.edge.infer.backends registers them).

A backend runs one model file of a bundle: `run(x)` takes the pre-processed batch (N, 3, H, W) float32 and
returns the model's first output as float32 numpy, exactly as onnxruntime's `session.run(None, ...)[0]` would.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import numpy as np

# the location lines of a C++ library's exception (OpenVINO: "Exception from src/inference/src/cpp/core.cpp:121:",
# "Check 'x' failed at src/...:42:"): where it was raised, not why
_WHERE = re.compile(r"^(Exception from |Check '.*' failed at )?\S+\.(cpp|hpp|cc|h):\d+:?$")


class RuntimeConfigError(Exception):
    """The bundle cannot run here as asked (no such backend, provider, precision or model format; a library
    missing); the message says what to change."""


def short_reason(e: BaseException, limit: int = 200) -> str:
    """'RuntimeError: <the first meaningful line>' of a library's exception, for a one-line log: a native library's
    multi-line text (OpenVINO's chain of 'Exception from src/...cpp:N:' locations, then the reason) is cut to its
    first line that says why. Log the full text (str(e)) at debug level beside it."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reasons = [line for line in lines if not _WHERE.match(line)]
    text = (reasons or lines or [""])[0]
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    more = " (...)" if len(lines) > 1 else ""
    return f"{type(e).__name__}: {text}{more}" if text else type(e).__name__


class Backend(ABC):
    name: str = ""  # the registry key
    device: str = ""  # what really runs it, e.g. "CPUExecutionProvider", "openvino CPU", "ncnn CPU, 2 threads"
    dynamic_batch: bool = False  # takes N > 1 in one run
    dynamic_shape: bool = False  # takes any H, W (a stride-aligned minimal letterbox)
    file: str = ""  # the bundle file it runs

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> the first output, float32."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing that needs closing
        """Release what the backend holds."""
