"""PII redaction: emails, phone numbers, card numbers, IBANs and API-key-shaped secrets.

Private: :class:`PiiRedactor` is public from :mod:`techrevati.runtime.guardrails`.
Each kind is a regular expression that finds candidates and, where the kind
has one, a check that throws most false candidates out: the Luhn digit of a
card number (13-19 digits starting 2-6, in groups of 3-6 when separated), the
length and mod-97 check digits of an IBAN, the digit count of a phone number
(8-15 with a ``+``, 10-12 in a national format), the mix of letters and
digits of a key. Every pattern is linear-time on any input: a candidate can
start only where the character before it cannot belong to it (a lookbehind),
and its repeats are possessive, atomic or bounded, so no input makes the
engine backtrack more than a constant per character.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Literal

from techrevati.runtime._guardrail_core import (
    DEFAULT_MAX_DEPTH,
    GuardrailAction,
    GuardrailTarget,
    Hit,
    TextGuardrail,
    checked_template,
    non_overlapping,
)
from techrevati.runtime.errors import InvalidValueError

__all__ = ["IBAN_LENGTHS", "PII_KINDS", "PiiKind", "PiiRedactor", "iban_valid", "luhn_valid"]

PiiKind = Literal["email", "phone", "card", "iban", "secret"]
"""A kind of personal data or secret :class:`PiiRedactor` finds."""

PII_KINDS: Final[tuple[PiiKind, ...]] = ("email", "phone", "card", "iban", "secret")

IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
"""Each IBAN country's length (the SWIFT IBAN registry); other country codes are not IBANs."""

_RANK: Final[dict[str, int]] = {"secret": 0, "card": 1, "iban": 2, "email": 3, "phone": 4}
"""Which kind wins when two candidates start together and are as long."""

_NOT_DOMAINS: Final = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif"})
"""Image extensions: ``icon@2x.png`` is a file name, not an address."""

_PLACEHOLDERS: Final = (
    "example", "your", "xxxx", "placeholder", "changeme", "redacted", "dummy", "sample", "****",
)  # fmt: skip
"""Words that make an assigned value a placeholder rather than a secret."""

# -- the patterns (each linear-time: see the module docstring) -----------------------------
# Each starts with a literal or a small class, so the engine skips ahead in C to where a
# candidate can start; the lookbehind just after it (``(?<![...](?s:.))``) then checks the
# character before the candidate.

_EMAIL_DOMAIN: Final = re.compile(
    r"@(?>(?:[A-Za-z0-9\-]{1,63}+\.(?=[A-Za-z0-9]))+)([A-Za-z]{2,24}+)"
    r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])"
)
_LOCAL_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-"
)
_PHONE_INTL: Final = re.compile(
    r"\+(?<![\w+](?s:.))(?:[1-9]\d{6,14}+"
    r"|[1-9]\d{0,3}(?:[ .\-]?\(\d{1,4}\))?[ .\-]?\d{1,6}+(?:[ .\-]\d{1,6}+){0,5}+)"
    r"(?![\w]|[.\-]\d)"
)
_PHONE_NANP: Final = re.compile(
    r"(?:\((?<![\w+.\-/](?s:.))[2-9]\d{2}\)[ .\-]?|[2-9](?<![\w+.\-/(](?s:.))\d{2}[ .\-])"
    r"[2-9]\d{2}[ .\-]\d{4}(?![\w\-/]|[.,]\d)"
)
_PHONE_NATIONAL: Final = re.compile(
    r"0(?<![\w+.\-/:](?s:.))\d{1,4}(?:[ \-/]\d{2,8}+){1,4}+(?![\w\-/:]|[.,]\d)"
)
_CARD: Final = re.compile(r"[2-6](?<![\w\-.+](?s:.))\d(?:[ \-]?\d){11,17}(?![\w\-]|[.,]\d)")
_IBAN: Final = re.compile(r"[A-Z](?<![A-Za-z0-9](?s:.))[A-Z]\d{2}(?:[ ]?[A-Z0-9]){11,30}")
_DIGIT: Final = re.compile(r"\d")
_GROUPS: Final = re.compile(r"[ \-]")

