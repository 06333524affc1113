"""Personal data detectors and the masker.

Placeholders are typed and numbered per conversation (`seen` carries them across turns), so the
same address masked twice reads <EMAIL_1> both times and the dialogue still makes sense.
Detectors run in a fixed order, most specific first (a card number is not left for the phone or
account patterns to half-match), and each is skipped when a cheap test shows it cannot match."""

from __future__ import annotations

import calendar
import functools
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
    pattern: re.Pattern | None
    needs: str  # the cheap pre-test (PRETESTS) a text must pass
    valid: Callable[[str], bool] | None = None  # checks a candidate match
    context: Callable[[str, int, int], bool] | None = None  # checks the text around it
    find: Callable[[str, tuple], list[tuple[int, int]]] | None = None  # spans, instead of a pattern


# Every digit-based kind (phone, card, RRN, account, IPv4) needs a run of 7+ digit-ish characters;
# most chat turns have none, and one search rules all of them out.
_NUMBER_RUN = re.compile(r"[0-9][0-9 .()+-]{3,}[0-9]")
_THIRTEEN_DIGITS = re.compile(r"[0-9](?:[ -]?[0-9]){12}")
_DOTTED = re.compile(r"[0-9]\.[0-9]{1,3}\.[0-9]")
_EN_ADDRESS_HINT = re.compile(r"[0-9][A-Za-z]?\s+(?:[a-z]{1,3}\s+){0,2}[A-Z0-9]")


