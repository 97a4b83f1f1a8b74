"""Personal data in text: where it is, and the text with each finding replaced by its type (`<CREDIT_CARD>`).

The checks are maintained libraries' (justified in docs/security.md): `python-stdnum` validates card numbers
(Luhn), IBANs (the country's length and format, and the ISO 7064 mod 97 check) and US social security numbers
(the SSA's rules, its retired and advertised numbers refused); Google's libphonenumber (`phonenumbers`) finds
phone numbers with its own matcher and metadata. The patterns here only find candidates for those checks (a
run of digits, two letters and two digits); e-mail addresses are the WHATWG HTML standard's "valid e-mail
address" with a dotted domain. Nothing loads a model: every check is local and deterministic.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

import phonenumbers
from stdnum import iban, luhn
from stdnum.us import ssn

from app.contexts import PII_ENTITIES

ENTITIES = PII_ENTITIES
# Between texts judged at once: no finding reads across a bar on a line of its own (none spans a newline's `|`),
# nor does an injection phrasing (whitespace runs span newlines, not a `|`).
BAR = "\n|\n"
# Payment cards are 13-19 digits (ISO/IEC 7812), grouped by spaces or dashes as people write them, and not the
# tail of a longer group of digits; the first digit (the major industry identifier) is 2-6 for the networks in
# use: Mastercard, Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay.
_CARD = re.compile(r"(?<![\d-])(?<!\d[ -])[2-6](?:[ -]?\d){12,18}(?![\d-])")
# A number glued to a word or a code (`INV-2024-000123`, `#5551234567`) is an identifier, not a phone number.
_GLUE = "-_/#."
# The WHATWG HTML standard's valid e-mail address (https://html.spec.whatwg.org/#valid-e-mail-address), with at
# least one dot in the domain: text says "user@host" for things that are not addresses.
_EMAIL = re.compile(
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
)
# ISO 13616: a country code, two check digits and up to 30 letters or digits, printed in groups of four.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# The fewest digits of a phone number in any region (libphonenumber's possible lengths: Niue's, Saint Helena's).
_SHORTEST_PHONE = 4
_SSN = re.compile(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])")


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its type and where it is (never kept beyond the check that found it)."""

    entity: str
    start: int
    end: int


def _cards(text: str) -> Iterable[Finding]:
    for match in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn.is_valid(digits):
            yield Finding("CREDIT_CARD", match.start(), match.end())


def _emails(text: str) -> Iterable[Finding]:
    if "@" in text:
        for match in _EMAIL.finditer(text):
            yield Finding("EMAIL_ADDRESS", match.start(), match.end())


def _ibans(text: str) -> Iterable[Finding]:
    for match in _IBAN.finditer(text):
        candidate = match.group()
        # The pattern may run on into the words after the number: drop trailing groups until it checks out.
        while not iban.is_valid(candidate) and " " in candidate:
            candidate = candidate.rsplit(" ", 1)[0]
        if iban.is_valid(candidate):
            yield Finding("IBAN_CODE", match.start(), match.start() + len(candidate))


def _ssns(text: str) -> Iterable[Finding]:
    for match in _SSN.finditer(text):
        if ssn.is_valid(match.group().replace(" ", "-")):
            yield Finding("US_SSN", match.start(), match.end())


class Detector:
    """Finds the `entities` it is given in text; phone numbers written without a country code are read as
    numbers of `region` (CMP_PII_PHONE_REGION)."""

    def __init__(self, entities: Iterable[str] = ENTITIES, region: str = "US") -> None:
        self.entities = frozenset(entities)
        self.region = region
        finders = {"CREDIT_CARD": _cards, "EMAIL_ADDRESS": _emails, "IBAN_CODE": _ibans, "US_SSN": _ssns}
        # Numbers with a checksum first: a card or an IBAN wins over the phone number its digits may also form.
        self._finders = [finder for entity, finder in finders.items() if entity in self.entities]
        self._phones = "PHONE_NUMBER" in self.entities

    def find(self, text: str) -> list[Finding]:
        """The findings in `text`, in order, none overlapping another."""
        found: list[Finding] = []  # by start, none overlapping another
        for finder in self._finders:
            for finding in finder(text):
                _add(finding, found)
        if self._phones and any(c.isdigit() for c in text):
            # The matcher gives up after `max_tries` candidates (65535 by default), and a long text of numbers
            # (a tool's result) holds more: sized to the text, which has fewer than one per character. Candidates
            # shorter than any region's shortest number (4 digits, libphonenumber's metadata) are passed over
            # untried, so a text of small numbers costs its scan only.
            tries = max(65535, len(text))
            matcher = phonenumbers.PhoneNumberMatcher(
                text, self.region, phonenumbers.Leniency.VALID, tries, min_candidate_length=_SHORTEST_PHONE
            )
            for match in matcher:
                finding = Finding("PHONE_NUMBER", match.start, match.end)
                before = text[match.start - 1] if match.start else " "
                if not (before.isalnum() or before in _GLUE):
                    _add(finding, found)
        return found

    def find_each(self, texts: Sequence[str]) -> list[list[Finding]]:
        """The findings in each of `texts`, looked for in one pass over them all (a tool's result has thousands,
        and a matcher for each costs more than the pass); a text a finding reaches out of is looked at alone."""
        each: list[list[Finding]] = [[] for _ in texts]
        starts = list(accumulate((len(text) + len(BAR) for text in texts[:-1]), initial=0))
        alone: set[int] = set()
        for finding in self.find(BAR.join(texts)):
            k = bisect_right(starts, finding.start) - 1
            start, end = finding.start - starts[k], finding.end - starts[k]
            if end <= len(texts[k]):
                each[k].append(Finding(finding.entity, start, end))
            else:
                alone.update(range(k, bisect_right(starts, finding.end - 1)))
        for k in alone:
            each[k] = self.find(texts[k])
        return each

    def redacted(self, text: str) -> tuple[str, list[str]]:
        """`text` with its findings replaced, and the type of each finding."""
        findings = self.find(text)
        if not findings:
            return text, []
        return redact(text, findings), [f.entity for f in findings]


def _add(finding: Finding, found: list[Finding]) -> None:
    """`finding` into `found` (ordered by start) unless it overlaps one found before it: a look at two neighbours,
    as a tool's result may hold thousands."""
    i = bisect_right(found, finding.start, key=_start)
    if (i and found[i - 1].end > finding.start) or (i < len(found) and found[i].start < finding.end):
        return
    found.insert(i, finding)


def _start(finding: Finding) -> int:
    return finding.start


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with each finding (ordered, not overlapping) replaced by its type in angle brackets."""
    pieces: list[str] = []
    at = 0
    for finding in findings:
        pieces.append(text[at : finding.start])
        pieces.append(f"<{finding.entity}>")
        at = finding.end
    pieces.append(text[at:])
    return "".join(pieces)
