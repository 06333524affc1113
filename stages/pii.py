"""Personal data detectors and the masker.

Placeholders are typed and numbered per conversation (`seen` carries them across turns), so the
same address masked twice reads <EMAIL_1> both times and the dialogue still makes sense.
Detectors run in a fixed order, most specific first (a card number is not left for the phone or
account patterns to half-match), and each is skipped when a cheap test shows it cannot match."""

from __future__ import annotations

import calendar
import ipaddress
import re
from dataclasses import dataclass
from typing import Callable

# Digit lookarounds instead of \b: Hangul counts as a word character, so "번호는010-..." has no \b.
_ND = r"(?<![0-9])"
_NA = r"(?![0-9])"


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def rrn_date_ok(digits: str) -> bool:
    """YYMMDD is a real date in the century the 7th digit gives (1,2,5,6: 1900s; 3,4,7,8: 2000s)."""
    yy, mm, dd, sex = int(digits[:2]), int(digits[2:4]), int(digits[4:6]), int(digits[6])
    year = (1900 if sex in (1, 2, 5, 6) else 2000) + yy
    return 1 <= mm <= 12 and 1 <= dd <= calendar.monthrange(year, mm)[1]


def rrn_checksum_ok(digits: str) -> bool:
    """The pre-October-2020 check digit. Newer numbers have none, so it only raises confidence."""
    s = sum(int(d) * w for d, w in zip(digits[:12], (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)))
    return (11 - s % 11) % 10 == int(digits[12])


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern
    needs: str  # the cheap pre-test (PRETESTS) a text must pass
    valid: Callable[[str], bool] | None = None  # checks a candidate match


# Every digit-based kind (phone, card, RRN, account, IPv4) needs a run of 7+ digit-ish characters;
# most chat turns have none, and one search rules all of them out.
_NUMBER_RUN = re.compile(r"[0-9][0-9 .()+-]{5,}[0-9]")
_THIRTEEN_DIGITS = re.compile(r"[0-9](?:[ -]?[0-9]){12}")
_DOTTED = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]")
_EN_ADDRESS_HINT = re.compile(r"[0-9]\s+[A-Z]")


_KO_ADDRESS_HINT = re.compile(r"[로길동리가]\s?[0-9]")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
        return True
    except ValueError:
        return False