_KO_ADDRESS_HINT = re.compile(r"[로길동리가]\s?[0-9]")
_KO_LOT_HINT = re.compile(r"[동리가]\s?[0-9]")
_IBAN_HINT = re.compile(r"[A-Z]{2}[0-9]{2}")
_SSN_WORD = re.compile(r"\bSSN\b|social security|\bSS#", re.IGNORECASE)
_INTERNATIONAL_BEFORE = re.compile(r"\+[0-9]{1,3}\s?$")
_BANK_WORD = re.compile(
    r"계좌|은행|입금|송금|이체|예금|뱅크|농협|국민|신한|우리|하나|기업|카카오|토스|우체국|새마을|수협|"
    r"\b(?:account|acct|bank|banking|routing|deposit|wire|transfer|savings|checking|a/c)\b",
    re.IGNORECASE,
)
# USPS Publication 28, appendix C1: street suffixes, full and abbreviated.
_SUFFIXES = (
    "Alley|Aly|Annex|Anx|Arcade|Arc|Avenue|Ave|Av|Bayou|Byu|Beach|Bch|Bend|Bnd|Bluff|Blf|Bottom|Btm|Boulevard|Blvd|"
    "Branch|Br|Bridge|Brg|Brook|Brk|Burg|Bg|Bypass|Byp|Camp|Cp|Canyon|Cyn|Cape|Cpe|Causeway|Cswy|Center|Ctr|"
    "Circle|Cir|Cliff|Clf|Club|Clb|Common|Cmn|Corner|Cor|Course|Crse|Court|Ct|Cove|Cv|Creek|Crk|Crescent|Cres|"
    "Crossing|Xing|Crossroad|Xrd|Curve|Curv|Dale|Dl|Dam|Dm|Divide|Dv|Drive|Dr|Estate|Est|Expressway|Expy|"
    "Extension|Ext|Fall|Falls|Fls|Ferry|Fry|Field|Fld|Fields|Flds|Flat|Flt|Ford|Frd|Forest|Frst|Forge|Frg|Fork|Frk|"
    "Fort|Ft|Freeway|Fwy|Garden|Gdn|Gardens|Gdns|Gateway|Gtwy|Glen|Gln|Green|Grn|Grove|Grv|Harbor|Hbr|Haven|Hvn|"
    "Heights|Hts|Highway|Hwy|Hill|Hl|Hills|Hls|Hollow|Holw|Inlet|Inlt|Island|Is|Isle|Junction|Jct|Key|Ky|Knoll|Knl|"
    "Lake|Lk|Lakes|Lks|Landing|Lndg|Lane|Ln|Light|Lgt|Loop|Mall|Manor|Mnr|Meadow|Mdw|Meadows|Mdws|Mews|Mill|Ml|"
    "Mission|Msn|Motorway|Mtwy|Mount|Mt|Mountain|Mtn|Neck|Nck|Orchard|Orch|Oval|Overpass|Opas|Park|Parkway|Pkwy|"
    "Pass|Passage|Psge|Path|Pike|Pine|Pne|Pines|Pnes|Place|Pl|Plain|Pln|Plaza|Plz|Point|Pt|Port|Prt|Prairie|Pr|"
    "Radial|Radl|Ranch|Rnch|Rapid|Rpd|Rest|Rst|Ridge|Rdg|River|Riv|Road|Rd|Roads|Rds|Route|Rte|Row|Rue|Run|"
    "Shoal|Shl|Shore|Shr|Skyway|Skwy|Spring|Spg|Springs|Spgs|Square|Sq|Station|Sta|Stravenue|Stra|Stream|Strm|"
    "Street|St|Str|Summit|Smt|Terrace|Ter|Throughway|Trwy|Trace|Trce|Track|Trak|Trafficway|Trfy|Trail|Trl|"
    "Tunnel|Tunl|Turnpike|Tpke|Underpass|Upas|Union|Un|Valley|Vly|Viaduct|Via|View|Vw|Village|Vlg|Ville|Vl|"
    "Vista|Vis|Walk|Wall|Way|Well|Wl|Wells|Wls"
)
_DIRECTION = r"(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West|Northeast|Northwest|Southeast|Southwest)\.?"
# A word of a street's name: Capitalized (O'Farrell, Mary-Ann, McAllister), ALL CAPS, an ordinal
# (16th), an initial (the B of "Carlton B Goodlett"); particles (de la, van, of the) between them.
_WORD_OF_NAME = (
    r"(?:[A-Z][a-z]*(?:['-][A-Z]?[a-z]+)+|[A-Z][a-z]+|[A-Z]{2,}|[0-9]{1,3}(?:st|nd|rd|th|ST|ND|RD|TH)|[A-Z]\.?)"
)
_PARTICLE = r"(?:(?:de|del|la|las|los|le|van|von|der|den|of|the|el|da|di|du)\s+)"
_STREET_NAME = rf"(?:{_PARTICLE}{{0,2}}{_WORD_OF_NAME}\s+){{1,6}}"
_EN_STREET = re.compile(
    rf"(?<![0-9A-Za-z])[0-9]{{1,6}}[A-Za-z]?\s+(?:{_DIRECTION}\s+[0-9]{{1,3}}\s+|(?:{_DIRECTION}\s+)?{_STREET_NAME})"
    rf"(?:{_SUFFIXES}|{_SUFFIXES.upper()})\b\.?(?:\s+{_DIRECTION}(?![A-Za-z]))?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Rm|Room|Fl|Floor|Bldg|#)\.?\s*#?[0-9A-Za-z-]+)?"
)
# Chat is often lowercase ("i live at 221 baker street"): lowercase names count where the text
# says an address follows.
_EN_STREET_LOWER = re.compile(
    rf"(?<![0-9a-z])[0-9]{{1,6}}[a-z]?\s+(?:[a-z]+\s+){{1,4}}(?:{_SUFFIXES.lower()})\b\.?"
    r"(?:,?\s+(?:apt|apartment|suite|ste|unit|rm|room|fl|floor|#)\.?\s*#?[0-9a-z-]+)?"
)
_ADDRESS_WORDS = re.compile(
    r"live at|living at|address|ship to|send (?:it )?to|mail (?:it )?to|deliver(?:ed)? to|moved to|move to|"
    r"located at|my place|come to|주소|住所|adresse|direcci[oó]n|endere[cç]o",
    re.IGNORECASE,
)


def _ssn_context(text: str, start: int, end: int) -> bool:
    """AAA-GG-SSSS is an SSN unless it ends an international number; other spacings need the word."""
    if _SSN_WORD.search(text, max(0, start - 24), start):
        return True
    return text[start + 3] == "-" and not _INTERNATIONAL_BEFORE.search(text, max(0, start - 8), start)


