"""Personal data patterns and the masker. Placeholders are typed and numbered per conversation,
so the same address masked twice reads <EMAIL_1> both times and the dialogue still makes sense."""

from __future__ import annotations

import re

# Digit lookarounds instead of \b: Hangul counts as a word character, so "번호는010-..." has no \b.
_ND = r"(?<![0-9])"
_NA = r"(?![0-9])"

PATTERNS: list[tuple[str, re.Pattern]] = [
    ("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    # Korean resident registration number: YYMMDD-SNNNNNN with a plausible month/day and sex digit.
    ("RRN", re.compile(_ND + r"[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[- ]?[1-8][0-9]{6}" + _NA)),
    # Korean mobile and landline numbers, with or without +82 and separators.
    (
        "PHONE",
        re.compile(
            _ND
            + r"(?:\+82[- ]?0?|0)(?:1[016789]|2|[3-6][1-5]|70)[- .]?[0-9]{3,4}[- .]?[0-9]{4}"
            + _NA
        ),
    ),
    # North American and other international forms: +CC then 2-4 digit groups, or (NNN) NNN-NNNN.
    ("PHONE", re.compile(_ND + r"\+[1-9][0-9]{0,2}[- ]?\(?[0-9]{1,4}\)?(?:[- ][0-9]{2,4}){2,3}" + _NA)),
    ("PHONE", re.compile(_ND + r"\(?[0-9]{3}\)?[- .][0-9]{3}[- .][0-9]{4}" + _NA)),
]


def mask(text: str, seen: dict[tuple[str, str], str] | None = None) -> tuple[str, list[str]]:
    """Replace personal data in text. `seen` carries placeholders across one conversation.
    Returns the masked text and the kinds found (for counting, never the values)."""
    if seen is None:
        seen = {}
    kinds: list[str] = []
    for kind, pattern in PATTERNS:

        def repl(m: re.Match, kind=kind) -> str:
            key = (kind, re.sub(r"[^0-9A-Za-z@.]", "", m.group(0)).lower())
            if key not in seen:
                n = sum(1 for k in seen if k[0] == kind) + 1
                seen[key] = f"<{kind}_{n}>"
            kinds.append(kind)
            return seen[key]

        text = pattern.sub(repl, text)
    return text, kinds
