"""dkit.edge.infer.tokenizer gives exactly open_clip's token ids, reads only a sound vocab file, and imports no torch.

The comparison tests need open_clip (the `distill` extra) for the reference tokenizer and the vocab file;
the error, mechanics and import tests run on a base install too.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dkit.edge.infer.tokenizer import CONTEXT_LENGTH, NUM_MERGES, VOCAB_NAME, VOCAB_SIZE, Tokenizer, TokenizerError
from tests.conftest import ROOT


def _words(n: int) -> str:
    return " ".join(["a"] * n)  # "a" is one token: n words -> n ids


TABLE: dict[str, list[str]] = {
    "plain": [
        "a photo of a cat", "a raccoon", "a photo of a dog.", "a bad photo of the car", "a sculpture of a {}.",
        "itap of a person", "a photo of the large bird", "person riding a bicycle on the street",
        "a close-up photo of a red apple", "graffiti of a truck", "a low resolution photo of the kiosk",
        "an origami airplane", "the toy firetruck", "a tattoo of the hand", "a black and white photo of a zebra",
        "a jpeg corrupted photo of a stop sign", "no person in the frame", "background", "nothing", "x",
        "hello world", "supercalifragilisticexpialidocious",
        "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
        "camelCaseWordsHere", "snake_case_words_here", "kebab-case-words-here", "e-mail me@example.com",
        "https://example.com/path?q=1&x=2#frag", "C:\\Users\\name\\file.txt",
        "#hashtag @mention $100 50% a*b (x) [y] {z} <tag> ~tilde `code` ^caret |pipe",
    ],
    "upper": [
        "A PHOTO OF A CAT", "HeLLo WoRLD", "ÉCOLE FRANÇAISE", "STRASSE Straße", "İstanbul", "ΣΊΣΥΦΟΣ",
        "KELVIN \u212a", "ǅungla", "A RACCOON'S TAIL",
    ],
    "punctuation": [
        "...", "!!!", "?!?!", "hello, world!", "wait... what?!", "a--b---c", "''", '""', "'", "(((nested)))",
        ";:,.", "a.b.c", "-", "_", "__init__", "\\", "/", "<|endoftext|>", "a/b\\c|d", "¿qué? ¡sí!", "«guillemets»",
    ],
    "apostrophes": [
        "it's", "they're", "we've", "we'll", "he'd", "i'm", "don't", "IT'S", "WE'LL", "THEY'RE", "O'Neil",
        "rock 'n' roll", "'s", "'tis", "the dogs' bowls", "it\u2019s curly", "\u2018single\u2019 \u201cdouble\u201d",
        "can't won't shan't", "y'all'd've", "'S'T'RE'VE'M'LL'D", "it`s backtick", "'\u017f long s", "'sss 'dd 'mm",
        "a''s", "''ll",
    ],
    "numbers": [
        "0", "1234567890", "3.14159", "1,000,000", "2024-01-15", "12:30pm", "v2.0.1", "4k 8K 1080p", "½ ¾ ²³",
        "١٢٣ arabic-indic digits", "१२३ devanagari digits", "Ⅻ roman numeral", "①②③", "0x1F 0b1010", "-42 +7 1e-9",
    ],
    "accents": [
        "café", "naïve résumé", "crème brûlée", "São Paulo", "Zürich", "Ångström", "Dvořák", "Łódź", "ñandú",
        "cafe\u0301 combining", "e\u0308\u0301 stacked", "Ǆ ǅ ǆ digraphs", "ﬁ ligature ﬀ", "Æsir œuvre",
    ],
    "cjk_and_scripts": [
        "东京塔", "東京タワー", "ひらがな カタカナ", "한국어 텍스트", "中文，标点。", "日本語の文章です",
        "漢字kanji混合mixed", "𠀀𠀁 ext b", "مرحبا بالعالم", "שלום עולם", "Привет мир", "Ελληνικά",
        "नमस्ते दुनिया", "สวัสดีชาวโลก", "ሰላም", "Հայերեն", "ქართული", "\u200fRTL mark\u200e",
    ],
    "emoji": [
        "😀", "🐱 cat", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "👩🏾\u200d💻", "🏳\ufe0f\u200d🌈", "🇫🇷🇯🇵",
        "🇺🇸 flag", "❤\ufe0f", "☺\ufe0e text style", "1\ufe0f\u20e3 keycap",
        "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f scotland", "🧑\u200d🤝\u200d🧑",
        "a🐶b🐶c", "🔥🔥🔥",
    ],
    "html": [
        "&amp;", "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp; double", "&amp;amp;amp; triple",
        "&quot;quoted&quot;", "&#39;apos&#39;", "&#x1F600;", "&nbsp;non&nbsp;breaking", "&AMP; caps",
        "&copy; 2024", "&notanentity;", "a & b < c > d", "&#0;", "&#128512;", "&lt;start_of_text&gt;",
    ],
    "mojibake": [
        "Ã©tÃ©", "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "cafÃ©", "Ã¼ber", "â€œsmart quotesâ€\x9d",
        "This â€” dash", "ÃƒÂ©", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "\x1b[36;44mansi colours\x1b[m", "uÌˆber",
    ],
    "whitespace": [
        "a\tcat", "a\ncat", "a\r\ncat", "  leading and trailing  ", "many     spaces     here", "a\u00a0nbsp",
        "a\u2003em space", "a\u3000ideographic", "a\u200bzero width", "a\u2028line sep", "\ufeffBOM start",
        "soft\u00adhyphen", "\t\n\r\x0b\x0ca\t\n\r\x0b\x0c",
    ],
    "empty": ["", " ", "    ", "\n", "\t\t", "\u3000", "\t\n\r\x0b\x0c", "\u00a0\u00a0"],
    "fullwidth": ["ＡＢＣ", "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ", "１２３", "！？", "ｶﾀｶﾅ halfwidth"],
    "control": [
        "\x00", "a\x00b", "bell\x07", "\x7f del", "\x1b escape", "\x85 nel", "\x9f c1", "zero\u200dwidth",
        "\ue000 private use", "\uffff noncharacter", "\ufffd replacement", "\U0010fffd plane 16", "\ud800 lone",
        "a\udc00b", "\ud83d\ude00 pair",
    ],
    "special_tokens": [
        "<start_of_text>", "<end_of_text>", "a <start_of_text> b", "<START_OF_TEXT>", "<end_of_text><end_of_text>",
        "x<start_of_text>y", "<start_of_text", "start_of_text>", "<|startoftext|>", "<end_of_text>" + " a" * 80,
    ],
    "long": [
        *(_words(n) for n in (73, 74, 75, 76, 77, 78, 200)), "a raccoon " * 40, "word" * 200, "ab" * 500,
        "🐱" * 100, "東" * 100, "7" * 1000,
        "A kiosk camera looks at the visitor and asks the judge whether the drawing shows a raccoon, a fox, a "
        "cat or a dog; the judge embeds each prompt with the exported text encoder, tokenized on the device by "
        "this very tokenizer, and scores it by cosine against the image embedding, which must match the teacher.",
    ],
}
STRINGS = [s for group in TABLE.values() for s in group]
IDS = [f"{name}-{i}" for name, group in TABLE.items() for i in range(len(group))]


@pytest.fixture(scope="module")
def reference():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def vocab(request) -> Path:
    """open_clip's vocab file (dkit.export.tokenizer.vocab_file), or without open_clip its copy in the cached judge
    bundle (a base-only venv)."""
    if importlib.util.find_spec("open_clip") is None:
        return request.getfixturevalue("judge_bundle") / VOCAB_NAME
    from dkit.export.tokenizer import vocab_file

    return vocab_file()


@pytest.fixture(scope="module")
def tok(vocab: Path) -> Tokenizer:
    return Tokenizer.from_file(vocab)


def test_table_is_large_and_distinct():
    assert len(STRINGS) >= 200
    assert len(set(STRINGS)) == len(STRINGS)


@pytest.mark.parametrize("text", STRINGS, ids=IDS)
@pytest.mark.devenv("open_clip")
def test_ids_match_open_clip(tok: Tokenizer, reference, text: str):
    assert tok.encode(text) == reference.encode(text)
    got = tok([text])
    assert got.dtype == np.int64 and got.shape == (1, CONTEXT_LENGTH)
    np.testing.assert_array_equal(got, reference([text]).numpy())


@pytest.mark.devenv("open_clip")
def test_whole_table_as_one_batch(tok: Tokenizer, reference):
    got = tok(STRINGS, context_length=77)  # (N, 77)
    np.testing.assert_array_equal(got, reference(STRINGS).numpy())


@pytest.mark.parametrize("n_words", [73, 74, 75, 76, 77, 78, 200])
def test_truncation_at_the_boundary(tok: Tokenizer, n_words: int):
    row = tok(_words(n_words))[0]  # (77,)
    a = tok.encode("a")[0]
    if n_words <= CONTEXT_LENGTH - 2:  # fits: start, n ids, end, padding
        assert row[n_words + 1] == tok.eot_token_id
        assert (row[1 : n_words + 1] == a).all() and (row[n_words + 2 :] == 0).all()
    else:  # cut to 77 with the end token in the last position
        assert row[-1] == tok.eot_token_id and (row[1:-1] == a).all()
    assert row[0] == tok.sot_token_id


@pytest.mark.parametrize("context_length", [2, 3, 5, 16, 76, 77, 78, 100])
@pytest.mark.devenv("open_clip")
def test_other_context_lengths_match_open_clip(tok: Tokenizer, reference, context_length: int):
    texts = ["", "a cat", _words(75), _words(300), "🐱" * 50]
    got = tok(texts, context_length=context_length)  # (5, context_length)
    assert got.shape == (len(texts), context_length)
    np.testing.assert_array_equal(got, reference(texts, context_length=context_length).numpy())


_RANGES = [
    (0x20, 0x7E), (0x20, 0x7E), (0x20, 0x7E), (0x00, 0x1F), (0x7F, 0x9F), (0xA0, 0xFF), (0x100, 0x24F),
    (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F),
    (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x22FF), (0x3000, 0x30FF), (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3), (0xD800, 0xDFFF), (0xE000, 0xE0FF), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFF),
    (0x1F300, 0x1FAFF), (0x1F1E6, 0x1F1FF), (0x1F3FB, 0x1F3FF), (0x20000, 0x2A6DF), (0xE0000, 0xE007F),
]
_PIECES = [" ", "  ", "\t", "\n", "'s", "'ll", "\u200d", "&amp;", "&lt;", "&#39;", "Ã©", "â€™", "<end_of_text>"]


def _random_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.15:
                parts.append(rng.choice(_PIECES))
            else:
                lo, hi = rng.choice(_RANGES)
                parts.append(chr(rng.randint(lo, hi)))
        out.append("".join(parts))
    return out


@pytest.mark.devenv("open_clip")
def test_random_unicode_matches_open_clip(tok: Tokenizer, reference):
    texts = _random_strings(400, seed=1234)
    for text in texts:
        assert tok.encode(text) == reference.encode(text), f"ids differ for {text!r}"
    np.testing.assert_array_equal(tok(texts), reference(texts).numpy())


def test_uncompressed_vocab_gives_the_same_ids(tok: Tokenizer, vocab: Path, tmp_path: Path):
    plain = tmp_path / "bpe_simple_vocab_16e6.txt"
    plain.write_bytes(gzip.decompress(vocab.read_bytes()))
    other = Tokenizer.from_file(plain)
    assert other.vocab_size == tok.vocab_size == VOCAB_SIZE
    np.testing.assert_array_equal(other(STRINGS[:50]), tok(STRINGS[:50]))


def test_known_ids_and_special_tokens(tok: Tokenizer, vocab: Path):
    assert vocab.name == VOCAB_NAME
    assert tok.encode("a raccoon") == [320, 29516]
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (49406, 49407, 49408)
    assert tok.encode("<start_of_text>") == [tok.sot_token_id]
    row = tok("a cat")[0]  # (77,)
    assert row[:4].tolist() == [tok.sot_token_id, *tok.encode("a cat"), tok.eot_token_id]
    assert tok([]).shape == (0, CONTEXT_LENGTH)


def test_bpe_results_are_cached(tok: Tokenizer):
    before = tok._bpe.cache_info()
    for _ in range(3):
        tok.encode("a photo of a raccoon in the snow")
    after = tok._bpe.cache_info()
    assert after.hits >= before.hits + 14  # 7 words, twice from the cache
    assert after.maxsize is not None  # bounded


# --- without open_clip: a tiny hand-made vocab, the file checks, the import boundary ---------------------------


def _tiny() -> Tokenizer:
    return Tokenizer([("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")])


def test_tiny_vocab_mechanics():
    tiny = _tiny()
    base = 512  # ids 0..255 bytes, 256..511 bytes + "</w>", then the merges in order
    assert tiny.encode("CAT dog") == [base + 1, base + 3]
    assert tiny.encode("cab") == [base, 256 + ord("b") - ord("!")]  # "ca" merged; "b</w>" (printable bytes first)
    assert (tiny.sot_token_id, tiny.eot_token_id) == (base + 4, base + 5)
    out = tiny(["cat", "dog cat dog"], context_length=4)  # (2, 4)
    assert out.dtype == np.int64
    assert out.tolist() == [[base + 4, base + 1, base + 5, 0], [base + 4, base + 3, base + 1, base + 5]]


@pytest.mark.parametrize("bad", [0, 1, -5, 2.5, True, "77"])
def test_bad_context_length_is_refused(bad):
    with pytest.raises(ValueError, match="context_length"):
        _tiny()(["a cat"], context_length=bad)


def _fake_vocab(lines: list[str]) -> bytes:
    return ("\n".join(['"bpe_simple_vocab_16e6.txt#version: 0.2', *lines]) + "\n").encode()


def test_missing_vocab_file_names_it(tmp_path: Path):
    path = tmp_path / VOCAB_NAME
    with pytest.raises(TokenizerError, match="not found") as info:
        Tokenizer.from_file(path)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_vocab_file(tmp_path: Path):
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        Tokenizer.from_file(tmp_path)


@pytest.mark.parametrize("case", ["random-bytes", "truncated-gzip", "not-utf8", "too-few-merges", "bad-line"])
def test_corrupt_vocab_file_names_it(tmp_path: Path, case: str):
    zipped = gzip.compress(_fake_vocab(["a b"] * NUM_MERGES))
    data = {
        "random-bytes": b"\x1f\x8b" + random.Random(0).randbytes(4000),
        "truncated-gzip": zipped[: len(zipped) // 2],
        "not-utf8": gzip.compress(b"\xff\xfe\xfa" * 1000),
        "too-few-merges": gzip.compress(_fake_vocab(["a b"] * 100)),
        "bad-line": gzip.compress(_fake_vocab(["a b"] * 500 + ["a b c"] + ["a b"] * NUM_MERGES)),
    }[case]
    path = tmp_path / VOCAB_NAME
    path.write_bytes(data)
    with pytest.raises(TokenizerError, match="corrupt") as info:
        Tokenizer.from_file(path)
    assert str(path) in str(info.value)


def test_well_formed_fake_vocab_loads(tmp_path: Path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(_fake_vocab([f"{chr(0x100 + i % 200)} {chr(0x100 + i // 200)}" for i in range(NUM_MERGES)]))
    assert Tokenizer.from_file(path).vocab_size > 512


def test_import_pulls_in_no_torch_or_open_clip():
    script = (
        "import json, sys\n"
        "import dkit.edge.infer.tokenizer\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'open_clip', 'ultralytics', 'onnx', 'torchvision'})))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