DETECTORS: list[Detector] = [
    Detector("EMAIL", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "@"),
    # Resident registration numbers: a real YYMMDD date, then the sex/century digit 1-8.
    Detector(
        "RRN",
        re.compile(_ND + r"[0-9]{6}[- ]?[1-8][0-9]{6}" + _NA),
        "13 digits",
        lambda m: rrn_date_ok(re.sub(r"\D", "", m)),
    ),
    # Card numbers: 13-19 digits, optionally in space/dash groups, Luhn-valid.
    Detector(
        "CARD",
        re.compile(_ND + r"[0-9](?:[ -]?[0-9]){12,18}" + _NA),
        "13 digits",
        lambda m: 13 <= len(d := re.sub(r"\D", "", m)) <= 19 and luhn_ok(d),
    ),
    # Phones, one pass: Korean mobile/landline (with or without +82 and separators); international
    # +CC then 2-4 digit groups; North American (NNN) NNN-NNNN.
    Detector(
        "PHONE",
        re.compile(
            _ND + r"(?:(?:\+82[- ]?0?|0)(?:1[016789]|2|[3-6][1-5]|70)[- .]?[0-9]{3,4}[- .]?[0-9]{4}"
            r"|\+[1-9][0-9]{0,2}[- ]?\(?[0-9]{1,4}\)?(?:[- ][0-9]{2,4}){2,3}"
            r"|(?<!-)\(?[0-9]{3}\)?[- .][0-9]{3}[- .][0-9]{4})" + _NA
        ),
        "number",
    ),
    # Bank accounts: 10-14 digits in 3-4 dash-separated groups.
    Detector(
        "ACCOUNT",
        re.compile(r"(?<![0-9-])[0-9]{2,6}(?:-[0-9]{2,8}){1,2}-[0-9]{1,8}(?![0-9-])"),
        "number",
        lambda m: 10 <= sum(c.isdigit() for c in m) <= 14,
    ),
    Detector(
        "IP",
        re.compile(r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9.])"),
        "dotted",
        lambda m: all(int(part) <= 255 for part in m.split(".")),
    ),
    Detector(
        "IP", re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])"), ":", _is_ipv6
    ),
    # Korean road-name (도로명) addresses need their district (구/군/시) before the road, since a bare
    # "...로 25" is mostly the particle 로 ("그걸로 25%"); counts after the number ("3가지") are not addresses.
    Detector(
        "ADDRESS",
        re.compile(
            r"(?:[가-힣]{2,6}(?:특별시|광역시|특별자치시|도|시)\s)?[가-힣]{1,6}(?:구|군|시)\s[가-힣0-9]{1,10}(?:로|길)\s?"
            r"[0-9]{1,4}(?:-[0-9]{1,4})?(?:번길\s?[0-9]{1,4})?(?![0-9]|가지|개|명|번째|%|점|살|시간|분|초)"
        ),
        "ko_address",
    ),
    # Lot-number (지번) addresses: 동/리/가, the lot number, 번지.
    Detector(
        "ADDRESS",
        re.compile(r"(?:[가-힣]{1,6}(?:시|군|구)\s)?[가-힣0-9]{1,10}(?:동|리|가)\s?[0-9]{1,4}(?:-[0-9]{1,4})?번지"),
        "번지",
    ),
    # English street addresses: number, 1-3 capitalized words, a street type, optional unit.
    Detector(
        "ADDRESS",
        re.compile(
            r"(?<![0-9])[0-9]{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|"
            r"Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway)\.?(?:,?\s+(?:Apt|Suite|Unit)\.?\s*#?[0-9A-Za-z]+)?"
        ),
        "en_address",
    ),
]

PRETESTS: dict[str, Callable[[str], bool]] = {
    "@": lambda t: "@" in t,
    ":": lambda t: t.count(":") >= 2,
    "번지": lambda t: "번지" in t,
    "number": lambda t: _NUMBER_RUN.search(t) is not None,
    "13 digits": lambda t: _THIRTEEN_DIGITS.search(t) is not None,
    "dotted": lambda t: _DOTTED.search(t) is not None,
    "ko_address": lambda t: _KO_ADDRESS_HINT.search(t) is not None,
    "en_address": lambda t: _EN_ADDRESS_HINT.search(t) is not None,
}


def names_pattern(names: list[str]) -> re.Pattern | None:
    """One pattern for a set of user names/ids, longest first, not inside longer words."""
    names = sorted({n.strip() for n in names if n and len(n.strip()) >= 2}, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"(?<![\w@])(?:" + "|".join(map(re.escape, names)) + r")(?![\w@])", re.IGNORECASE)


def mask(text: str, seen: dict | None = None, names: re.Pattern | None = None) -> tuple[str, list[str]]:
    """Replace personal data in text. `seen` carries placeholders across one conversation;
    `names` masks the record's own user names/ids. Returns the masked text and the kinds found
    (for counting, never the values)."""
    if seen is None:
        seen = {}
    kinds: list[str] = []

    def placeholder(kind: str, value: str) -> str:
        key = (kind, re.sub(r"[^0-9A-Za-z@.:가-힣]", "", value).lower())
        if key not in seen:
            n = sum(1 for k in seen if k[0] == kind) + 1
            seen[key] = f"<{kind}_{n}>"
        kinds.append(kind)
        return seen[key]

    passed: dict[str, bool] = {}
    for det in DETECTORS:
        ok = passed.get(det.needs)
        if ok is None:
            ok = passed[det.needs] = PRETESTS[det.needs](text)
        if not ok:
            continue

        def repl(m: re.Match, det=det) -> str:
            if det.valid is not None and not det.valid(m.group(0)):
                return m.group(0)
            return placeholder(det.kind, m.group(0))

        text = det.pattern.sub(repl, text)
    if names is not None:
        text = names.sub(lambda m: placeholder("NAME", m.group(0)), text)
    return text, kinds
