"""CLIP's byte-level BPE tokenizer in plain Python + numpy, for embedding kiosk prompts on the device.

    tok = Tokenizer.from_file(bundle.path(VOCAB_NAME))    # bpe_simple_vocab_16e6.txt.gz (or the .txt)
    tok.encode("a raccoon")                                 # [320, 29516]: ids without start/end
    ids = tok(["a cat", "a dog"])                           # (N, 77) int64, the text encoder's input

The ids are identical to open_clip's `get_tokenizer("ViT-B-32")` (open_clip.tokenizer.SimpleTokenizer,
`clean="lower"`): the text is fixed with ftfy, HTML-unescaped twice, whitespace-collapsed and lower-cased;
split with the same regex (the two special tokens, the contractions 's 't 're 've 'm 'll 'd, runs of
letters, single digits, runs of other non-space characters); each piece is UTF-8 encoded, mapped byte by
byte to printable characters and merged with the first 49152-256-2 BPE merges of the vocab file. Each
row is `<start_of_text> ids... <end_of_text>` padded with 0; text too long for the context keeps its
first `context_length` tokens with the last one replaced by `<end_of_text>`. A prompt that literally
contains "<start_of_text>" or "<end_of_text>" gets the special id there, as open_clip does.

BPE results are cached per word (bounded), so scoring the same prompts again costs little. The vocab
file ships in the bundle (dkit.export.tokenizer.vocab_file() finds open_clip's copy); nothing here imports
torch or open_clip.
"""

from __future__ import annotations

import functools
import gzip
import html
import zlib
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
import regex

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77  # every CLIP text encoder open_clip ships uses 77 positions
NUM_MERGES = 49152 - 256 - 2  # merges open_clip reads from the file (after its header line)
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2  # 49408: bytes, bytes + "</w>", merges, start/end
SOT, EOT = "<start_of_text>", "<end_of_text>"
BPE_CACHE_SIZE = 65536  # distinct words whose BPE result is kept

_PATTERN = regex.compile(
    rf"""{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+""", regex.IGNORECASE
)


class TokenizerError(Exception):
    """The vocab file is missing or not a CLIP BPE vocab; the message names the file."""


def bytes_to_unicode() -> dict[int, str]:
    """Each of the 256 byte values -> a printable character (printable Latin-1 bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
    return dict(zip(printable + others, chars, strict=True))


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy, HTML entities (twice), collapse whitespace, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class Tokenizer:
    """CLIP BPE tokenizer; build it with `Tokenizer.from_file` (or from the merge pairs themselves)."""

    def __init__(self, merges: Sequence[tuple[str, str]], context_length: int = CONTEXT_LENGTH):
        self.context_length = _check_context_length(context_length)
        self._byte_encoder = bytes_to_unicode()
        byte_chars = list(self._byte_encoder.values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab)), strict=True))
        self.bpe_ranks: dict[tuple[str, str], int] = dict(zip(merges, range(len(merges)), strict=True))
        self.vocab_size = len(self.encoder)
        self.sot_token_id = self.encoder[SOT]  # 49406
        self.eot_token_id = self.encoder[EOT]  # 49407
        self._bpe = functools.lru_cache(maxsize=BPE_CACHE_SIZE)(self._bpe_word)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = CONTEXT_LENGTH) -> Tokenizer:
        """Read bpe_simple_vocab_16e6.txt.gz (gzip is recognised by its magic bytes, so a .txt works too)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise TokenizerError(f"{path}: CLIP tokenizer vocab file not found (expected {VOCAB_NAME})") from e
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read the CLIP tokenizer vocab file: {e}") from e
        try:
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            lines = data.decode("utf-8").split("\n")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: corrupt CLIP tokenizer vocab file ({type(e).__name__}: {e})") from e
        body = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
        if len(body) != NUM_MERGES:
            raise TokenizerError(f"{path}: corrupt CLIP tokenizer vocab file: expected {NUM_MERGES} BPE merges "
                                 f"after the header line, got {len(body)}")
        merges: list[tuple[str, str]] = []
        for number, line in enumerate(body, start=2):
            pair = line.split()
            if len(pair) != 2:
                raise TokenizerError(f"{path}: corrupt CLIP tokenizer vocab file: line {number} should be two "
                                     f"symbols separated by a space, got {line[:80]!r}")
            merges.append((pair[0], pair[1]))
        return cls(merges, context_length)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean(text)):
            word = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self._bpe(word))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """(N, context_length) int64 rows: start, ids, end, zero padding; too long -> cut, last id = end."""
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else _check_context_length(context_length)
        out = np.zeros((len(texts), length), dtype=np.int64)  # (N, L)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out

    def _bpe_word(self, word: str) -> tuple[str, ...]:
        """One regex piece (already byte-mapped) -> its vocab symbols, merging the best-ranked pair first."""
        if word in (SOT, EOT):
            return (word,)
        symbols = [*word[:-1], word[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:], strict=False), key=lambda p: ranks.get(p, NUM_MERGES))
            if pair not in ranks:
                break
            first, second = pair
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)


def _check_context_length(context_length: int) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length: expected an int >= 2 (room for start and end), got {context_length!r}")
    return context_length