_OPENAI: Final = re.compile(
    r"sk-(?<![\w\-](?s:...))(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}+"
)
_ANTHROPIC: Final = re.compile(r"sk-ant-(?<![\w\-](?s:.......))[A-Za-z0-9_\-]{20,}+")
_AWS: Final = re.compile(r"A[KS]IA(?<![A-Za-z0-9](?s:....))[A-Z2-7]{16}(?![A-Za-z0-9])")
_GITHUB: Final = re.compile(
    r"gh(?<![A-Za-z0-9_](?s:..))(?:[pousr]_[A-Za-z0-9]{36,251}+|ithub_pat_[A-Za-z0-9_]{22,247}+)"
    r"(?![A-Za-z0-9_])"
)
_SLACK: Final = re.compile(
    r"xox(?<![\w\-](?s:...))[abposr]-[A-Za-z0-9\-]{10,}+"
    r"|https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]{20,}+"
)
_KEYWORD: Final = (
    r"(?:[a-z0-9]{0,20}+[_\-.]?)?"
    r"(?:api[_\-]?key|apikey|secret|token|password|passwd|pwd|access[_\-]?key"
    r"|private[_\-]?key|client[_\-]?secret|auth)"
    r"(?:[_\-.]?[a-z0-9]{1,12}+){0,2}+"
)
_ASSIGNMENT: Final = (
    r"(key|secret|token|passw|pwd|auth)[a-z0-9_\-.]{0,24}+[\"']?\s{0,8}+[:=]\s{0,8}+[\"']?"
    r"([a-z0-9_\-+/=.~]{16,}+)"
)
_ASSIGNED: Final = re.compile(_ASSIGNMENT)
"""Run on the lower-cased text (when lower-casing keeps every offset: nearly always)."""
_ASSIGNED_ANY: Final = re.compile(_ASSIGNMENT, re.IGNORECASE)
"""The same on a text that lower-casing would lengthen (``İ``), case-insensitively (slower)."""
_BEARER: Final = re.compile(r"bearer(?<![a-z0-9](?s:......))\s{1,8}+([a-z0-9_\-+/=.~]{20,}+)")
_BEARER_ANY: Final = re.compile(_BEARER.pattern, re.IGNORECASE)
_SECRET_KEY: Final = re.compile(rf"(?i){_KEYWORD}")
_KEY_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")
_PATH_LIKE: Final = re.compile(r"[a-z0-9_.\-]*(?:/[a-z0-9_.\-]+){2,}/?")

PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    "email": _EMAIL_DOMAIN,
    "phone_international": _PHONE_INTL,
    "phone_nanp": _PHONE_NANP,
    "phone_national": _PHONE_NATIONAL,
    "card": _CARD,
    "iban": _IBAN,
    "secret_openai": _OPENAI,
    "secret_anthropic": _ANTHROPIC,
    "secret_aws": _AWS,
    "secret_github": _GITHUB,
    "secret_slack": _SLACK,
    "secret_assigned": _ASSIGNED,
    "secret_assigned_any_case": _ASSIGNED_ANY,
    "secret_bearer": _BEARER,
    "secret_bearer_any_case": _BEARER_ANY,
}
"""Every pattern the redactor runs, by name (tests feed each an adversarial 1 MB string)."""

_Found = tuple[int, int, str, str]
"""A candidate that passed its check: start, end, rule suffix, reason."""


