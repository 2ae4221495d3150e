"""Sentence splitting for English and Chinese text, and what counts as a CJK character.

`plmkit.data.io` re-exports these (``from plmkit.data.io import split_sentences`` keeps working).
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf al fig figs no nos vol pp ed eds inc ltd co corp "
    "gen col lt sgt capt gov sen rep rev jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k".split()
)
_TERMINAL = re.compile(r"[.!?。！？]+[\"'”’」』）)\]]*")
_CJK_TERMINAL = re.compile(r"[。！？]")
_NON_SPACE = re.compile(r"\S")
_WORD_WINDOW = 64
"""Characters looked back for the word before a period (abbreviations are far shorter)."""


CJK_CHARS = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002f800-\U0002fa1f]")
"""CJK ideographs (the characters BERT tokenizes one by one)."""


def is_cjk(char: str) -> bool:
    """True for a CJK ideograph."""
    return CJK_CHARS.match(char) is not None


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at ``. ! ?`` (English) and ``。！？`` (Chinese).

    Chinese terminators always end a sentence (closing quotes stay with it). English ones end
    a sentence only before whitespace followed by something other than a lowercase letter (or
    directly before a CJK character), and a period does not end one after a common
    abbreviation (``Mr.``, ``e.g.``) or a single-letter initial (``H. americanus``).
    """
    sentences: list[str] = []
    start = 0
    for match in _TERMINAL.finditer(text):
        end = match.end()
        if _is_boundary(text, match, end):
            piece = text[start:end].strip()
            if piece:
                sentences.append(piece)
            start = end
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _is_boundary(text: str, match: re.Match[str], end: int) -> bool:
    if _CJK_TERMINAL.search(match.group()):
        return True
    if end >= len(text):
        return False
    if is_cjk(text[end]):
        return True
    if not text[end].isspace():
        return False
    following = _NON_SPACE.search(text, end)  # (searched, not sliced: long lines stay linear)
    if following and following.group().islower():
        return False
    if "!" in match.group() or "?" in match.group():
        return True
    before = text[max(0, match.start() - _WORD_WINDOW): match.start()].rsplit(None, 1)
    word = before[-1].lstrip("(\"'“‘").lower() if before else ""
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    return True


__all__ = ["CJK_CHARS", "is_cjk", "split_sentences"]
