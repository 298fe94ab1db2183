"""Where the CLIP tokenizer's vocab file is, so the export step can copy it into a judge bundle.

    from dkit.export.tokenizer import vocab_file

    shutil.copy(vocab_file(), bundle_dir / VOCAB_NAME)  # dkit.edge.infer.tokenizer.Tokenizer.from_file reads it

The file is the one open_clip's own tokenizer reads (bpe_simple_vocab_16e6.txt.gz inside the installed
open_clip package), so the device tokenizes prompts with exactly the merges the teacher was trained with.
Needs the `distill` extra (open_clip_torch).
"""

from __future__ import annotations

from pathlib import Path

from dkit.core.errors import DkitError, require
from dkit.edge.infer.tokenizer import VOCAB_NAME


def vocab_file() -> Path:
    """The path of bpe_simple_vocab_16e6.txt.gz shipped inside the installed open_clip package."""
    tokenizer = require("open_clip.tokenizer", what="copying the CLIP tokenizer vocab into the bundle",
                        extra="distill")
    path = Path(tokenizer.default_bpe())
    if path.name != VOCAB_NAME or not path.is_file():
        raise DkitError(f"the installed open_clip has no {VOCAB_NAME} at {path}; reinstall it: "
                        "pip install --force-reinstall open_clip_torch")
    return path