class PiiRedactor(TextGuardrail):
    """Find emails, phone numbers, card numbers, IBANs and secrets; replace them by default.

    ``kinds`` chooses among :data:`PII_KINDS`. ``action="redact"`` (the
    default) replaces each one with ``replacement`` (``{kind}`` is the kind:
    ``"[email]"``); ``"flag"`` only reports, ``"block"`` refuses the value.
    ``allow`` lists exact values never reported (compared case-insensitively),
    such as your own support address. Rules are named ``<name>.<kind>``, and
    ``<name>.secret.<shape>`` for secrets (``pii.secret.aws``). Findings carry
    where and which rule, never the matched text. As a hook it looks at tool
    results by default (``on``); :func:`~techrevati.runtime.guardrails.redacting_sink`
    puts it before a sink, :func:`~techrevati.runtime.guardrails.redacting_inputs`
    before a model call.
    """

    __slots__ = ("_allow", "_kinds", "_template")

    def __init__(
        self,
        kinds: PiiKind | Iterable[PiiKind] = PII_KINDS,
        *,
        action: GuardrailAction = "redact",
        replacement: str = "[{kind}]",
        on: GuardrailTarget | Iterable[GuardrailTarget] = ("results",),
        allow: Iterable[str] = (),
        name: str = "pii",
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__(name, action, on, max_depth)
        self._kinds = _checked_kinds(kinds)
        self._template = checked_template("replacement", replacement, kind="email")
        if isinstance(allow, str):
            raise InvalidValueError(f"allow must be a collection of str, got {allow!r}")
        allowed = tuple(allow)
        for item in allowed:
            if not isinstance(item, str):
                raise InvalidValueError(f"allow must hold only str, got {item!r}")
        self._allow = frozenset(item.casefold() for item in allowed)

    @property
    def kinds(self) -> tuple[PiiKind, ...]:
        """The kinds this redactor looks for, in :data:`PII_KINDS` order."""
        return self._kinds

    def _scan(self, text: str, key: object) -> list[Hit]:
        found: list[_Found] = []
        kinds = self._kinds
        if "secret" in kinds:
            found.extend(_secrets(text))
            if isinstance(key, str) and _SECRET_KEY.fullmatch(key) and _keyed_secret(text):
                found.append((0, len(text), "secret.keyed", f"the value of key {key[:40]!r}"))
        if "card" in kinds:
            found.extend(_cards(text))
        if "iban" in kinds:
            found.extend(_ibans(text))
        if "email" in kinds and "@" in text:
            found.extend(_emails(text))
        if "phone" in kinds:
            found.extend(_phones(text))
        if not found:
            return []
        name = self._name
        hits = []
        for start, end, suffix, reason in found:
            if self._allow and text[start:end].casefold() in self._allow:
                continue
            kind = suffix.split(".", 1)[0]
            hits.append(
                Hit(f"{name}.{suffix}", start, end, reason, self._template.format(kind=kind))
            )
        return non_overlapping(hits, self._rank_of)

    def _rank_of(self, hit: Hit) -> int:
        return _RANK[hit.rule[len(self._name) + 1 :].split(".", 1)[0]]

    def _replacement(self, rule: str) -> str:
        return self._template.format(kind=rule.rsplit(".", 1)[-1])


# -- each kind: candidates, then the check ------------------------------------------------


def _emails(text: str) -> Iterator[_Found]:
    for match in _EMAIL_DOMAIN.finditer(text):
        if match.group(1).lower() in _NOT_DOMAINS:
            continue
        at = match.start()
        floor = max(0, at - 64)  # a local part has at most 64 characters
        start = at
        while start > floor and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        if start == at or (start == floor and floor > 0 and text[floor - 1] in _LOCAL_CHARS):
            continue
        yield start, match.end(), "email", "an email address"


def _phones(text: str) -> Iterator[_Found]:
    if "+" in text:
        for match in _PHONE_INTL.finditer(text):
            digits = len(_DIGIT.findall(match.group()))
            if 8 <= digits <= 15:
                yield match.start(), match.end(), "phone", "a phone number (international)"
    for match in _PHONE_NANP.finditer(text):
        yield match.start(), match.end(), "phone", "a phone number (North American)"
    for match in _PHONE_NATIONAL.finditer(text):
        digits = len(_DIGIT.findall(match.group()))
        if 10 <= digits <= 12:
            yield match.start(), match.end(), "phone", "a phone number (national, leading 0)"


def _cards(text: str) -> Iterator[_Found]:
    for match in _CARD.finditer(text):
        raw = match.group()
        groups = _GROUPS.split(raw)
        if len(groups) > 1 and not all(3 <= len(group) <= 6 for group in groups):
            continue
        digits = "".join(groups)
        if luhn_valid(digits):
            reason = f"a card number ({len(digits)} digits, Luhn check passed)"
            yield match.start(), match.end(), "card", reason


def _ibans(text: str) -> Iterator[_Found]:
    for match in _IBAN.finditer(text):
        raw = match.group()
        length = IBAN_LENGTHS.get(raw[:2])
        if length is None:
            continue
        end = _end_of_chars(raw, length)
        if end is None:
            continue
        after = match.start() + end
        if after < len(text) and text[after].isalnum():
            continue  # runs on past the country's length: not this IBAN
        if iban_valid(raw[:end].replace(" ", "")):
            reason = f"an IBAN ({raw[:2]}, mod-97 check passed)"
            yield match.start(), after, "iban", reason


def _end_of_chars(raw: str, count: int) -> int | None:
    """Return the index just past the ``count``-th non-space character of ``raw``, if any."""
    seen = 0
    for index, char in enumerate(raw):
        if char != " ":
            seen += 1
            if seen == count:
                return index + 1
    return None


_Shape = tuple[str, tuple[str, ...], re.Pattern[str], Callable[[str], bool], str]
_SHAPES: Final[tuple[_Shape, ...]] = (
    ("anthropic", ("sk-ant-",), _ANTHROPIC, lambda s: _mixed(s[7:]), "an Anthropic API key"),
    ("openai", ("sk-",), _OPENAI, lambda s: _mixed(s[3:]), "an OpenAI API key"),
    ("aws", ("AKIA", "ASIA"), _AWS, lambda s: True, "an AWS access key id"),
    ("github", ("gh", "github_pat_"), _GITHUB, lambda s: True, "a GitHub token"),
    ("slack", ("xox", "hooks.slack"), _SLACK, lambda s: bool(_DIGIT.search(s)), "a Slack token"),
)  # fmt: skip


def _secrets(text: str) -> Iterator[_Found]:
    for shape, literals, pattern, check, reason in _SHAPES:
        if any(literal in text for literal in literals):
            for match in pattern.finditer(text):
                token = match.group()
                if check(token) and not _placeholder(token):
                    yield match.start(), match.end(), f"secret.{shape}", reason
    if "=" not in text and ":" not in text:
        return
    folded = text.lower()
    same = len(folded) == len(text)  # lower-casing never shortens: same length, same offsets
    if not same:
        folded = text
    assigned, bearer = (_ASSIGNED, _BEARER) if same else (_ASSIGNED_ANY, _BEARER_ANY)
    for match in assigned.finditer(folded):
        key = _key_before(folded, match.start(), match.end(1))
        value = text[match.start(2) : match.end(2)]
        if _SECRET_KEY.fullmatch(key) and _random_value(value):
            reason = f"a high-entropy value assigned to {key[:40]!r}"
            yield match.start(2), match.end(2), "secret.assigned", reason
    if "bearer" in folded or not same:
        for match in bearer.finditer(folded):
            if _random_value(text[match.start(1) : match.end(1)]):
                yield match.start(1), match.end(1), "secret.bearer", "a bearer token"


def _key_before(folded: str, stem: int, stem_end: int) -> str:
    """Return the whole key name around a stem: up to 24 key characters either side, and it."""
    start = stem
    floor = max(0, stem - 24)
    while start > floor and folded[start - 1].lower() in _KEY_CHARS:
        start -= 1
    end = stem_end
    limit = min(len(folded), stem_end + 24)
    while end < limit and folded[end].lower() in _KEY_CHARS:
        end += 1
    return folded[start:end]


def _mixed(body: str) -> bool:
    """Whether a key's body has at least two each of upper case, lower case and digits."""
    upper = lower = digits = 0
    for char in body:
        if char.isdigit():
            digits += 1
        elif char.isupper():
            upper += 1
        elif char.islower():
            lower += 1
    return upper >= 2 and lower >= 2 and digits >= 2


def _placeholder(value: str) -> bool:
    """Whether a value says it is a placeholder (``EXAMPLE``, ``your-key``, ``xxxx``)."""
    folded = value.lower()
    return any(word in folded for word in _PLACEHOLDERS)


def _random_value(value: str) -> bool:
    """Whether an assigned value looks like a generated secret, not a word, path or placeholder."""
    folded = value.lower()
    if _placeholder(value):
        return False
    if not _DIGIT.search(value) or not any(char.isalpha() for char in value):
        return False
    if value == folded and _PATH_LIKE.fullmatch(value):
        return False
    return _entropy(value) >= 3.0


def _keyed_secret(value: str) -> bool:
    """Whether the value of a secret-named key (``"password": ...``) is worth redacting."""
    if len(value) < 8 or _placeholder(value):
        return False
    has_letter = any(char.isalpha() for char in value)
    has_other = any(not char.isalpha() for char in value)
    return has_letter and has_other


def _entropy(value: str) -> float:
    """Shannon entropy of the characters of ``value``, in bits per character."""
    total = len(value)
    return -sum(n / total * math.log2(n / total) for n in Counter(value).values())


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn check (its last digit is right)."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (no spaces, upper case) has its country's length and mod-97 remainder 1."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    if not iban[2:4].isdigit():
        return False
    moved = iban[4:] + iban[:4]
    number = "".join(str(int(char, 36)) for char in moved)
    return int(number) % 97 == 1


def _checked_kinds(kinds: object) -> tuple[PiiKind, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not isinstance(kinds, Iterable):
        raise InvalidValueError(f"kinds must be a collection of PII kinds, got {kinds!r}")
    try:
        given = set(kinds)
    except TypeError:
        raise InvalidValueError(f"kinds must be a collection of PII kinds, got {kinds!r}") from None
    unknown = sorted(str(kind) for kind in given if kind not in PII_KINDS)
    if unknown:
        raise InvalidValueError(
            f"kinds must be among {', '.join(PII_KINDS)}, got {', '.join(map(repr, unknown))}"
        )
    if not given:
        raise InvalidValueError(f"kinds must name at least one of {', '.join(PII_KINDS)}")
    return tuple(kind for kind in PII_KINDS if kind in given)