def iban_ok(candidate: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to numbers; mod 97 is 1."""
    iban = candidate.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    digits = "".join(str(int(c, 36)) for c in iban[4:] + iban[:4])
    return int(digits) % 97 == 1


PHONE_REGIONS = ("KR", "US")
# Right before a number, these make it an identifier, not a phone: "SN-2024-000123", "#1234567".
_GLUED = re.compile(r"(?:[A-Za-z0-9][-/#]|[A-Za-z#])$")
# Separators people write numbers with that libphonenumber does not read, each as one it does
# (one character for one, so offsets hold): middle dots, dashes and minus signs, thin and wide
# spaces; and full-width digits.
_SEPARATORS = str.maketrans(
    {**{c: "-" for c in "\u00b7\u2027\u30fb\uff65\u2010\u2011\u2012\u2013\u2014\u2015\u2212\uff0d"},
     **{c: " " for c in "\u00a0\u2009\u202f\u3000"},
     **{chr(0xFF10 + d): str(d) for d in range(10)}}
)  # fmt: skip
_EXOTIC = re.compile("[" + "".join(map(chr, _SEPARATORS)) + "]")
# A phone-shaped run: an optional +, then groups of digits with one separator between them, an
# area code maybe in parentheses, a trunk (0) maybe after the country code. Not glued to a word.
_PHONE_SHAPE = re.compile(
    r"(?<![0-9A-Za-z+])(?:\+\s?)?(?:\(\s?[0-9]{1,5}(?:[ -][0-9]{1,5})?\s?\)\s?)?[0-9]{1,15}"
    r"(?:(?:[ .\-/]|\s?\(0\)\s?)(?:\([0-9]{1,5}\)|[0-9]{1,12})){0,7}(?![0-9])"
)
# Dates, date-times and times: never a phone number, whatever libphonenumber would make of them.
_MM, _DD = r"(?:0?[1-9]|1[0-2])", r"(?:0?[1-9]|[12][0-9]|3[01])"
_DATE_OR_TIME = re.compile(
    rf"(?<![0-9])(?:(?:19|20)[0-9]{{2}}([./-]){_MM}\1{_DD}|{_DD}([./-]){_MM}\2(?:(?:19|20)?[0-9]{{2}})"
    rf"|{_MM}([./-]){_DD}\3(?:19|20)[0-9]{{2}}|(?:19|20)[0-9]{{2}}[./-]{_MM}(?![./-]?[0-9])"
    r"|(?:[01]?[0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9])?)(?![0-9])"
)
# Words that make a nearby number a phone (before it, or just after: "02-3456-7890로 전화주세요").
_PHONE_WORDS = re.compile(
    r"phone|call|\btel\b|tel\.|telephone|mobile|\bcell|whats\s?app|text me|\bsms\b|\bfax\b|contact|reach me|"
    r"my number|number is|\bdial|연락|전화|휴대폰|핸드폰|폰번호|제 번호|번호는|電話|携帯|ケータイ|telefon|tel[eé]fono|"
    r"telefone|t[ée]l[ée]phone|portable|\bhandy\b|m[oó]vil|celular|numaram|\bcep\b|טלפון|נייד|телефон|номер",
    re.IGNORECASE,
)
# Labels that make the number after them something else: an order, a tracking or registration
# number, an account (the ACCOUNT detector's), an ISBN.
_NOT_A_PHONE = re.compile(
    r"(?:order|주문|tracking|운송장|송장|invoice|serial|isbn|사업자|registration|등록번호|receipt|영수증|transaction|"
    r"거래|confirmation|reference|\bref\b|case|ticket|booking|예약|model|part|sku|barcode|바코드|zip|postal|우편|"
    r"account|acct|계좌|passport|여권|license|면허|policy|claim|patient|student id|학번|사번|employee|\bEIN\b|"
    r"\bTIN\b|\bVAT\b|tax id|납세|세금)"
    r"[^0-9\n]{0,12}$",
    re.IGNORECASE,
)


def _hotline(number) -> bool:
    """A company's number, not a person's: toll-free, premium, shared-cost, universal access
    (1588-xxxx), voicemail."""
    import phonenumbers
    from phonenumbers import PhoneNumberType as T

    return phonenumbers.number_type(number) in (T.TOLL_FREE, T.PREMIUM_RATE, T.SHARED_COST, T.UAN, T.VOICEMAIL)


# After scrub.phone_regions, the regions whose reading of an ambiguous national number is the
# likeliest one: the most populous and the most online first, then every region alphabetically.
_LIKELY_REGIONS = ("US", "GB", "IN", "CN", "JP", "DE", "FR", "BR", "MX", "ES", "IT", "RU", "TR", "IL", "CA", "AU")
_LIKELY_REGIONS += ("KR", "ID", "PH", "VN", "TH", "PL", "NL", "UA", "EG", "NG", "ZA", "AR", "CO", "SA", "AE")


@functools.cache
def _region_order(regions: tuple) -> tuple:
    """scrub.phone_regions, then the likely regions, then every region libphonenumber knows."""
    import phonenumbers

    rest = sorted(set(phonenumbers.SUPPORTED_REGIONS) - set(regions) - set(_LIKELY_REGIONS))
    return tuple(dict.fromkeys(regions + _LIKELY_REGIONS + tuple(rest)))


def is_phone(raw: str, regions: tuple, context: bool) -> bool:
    """Whether this phone-shaped string is a person's number. With a +, it is international: valid
    (or, with a phone word nearby, possible) and not a hotline. Otherwise valid in one of
    scrub.phone_regions, written with separators unless a phone word is nearby (a bare number
    needs context); or, with a phone word nearby, a person's number in any region. Hotlines
    (toll-free, 1588-xxxx, ...) never."""
    import phonenumbers

    def parse(region):
        try:
            return phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            return None

    if raw.startswith("+"):
        n = parse(None)
        if n is None:
            return False
        if phonenumbers.is_valid_number(n):
            return not _hotline(n)
        return context and phonenumbers.is_possible_number(n)
    if sum(c.isdigit() for c in raw) < 7 and not context:  # a short number is a phone where the text says so
        return False
    for region in regions:  # the regions of scrub.phone_regions read it first
        n = parse(region)
        if n is not None and phonenumbers.is_valid_number(n):
            return not _hotline(n) and (context or not raw.isdigit())
    if not context:
        return False
    # Where the text says it is a phone, the likely regions' readings vote: "090-1234-5678" is a
    # mobile in most (JP, IN, ...) and premium in one (GB), "0800 123 4567" toll-free in most; a
    # tie is a person's. With no likely region's reading, any region's counts.
    for group in (_LIKELY_REGIONS, _region_order(regions)):
        readings = [_hotline(n) for n in map(parse, group) if n is not None and phonenumbers.is_valid_number(n)]
        if readings:
            return readings.count(False) >= readings.count(True)
    return False


def _phone_context(text: str, start: int, end: int) -> bool:
    return _PHONE_WORDS.search(text, max(0, start - 40), start) is not None or (
        _PHONE_WORDS.search(text, end, min(len(text), end + 16)) is not None
    )


def phone_spans(text: str, regions: tuple = PHONE_REGIONS) -> list[tuple[int, int]]:
    """Personal phone numbers (is_phone) in the text; dates, times, identifiers (SN-2024-...) and
    labelled numbers (order, tracking, account, ...) are left alone."""
    norm = text.translate(_SEPARATORS) if _EXOTIC.search(text) else text
    blocked = [m.span() for m in _DATE_OR_TIME.finditer(norm)]
    spans = []
    for m in _PHONE_SHAPE.finditer(norm):
        for start, end in _numbers_in(m):
            raw = norm[start:end]
            if _covered(raw, start, blocked) or _GLUED.search(norm[max(0, start - 2) : start]):
                continue
            if _NOT_A_PHONE.search(norm, max(0, start - 40), start):
                continue
            if is_phone(raw, regions, _phone_context(norm, start, end)):
                spans.append((start, end))
    return spans


def _covered(raw: str, start: int, spans: list[tuple[int, int]]) -> bool:
    """Every digit of the run lies in one of the spans (it is dates and times, nothing more)."""
    return all(any(a <= start + i < b for a, b in spans) for i, c in enumerate(raw) if c.isdigit())


def _numbers_in(m: re.Match) -> list[tuple[int, int]]:
    """The run itself; or, with more digits than a number has (15), the runs between its spaces
    that could each be one ("010-1234-5678 010-9876-5432")."""
    run = m.group(0)
    if sum(c.isdigit() for c in run) <= 15:
        return [m.span()] if sum(c.isdigit() for c in run) >= 5 else []
    out, pos = [], m.start()
    for chunk in run.split(" "):
        if 5 <= sum(c.isdigit() for c in chunk) <= 15:
            out.append((pos, pos + len(chunk)))
        pos += len(chunk) + 1
    return out


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
    # Card numbers, Luhn-valid, as cards print them: 13-19 digits in a row, groups of four
    # (4-4-4-4[-1..3]) or American Express / Diners groups (4-6-5, 4-6-4), spaces or dashes.
    Detector(
        "CARD",
        re.compile(
            _ND + r"(?:[0-9]{13,19}|[0-9]{4}([ -])[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{1,3})?"
            r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5})" + _NA
        ),
        "13 digits",
        lambda m: 13 <= len(d := re.sub(r"\D", "", m)) <= 19 and luhn_ok(d),
    ),
    # US Social Security numbers: AAA-GG-SSSS (never area 000, 666 or 9xx, group 00, serial 0000);
    # with spaces, or nine digits in a row, only after "SSN" / "social security" (without it the
    # spaced shape is as often a phone number's tail: "+55 800 12 3456").
    Detector(
        "SSN",
        re.compile(r"(?<![0-9-])(?!000|666|9)[0-9]{3}([ -]?)(?!00)[0-9]{2}\1(?!0000)[0-9]{4}(?![0-9-])"),
        "number",
        context=lambda text, start, end: _ssn_context(text, start, end),
    ),
    # IPv4, also when a sentence ends right after it ("... at 10.0.0.1."); before the phones, since
    # four dotted numbers can read as one.
    Detector(
        "IP",
        re.compile(r"(?<![0-9.])[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?!\.?[0-9])"),
        "dotted",
        lambda m: all(int(part) <= 255 for part in m.split(".")),
    ),
    # Phones: Google's libphonenumber (is_phone): international numbers (+CC ...) in any spacing,
    # national formats of scrub.phone_regions, and of any region where a phone word is nearby.
    Detector("PHONE", None, "number", find=lambda text, regions: phone_spans(text, regions)),
    # IBAN: country, check digits, up to 30 letters/digits (in groups of 4), mod-97 valid.
    Detector(
        "IBAN",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])"),
        "iban",
        iban_ok,
    ),
    # Bank accounts: 10-14 digits in 3-4 dash-separated groups, with a bank word nearby; without
    # one, the same shape is a business registration number, a tracking number or a serial.
    Detector(
        "ACCOUNT",
        re.compile(r"(?<![0-9A-Za-z-])[0-9]{2,6}(?:-[0-9]{2,8}){1,2}-[0-9]{1,8}(?![0-9-])"),
        "number",
        lambda m: 10 <= sum(c.isdigit() for c in m) <= 14,
        context=lambda text, start, end: (
            _BANK_WORD.search(text, max(0, start - 40), min(len(text), end + 20)) is not None
        ),
    ),
    # IPv6, not glued to letters: `std::cout` and `Class::method` are code, not addresses.
    Detector(
        "IP",
        re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"),
        ":",
        lambda m: _is_ipv6(m) and (any(c.isdigit() for c in m) or len([g for g in m.split(":") if g]) >= 3),
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
    # Roads named 대로 or 번길 need no district: the name itself says road ("한밭대로 713").
    Detector(
        "ADDRESS",
        re.compile(
            r"(?:[가-힣]{2,6}(?:특별시|광역시|특별자치시|도|시)\s)?(?<![가-힣])[가-힣0-9]{1,10}(?:대로|번길)\s?"
            r"[0-9]{1,4}(?:-[0-9]{1,4})?(?![0-9]|가지|개|명|번째|%|점|살|시간|분|초)"
        ),
        "ko_address",
    ),
    # Lot-number (지번) addresses: 동/리/가 and the lot number, with 번지 or in main-sub form (789-12).
    Detector(
        "ADDRESS",
        re.compile(
            r"(?:[가-힣]{2,6}(?:특별시|광역시|특별자치시|도|시)\s)?(?:[가-힣]{1,6}(?:시|군|구)\s)?[가-힣0-9]{1,10}(?:동|리|가)\s?"
            r"(?:[0-9]{1,4}(?:-[0-9]{1,4})?\s?번지|[0-9]{1,4}-[0-9]{1,4}(?![0-9-]))"
        ),
        "ko_lot",
    ),
    # English street addresses (USPS Publication 28): a house number, an optional direction, 1-4
    # name words (Capitalized, ALL CAPS or ordinals like 16th), a street suffix, an optional
    # direction and unit; and PO boxes.
    Detector("ADDRESS", _EN_STREET, "en_address"),
    Detector(
        "ADDRESS",
        _EN_STREET_LOWER,
        "address_words",
        context=lambda text, start, end: _ADDRESS_WORDS.search(text, max(0, start - 30), start) is not None,
    ),
    Detector("ADDRESS", re.compile(r"\b(?:P\.?\s?O\.?|Post Office)\s?Box\s+[0-9]{1,6}\b", re.IGNORECASE), "box"),
]

PRETESTS: dict[str, Callable[[str], bool]] = {
    "@": lambda t: "@" in t,
    ":": lambda t: t.count(":") >= 2,
    "ko_lot": lambda t: _KO_LOT_HINT.search(t) is not None,
    "iban": lambda t: _IBAN_HINT.search(t) is not None,
    "box": lambda t: "box" in t.lower(),
    "number": lambda t: _NUMBER_RUN.search(t) is not None,
    "13 digits": lambda t: _THIRTEEN_DIGITS.search(t) is not None,
    "dotted": lambda t: _DOTTED.search(t) is not None,
    "ko_address": lambda t: _KO_ADDRESS_HINT.search(t) is not None,
    "en_address": lambda t: _EN_ADDRESS_HINT.search(t) is not None,
    "address_words": lambda t: _ADDRESS_WORDS.search(t) is not None,
}


def names_pattern(names: list[str]) -> re.Pattern | None:
    """One pattern for a set of user names/ids, longest first, not inside longer words."""
    names = sorted({n.strip() for n in names if n and len(n.strip()) >= 2}, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"(?<![\w@])(?:" + "|".join(map(re.escape, names)) + r")(?![\w@])", re.IGNORECASE)


def spans_of(det: Detector, text: str, regions: tuple) -> list[tuple[int, int]]:
    if det.find is not None:
        return det.find(text, regions)
    return [
        m.span()
        for m in det.pattern.finditer(text)
        if (det.valid is None or det.valid(m.group(0))) and (det.context is None or det.context(text, *m.span()))
    ]


def mask(
    text: str, seen: dict | None = None, names: re.Pattern | None = None, regions: tuple = PHONE_REGIONS
) -> tuple[str, list[str]]:
    """Replace personal data in text. `seen` carries placeholders across one conversation;
    `names` masks the record's own user names/ids; `regions` are the phone-number regions whose
    national formats count (numbers with +CC count in any). Returns the masked text and the kinds
    found (for counting, never the values)."""
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
    exotic = _EXOTIC.search(text) is not None
    for det in DETECTORS:
        # Detectors read the text with its unusual separators and full-width digits as ASCII ones
        # (one character for one), and replace in the text itself.
        view = text.translate(_SEPARATORS) if exotic else text
        ok = passed.get(det.needs)
        if ok is None:
            ok = passed[det.needs] = PRETESTS[det.needs](view)
        if not ok:
            continue
        spans = spans_of(det, view, regions)
        marks = [placeholder(det.kind, text[start:end]) for start, end in spans]  # numbered in reading order
        for (start, end), mark in reversed(list(zip(spans, marks))):  # replaced from the end: offsets hold
            text = text[:start] + mark + text[end:]
    if names is not None:
        text = names.sub(lambda m: placeholder("NAME", m.group(0)), text)
    return text, kinds
