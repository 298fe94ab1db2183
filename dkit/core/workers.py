"""The one rule for how many image-decoding processes a stage uses.

    from dkit.core.workers import decode_workers

    decode_workers(kit.data.workers)      # 0 in the kit: one per spare core (all but the one running the model)
"""

from __future__ import annotations

import os


def decode_workers(configured: int = 0) -> int:
    """`configured` when set (> 0), else one process per core but one, at least one."""
    return configured if configured > 0 else max(1, (os.cpu_count() or 2) - 1)
