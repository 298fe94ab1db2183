"""Names on the public screen (dkit.edge.kiosk.names): what a hostile visitor types is cleaned, a real name is kept."""

from __future__ import annotations

import unicodedata

import pytest

from dkit.edge.kiosk.names import MAX_MARKS, MAX_NAME, public_name

ZALGO = "Z" + "\u0336\u0353\u0317" * 13  # 39 combining marks on one letter


@pytest.mark.parametrize(("typed", "shown"), [
    ("ada", "ada"),
    ("  Grace   Hopper \t", "Grace Hopper"),
    ("ada\u202egnp.exe", "adagnp.exe"),  # right-to-left override: would show "exe.png" reversed
    ("\u2066ev\u2069il\u200b\u200d\ufeff\u00ad", "evil"),  # isolates, zero-width space/joiner, BOM, soft hyphen
    ("a\x00b\x1bc\x7fd\x85e\x9bf", "abcdef"),  # C0, DEL, C1 (NEL, CSI)
    ("\uff21\uff44\uff41", "Ada"),  # full-width letters: NFKC
    ("Nguy\u1ec5n", "Nguy\u1ec5n"),  # precomposed Vietnamese stays
    ("\u0301\u0301name", "name"),  # marks with nothing to sit on
    ("", "anonymous"), (None, "anonymous"), ("\u200b\u202e ", "anonymous"),
    ("x" * 100, "x" * MAX_NAME),
])
def test_public_name(typed, shown):
    assert public_name(typed) == shown


def test_a_tower_of_combining_marks_is_capped():
    shown = public_name(ZALGO)
    assert shown.startswith("Z") and sum(unicodedata.category(c).startswith("M") for c in shown) == MAX_MARKS


def test_nothing_invisible_survives_any_code_point():
    """Every code point of the Basic Multilingual Plane: no control or format character ever comes out."""
    text = "".join(chr(c) for c in range(0x20, 0x10000) if not 0xD800 <= c < 0xE000)
    for k in range(0, len(text), 37):
        out = public_name("a" + text[k:k + 37], limit=200)
        assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in out), repr(out)


@pytest.mark.parametrize("typed", ["\u3164", "\u2800\u2800", "\u115f\u1160", "\uffa0", "\u2000\u2005\u200a", "\u3000",
                                   "\u034f\u17b4\u180b", "\u3164 \u2800 \u3000"])
def test_a_name_that_draws_nothing_is_anonymous(typed):
    assert public_name(typed) == "anonymous"
    assert public_name("a" + typed + "b") in ("ab", "a b")


def test_look_alikes_of_a_blocked_word_are_refused_and_real_names_kept():
    from dkit.edge.kiosk.names import Blocklist

    words = Blocklist(("badword", "shit"))
    for name in ("b\u0430dword", "B\u0410DW\u041eRD", "b\u0251dw\u03bfrd", "\u0455h\u0456t", "S\u041d\u0406T",
                 "B@dW0rd 99", "b a d w o r d"):
        assert words.match(public_name(name)) is not None, name
    for name in ("\u0417\u043e\u044f", "\u0396\u03bf\u03ae", "Nguy\u1ec5n", "shiitake", "Ada"):
        assert words.match(public_name(name)) is None, name
    assert Blocklist().match("b\u0430dword") is None  # an empty list never reads the confusables table
