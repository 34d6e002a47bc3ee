"""Free-text scrubbing for the Clean Descriptors / Clean Structured Content options.

"Clean" (PS3.15 action C) keeps a descriptor's meaning but removes what identifies. Two layers:

1. Instance-specific: every name component, ID, accession number and birth date found in the
   instance itself (collected before anything is changed) is removed wherever it appears, matched
   case-insensitively and accent-insensitively (``MÜLLER`` matches ``muller``), on word
   boundaries so ``Ann`` does not eat ``Annotation``.
2. Generic patterns: any word with a run of five or more digits (IDs, MRNs, compact dates),
   numeric dates with separators, e-mail addresses, phone numbers, dates with month names,
   and a title (Dr, Mrs, Prof, ...) followed by a capitalised word.

Hand-written because no maintained library does accent-insensitive replacement that maps back to
the original string; NLP de-identifiers (Philter, Presidio) are heavyweight and not in our deps.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["REDACTED", "PhiScrubber", "name_tokens"]

REDACTED = "***"

_TITLES = frozenset(
    "dr mr mrs ms miss prof md phd jr sr ii iii iv dds rn herr frau mme mlle sir dame".split()
)
_SPLIT = re.compile(r"[\^=,\s.]+")
_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_GENERIC = re.compile(
    "|".join(
        [
            r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail
            r"\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}\b",  # phone
            rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{2,4}}\b",  # 12 March 2020
            rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b",  # March 12, 2020
            r"\b\d{1,2}[./-]\d{1,2}[./-]\d{2,4}\b",  # 12/03/20
            r"\b\d{4}[./-]\d{1,2}[./-]\d{1,2}\b",  # 2020-03-12
            r"\b\w*\d{5,}\w*",  # IDs, MRNs, compact dates
            r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof|Herr|Frau)\.?\s+[A-Z\u00c0-\u024f][\w'\u00c0-\u024f-]*",
        ]
    ),
    re.IGNORECASE,
)


def _norm_char(c: str) -> str:
    decomposed = unicodedata.normalize("NFKD", c)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _normalize(text: str) -> tuple[str, list[int] | None]:
    """Accent-stripped, case-folded text plus, per output char, the index of its source char.

    ASCII text (the common case) maps one to one, signalled by ``None`` instead of an index.
    """
    if text.isascii():
        return text.lower(), None
    out: list[str] = []
    index: list[int] = []
    for i, c in enumerate(text):
        n = c.casefold() if c.isascii() else _norm_char(c)
        out.append(n)
        index.extend([i] * len(n))
    return "".join(out), index


def name_tokens(person_name: str) -> set[str]:
    """The searchable parts of a PN value: the whole name and each component of 2+ letters."""
    tokens: set[str] = set()
    for group in person_name.split("="):  # alphabetic, ideographic, phonetic groups
        g = group.strip()
        if not g:
            continue
        readable = " ".join(p for p in g.split("^") if p.strip())
        tokens.add(readable)
        tokens.add(g)
        for part in _SPLIT.split(g):
            if len(part) >= 2 and part.casefold() not in _TITLES:
                tokens.add(part)
    return {t for t in tokens if t.strip()}


class PhiScrubber:
    """Removes known identifiers and identifier-shaped text from free text."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        norm = {_normalize(t.strip())[0] for t in tokens if t and len(t.strip()) >= 2}
        norm.discard("")
        # longest first so "john smith" wins over "john"
        ordered = sorted(norm, key=len, reverse=True)
        parts = []
        for t in ordered:
            esc = re.escape(t)
            if t.isascii():
                parts.append(rf"(?<!\w){esc}(?!\w)")
            else:  # scripts without spaces between words: no boundary check
                parts.append(esc)
        self._known = re.compile("|".join(parts)) if parts else None

    def scrub_known(self, text: str) -> str:
        """Replace only this instance's known identifiers (names, IDs, birth date) by ``***``.

        Used as a safety net on text attributes the profile keeps: it never alters text that
        does not contain one of them.
        """
        if not text or self._known is None:
            return text
        norm, index = _normalize(text)
        spans = [
            (m.start(), m.end()) if index is None else (index[m.start()], index[m.end() - 1] + 1)
            for m in self._known.finditer(norm)
        ]
        for start, end in reversed(spans):
            text = text[:start] + REDACTED + text[end:]
        return text

    def scrub(self, text: str) -> str:
        """Return ``text`` with every known or identifier-shaped span replaced by ``***``."""
        if not text:
            return text
        return _GENERIC.sub(REDACTED, self.scrub_known(text))
