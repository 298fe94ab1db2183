"""The interface every inference backend implements (dkit.edge.backends registers them).

A backend runs one model file of a bundle: `run(x)` takes the pre-processed batch (N, 3, H, W) float32 and
returns the model's first output as float32 numpy, exactly as onnxruntime's `session.run(None, ...)[0]` would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class RuntimeConfigError(Exception):
    """The bundle cannot run here as asked (no such backend, provider, precision or model format; a library
    missing); the message says what to change."""


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
