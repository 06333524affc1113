"""A PII corpus written from the specifications, not copied from other projects' tests:
libphonenumber's numbering plans (ITU E.164 country codes, national formats), USPS Publication 28
(street suffixes, directionals, secondary units, PO boxes), Korean road-name and lot-number address
rules, ISO 13616 (IBAN), RFC 791 / RFC 4291 (IPv4 / IPv6). Each positive is (text, kind, value)
with the value that must disappear; each negative must come back unchanged. Used by
tests/test_pii_corpus.py and bench/pii.py."""

POSITIVES = [
    # Phones: E.164 with country codes and the national formats of KR and US.
    ("call me on +44 20 7946 0958 tonight", "PHONE", "+44 20 7946 0958"),
    ("Büro: +49 30 901820", "PHONE", "+49 30 901820"),
    ("le numéro est +33 1 42 68 53 00.", "PHONE", "+33 1 42 68 53 00"),
    ("Tokyo office +81 3-1234-5678", "PHONE", "+81 3-1234-5678"),
    ("Sydney: +61 2 9876 5432", "PHONE", "+61 2 9876 5432"),
    ("mobile +91 98765 43210 (India)", "PHONE", "+91 98765 43210"),
    ("whatsapp +55 11 91234-5678", "PHONE", "+55 11 91234-5678"),
    ("reach me at (212) 555-0187", "PHONE", "(212) 555-0187"),
    ("tel: 212.555.0187", "PHONE", "212.555.0187"),
    ("phone 650 253 0000 ext", "PHONE", "650 253 0000"),
    ("my cell is 415-555-0123.", "PHONE", "415-555-0123"),
    ("제 번호는 010-1234-5678이에요", "PHONE", "010-1234-5678"),
    ("연락처 01098765432", "PHONE", "01098765432"),
    ("사무실 02-3456-7890로 전화주세요", "PHONE", "02-3456-7890"),
    ("부산 051-123-4567", "PHONE", "051-123-4567"),
    ("+82 10-2345-6789로 연락", "PHONE", "+82 10-2345-6789"),
    ("+82-2-312-3456", "PHONE", "+82-2-312-3456"),
    # Emails.
    ("write to jane.doe+tutor@mail.example.org", "EMAIL", "jane.doe+tutor@mail.example.org"),
    ("메일은 minsu_kim99@school.example.kr 입니다", "EMAIL", "minsu_kim99@school.example.kr"),
    # English street addresses (USPS Publication 28).
    ("I live at 221 Baker Street, Apt 2B now", "ADDRESS", "221 Baker Street, Apt 2B"),
    ("send it to 1600 Pennsylvania Ave NW please", "ADDRESS", "1600 Pennsylvania Ave NW"),
    ("we moved to 350 N Orleans St last week", "ADDRESS", "350 N Orleans St"),
    ("office: 500 West 16th St, Suite 300", "ADDRESS", "500 West 16th St, Suite 300"),
    ("12 E 42nd Street is the library", "ADDRESS", "12 E 42nd Street"),
    ("1 INFINITE LOOP", "ADDRESS", "1 INFINITE LOOP"),
    ("ship to 742 EVERGREEN TERRACE", "ADDRESS", "742 EVERGREEN TERRACE"),
    ("at 4059 Mt Lee Dr. by noon", "ADDRESS", "4059 Mt Lee Dr."),
    ("the cabin at 88 Old Mill Pike", "ADDRESS", "88 Old Mill Pike"),
    ("2 Sunset Blvd #5", "ADDRESS", "2 Sunset Blvd #5"),
    ("meet at 10 Downing Walk", "ADDRESS", "10 Downing Walk"),
    ("take the exit at 9000 Pacific Coast Hwy", "ADDRESS", "9000 Pacific Coast Hwy"),
    ("mail P.O. Box 1234 in town", "ADDRESS", "P.O. Box 1234"),
    ("PO Box 77 is ours", "ADDRESS", "PO Box 77"),
    # Korean addresses: road names (도로명) and lot numbers (지번), with or without 시/도.
    ("서울특별시 강남구 테헤란로 152에 살아요", "ADDRESS", "서울특별시 강남구 테헤란로 152"),
    ("주소는 강남구 테헤란로 152예요", "ADDRESS", "강남구 테헤란로 152"),
    ("대전 유성구 대학로 99", "ADDRESS", "유성구 대학로 99"),
    ("한밭대로 713에서 만나요", "ADDRESS", "한밭대로 713"),
    ("성남시 분당구 판교역로 235", "ADDRESS", "성남시 분당구 판교역로 235"),
    ("강남구 역삼동 123-45번지", "ADDRESS", "강남구 역삼동 123-45번지"),
    ("역삼동 789-12로 오세요", "ADDRESS", "역삼동 789-12"),
    ("경기도 양평군 옥천리 45-3", "ADDRESS", "경기도 양평군 옥천리 45-3"),
    ("서초구 반포동 1-1 아파트", "ADDRESS", "서초구 반포동 1-1"),
    # IPs.
    ("server at 192.168.10.24 is down", "IP", "192.168.10.24"),
    ("try 10.0.0.1.", "IP", "10.0.0.1"),
    ("gateway (172.16.0.1), then", "IP", "172.16.0.1"),
    ("ipv6 2001:db8:85a3::8a2e:370:7334 here", "IP", "2001:db8:85a3::8a2e:370:7334"),
    ("loopback is ::1 on that box", "IP", "::1"),
    ("link-local fe80::1ff:fe23:4567:890a", "IP", "fe80::1ff:fe23:4567:890a"),
    # US Social Security numbers.
    ("my SSN is 123-45-6789", "SSN", "123-45-6789"),
    ("ssn 078 05 1120 on file", "SSN", "078 05 1120"),
    ("SSN: 219099999 (no dashes)", "SSN", "219099999"),
    # Cards (Luhn), RRN, IBAN (ISO 13616 mod 97), bank accounts near a bank word.
    ("card 4111 1111 1111 1111 thanks", "CARD", "4111 1111 1111 1111"),
    ("amex 3782 822463 10005", "CARD", "3782 822463 10005"),
    ("주민번호 900101-1234567", "RRN", "900101-1234567"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN", "DE89 3704 0044 0532 0130 00"),
    ("pay GB82WEST12345698765432", "IBAN", "GB82WEST12345698765432"),
    ("FR14 2004 1010 0505 0001 3M02 606", "IBAN", "FR14 2004 1010 0505 0001 3M02 606"),
    ("계좌 110-123-456789로 보내주세요", "ACCOUNT", "110-123-456789"),
    ("국민은행 123456-01-234567", "ACCOUNT", "123456-01-234567"),
    ("bank account 1002-34-567890-1 please", "ACCOUNT", "1002-34-567890-1"),
]

NEGATIVES = [
    "The meeting is on 2026-10-01 at 14:30.",
    "It costs $1,299.99 or 15000원.",
    "Version 3.12.1 fixed it; score 98/100.",
    "ISBN 978-3-16-148410-0 is on page 12.",
    "Solve 2x + 3 = 11, then 7 * 8 = 56.",
    "Order 4111 1111 1111 1112 failed",
    "It is 12:30:45 now",
    "연구 결과로 3가지를 알았어요",
    "그걸로 25%를 어떻게 구할까요?",
    "Logged 2026-10-01 14:30, lesson 3-2-1",
    "std::cout << x; and Class::method() are C++",
    "use a::b::c in Rust paths",
    "사업자등록번호 123-45-67890 입니다",
    "tracking number 1Z999AA10123456784",
    "serial SN-2024-000123 on the box",
    "product code 4006381-333931-01",
    "The population was 331,449,281 in 2020.",
    "Chapter 3.12.1.400 of the book",
    "I scored 3 points in 2 games",
    "Read pages 221 through 240 tonight",
    "We have 3 Main lessons and 2 Park visits",
    "It happened in 1999 and again in 2004.",
    "coordinates 37.5665, 126.9780",
    "the ratio is 16:9 and the time 10:45",
    "Add 1/8 + 3/4 = 7/8",
    "우리 반은 25명이고 3반이에요",
    "주문번호 2024-1122-3344 확인했어요",
    "오후 3시 30분에 만나요",
    "room 101, floor 3",
    "He was born on 1990-05-17.",
    "not an SSN: 000-12-3456 or 666-12-3456",
    "the fraction 123/456/789 is odd",
]

# --- more shapes, written from the same specifications --------------------------------------------

POSITIVES += [
    # National formats of regions outside scrub.phone_regions, where the text says it is a phone.
    ("my number is 050-234-5678, call after six", "PHONE", "050-234-5678"),  # Israel
    ("携帯は090-1234-5678です", "PHONE", "090-1234-5678"),  # Japan
    ("telefonum 0501 234 56 78", "PHONE", "0501 234 56 78"),  # Turkey
    ("ring my mobile 07400 123456 tonight", "PHONE", "07400 123456"),  # UK
    ("my number is 0121 234 5678", "PHONE", "0121 234 5678"),
    ("Handy: 01512 3456789", "PHONE", "01512 3456789"),  # Germany
    ("mon portable : 06 12 34 56 78", "PHONE", "06 12 34 56 78"),  # France
    ("call me on 081234 56789", "PHONE", "081234 56789"),  # India
    ("meu celular (11) 96123-4567", "PHONE", "(11) 96123-4567"),  # Brazil
    # International numbers written with spaces after the country code, or a + set apart.
    ("+82 10 2000 0000 is my cell", "PHONE", "+82 10 2000 0000"),
    ("reach him on + 44 20 7946 0958", "PHONE", "+ 44 20 7946 0958"),
    ("+44 (0)20 7946 0958", "PHONE", "+44 (0)20 7946 0958"),
    ("+972 50 234 5678 (Tel Aviv)", "PHONE", "+972 50 234 5678"),
    # Korean numbers with middle dots, full-width digits, unusual dashes.
    ("연락처 010·2000·0000 입니다", "PHONE", "010·2000·0000"),
    ("전화 ０１０-２０００-００００", "PHONE", "０１０-２０００-００００"),
    ("call 415‐555‐0123", "PHONE", "415‐555‐0123"),
    # Two numbers side by side.
    ("010-1234-5678 010-9876-5432 둘 다 제 번호예요", "PHONE", "010-1234-5678"),
    # US addresses whose street name is a person's name, a numbered street after a direction, or
    # several words (USPS Pub. 28 allows any name before the suffix).
    ("we live at 1200 Martin Luther King Jr Blvd now", "ADDRESS", "1200 Martin Luther King Jr Blvd"),
    ("send it to 500 Cesar Chavez Street", "ADDRESS", "500 Cesar Chavez Street"),
    ("office at 1 Dr Carlton B Goodlett Place", "ADDRESS", "1 Dr Carlton B Goodlett Place"),
    ("I'm at 300 O'Farrell St", "ADDRESS", "300 O'Farrell St"),
    ("it's 77 Mary-Ann Lane", "ADDRESS", "77 Mary-Ann Lane"),
    ("meet at 100 W 34th St", "ADDRESS", "100 W 34th St"),
    ("they moved to 200 North 5th Street", "ADDRESS", "200 North 5th Street"),
    ("the clinic at 15 E 125 St", "ADDRESS", "15 E 125 St"),
    ("my address is 350 Fifth Avenue", "ADDRESS", "350 Fifth Avenue"),
    ("she lives at 1313 Mockingbird Lane", "ADDRESS", "1313 Mockingbird Lane"),
    ("I live at 221 baker street", "ADDRESS", "221 baker street"),
    ("ship to 2130 fulton st apt 4", "ADDRESS", "2130 fulton st apt 4"),
    ("10 Van Ness Ave is the building", "ADDRESS", "10 Van Ness Ave"),
    ("visit 8 de la Guerra Plaza", "ADDRESS", "8 de la Guerra Plaza"),
]

# Clean text that looks like personal data, by the class of mistake it would catch.
NEGATIVE_CLASSES = {
    "dates, times, ranges": [
        "기간: 2024.05.01 ~ 2024.05.07",
        "2024.05.01 14:30 시작합니다",
        "신청은 2024.05.01-05.07 사이에",
        "Valid 01/05/2024 - 07/05/2024 only.",
        "Logged at 2024-05-01T10:00:00Z.",
    ],
    "hotlines": [
        "+1-800-555-0199 is toll free",
        "고객센터 1588-1234로 전화 주세요",
        "대표번호 1544-1234 (평일 9시~6시)",
        "무료 상담 080-123-4567",
        "call our support line 1-800-234-5678",
        "call 0800 123 4567 free from the UK",
    ],
    "registration, order and bare numbers": [
        "사업자등록번호: 220-81-62517",
        "EIN 12-3456789 on the form",
        "ID 0212345678 in the database",
        "the answer is 12345678901, count its digits",
        "주문번호 12345678901 배송중",
        "order no. 1020000000 shipped",
        "tracking 9400 1000 0000 0000 0000 00",
        "invoice 2024-000123-77",
        "v2.10.1234 is out",
        "It weighs 1.234.567 kg",
    ],
    "address-like": [
        "He ran 5 miles down Ocean Avenue",
        "We walked 3 blocks along Main Street",
        "Take Route 66 west for 20 miles",
        "Top 10 Beach Resorts this year",
        "Windows 10 Home Edition",
        "Apollo 11 Mission Control",
    ],
}
NEGATIVES = [t for t in NEGATIVES if t != "+1-800-555-0199 is toll free"]
NEGATIVES += [t for texts in NEGATIVE_CLASSES.values() for t in texts]


def _example_numbers():
    """libphonenumber's example numbers (its metadata) of every region: (region, type, number)."""
    import phonenumbers
    from phonenumbers import PhoneNumberType as T

    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (T.MOBILE, T.FIXED_LINE, T.TOLL_FREE, T.UAN, T.SHARED_COST, T.PREMIUM_RATE):
            n = phonenumbers.example_number_for_type(region, kind)
            if n is not None:
                yield region, kind, n


PERSONAL = ("MOBILE", "FIXED_LINE")


def generated() -> tuple[list, list]:
    """Positives and negatives from libphonenumber's metadata, every region: a person's number in
    international format and in E.164 anywhere, and in national format where a phone word says
    so; a company's (toll-free, universal access, shared-cost, premium) left alone, in
    international format and, for KR and US, national. Numbers that share digits with one of
    another type are left out (the metadata's examples sometimes overlap)."""
    import phonenumbers
    from phonenumbers import PhoneNumberFormat as F
    from phonenumbers import PhoneNumberType as T

    pos, neg, seen = [], [], {}
    examples = list(_example_numbers())
    for _, kind, n in examples:
        seen.setdefault(phonenumbers.format_number(n, F.E164), set()).add(kind in (T.MOBILE, T.FIXED_LINE))
    for region, kind, n in examples:
        e164 = phonenumbers.format_number(n, F.E164)
        if len(seen[e164]) > 1:
            continue
        intl, national = phonenumbers.format_number(n, F.INTERNATIONAL), phonenumbers.format_number(n, F.NATIONAL)
        if kind in (T.MOBILE, T.FIXED_LINE):
            pos += [
                (f"you can reach the family at {intl} most evenings", "PHONE", intl),
                (f"({e164})", "PHONE", e164),
                (f"my number is {national}, text first", "PHONE", national),
            ]
        else:
            neg.append(f"the company's line is {intl}")
            if region in ("KR", "US"):
                neg.append(f"our office: {national}")
    return pos, neg


def generated_dates() -> list[str]:
    """Dates, times and ranges in the usual written forms, Korean and English."""
    days = [(2024, 5, 1), (2023, 12, 31), (2025, 2, 28), (2026, 10, 7)]
    out = []
    for y, m, d in days:
        for form in (
            f"{y}.{m:02}.{d:02}",
            f"{y}-{m:02}-{d:02}",
            f"{y}/{m}/{d}",
            f"{d:02}.{m:02}.{y}",
            f"{m:02}/{d:02}/{y}",
        ):
            out += [f"기간: {form} 14:30까지", f"from {form} 09:00 to {form} 17:45", f"{form} ~ {form}"]
    return out


GEN_POSITIVES, GEN_HOTLINES = generated()
GEN_DATES = generated_dates()
ALL_POSITIVES = POSITIVES + GEN_POSITIVES
ALL_NEGATIVES = NEGATIVES + GEN_HOTLINES + GEN_DATES
# The rows bench/pii.py reports the share of changed lines on.
CLASSES = {
    **NEGATIVE_CLASSES,
    "other clean text": NEGATIVES[: len(NEGATIVES) - sum(map(len, NEGATIVE_CLASSES.values()))],
}
CLASSES["dates, times, ranges"] = CLASSES["dates, times, ranges"] + GEN_DATES
CLASSES["hotlines"] = CLASSES["hotlines"] + GEN_HOTLINES
