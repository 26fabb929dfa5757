"""Permission names: the one normalisation, the grammar, and globs that stay inside it.

Private to :mod:`~techrevati.runtime.permissions`. A role or tool name is
compared in one form (:func:`normalize_permission_name`) and must then match
the grammar (:data:`NAME_GRAMMAR`): lowercase ASCII letters and digits,
``_``, ``-``, ``.`` and ``:``. Anything else (a control character, an
invisible character that is not a format character, a slash, a full stop of
another script) is outside the grammar, and :func:`grammar_violation` names
it, so such a name can be denied with the reason.

Globs (:class:`Glob`) are written in the same alphabet plus ``*``, ``**``,
``?`` and ``[...]``; ``*``, ``?`` and classes never match the separators
``.`` and ``:``, only ``**`` does, and no wildcard matches anything outside
the grammar. :class:`NameIndex` holds exact names and globs and finds the
entry a name matches by looking up only the globs whose literal prefix the
name starts with, so a check is quick however many globs a role has.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Final

__all__ = [
    "NAME_GRAMMAR",
    "Glob",
    "NameIndex",
    "grammar_violation",
    "is_glob",
    "normalize_permission_name",
]

NAME_GRAMMAR: Final = "lowercase ASCII letters and digits, '_', '-', '.' and ':'"
"""What a name may hold after normalisation (case is folded first)."""

_NAME: Final = re.compile(r"[a-z0-9_.:\-]+")
_SEGMENT_CHAR: Final = "[a-z0-9_\\-]"  # a wildcard's reach: never a separator
_ANY_CHAR: Final = "[a-z0-9_.:\\-]"
_GLOB_CHARS: Final = frozenset("*?[")
_PATTERN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.:-*?[]!^")


def normalize_permission_name(name: str) -> str:
    """Return the form role and tool names are compared in.

    Unicode NFKC (full-width and other compatibility forms become plain
    letters), then case folding (and NFKC again, as folding can undo it),
    then invisible format characters (zero-width spaces, joiners, bidi
    marks) are dropped, then surrounding whitespace is trimmed. ASCII names
    take a fast path with the same result: trimmed and lowercased. The result
    may still be outside the grammar (:func:`grammar_violation` says so).
    """
    if name.isascii():
        return name.strip().lower()
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    if any(unicodedata.category(char) == "Cf" for char in text):
        text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    return text.strip()


def grammar_violation(name: str) -> str | None:
    """Return why a normalised ``name`` is outside the grammar, or None if it is inside.

    The reason names the first offending character by code point and
    Unicode name (``U+034F COMBINING GRAPHEME JOINER at index 5``).
    """
    if _NAME.fullmatch(name):
        return None
    if not name:
        return "it is empty"
    for index, char in enumerate(name):
        if not _NAME.fullmatch(char):
            return f"{_describe(char)} at index {index} is outside the grammar ({NAME_GRAMMAR})"
    raise AssertionError("unreachable: a name outside the grammar has a character outside it")


def is_glob(entry: str) -> bool:
    """Whether a normalised entry holds a wildcard (``*``, ``?`` or ``[``)."""
    return not _GLOB_CHARS.isdisjoint(entry)


class Glob:
    """One glob over names of the grammar; its regex is compiled on first use."""

    __slots__ = ("_regex", "order", "prefix", "suffix", "text")

    def __init__(self, text: str, order: int = 0) -> None:
        bad = next((char for char in text if char not in _PATTERN_CHARS), None)
        if bad is not None:
            raise ValueError(
                f"{_describe(bad)} is outside the glob grammar ({NAME_GRAMMAR}, "
                "and the wildcards '*', '**', '?', '[...]')"
            )
        self.text = text
        cut = min((text.index(char) for char in _GLOB_CHARS if char in text), default=len(text))
        self.prefix = text[:cut]
        """The literal start every name it matches begins with."""
        last = max(text.rfind("*"), text.rfind("?"), text.rfind("]"))
        self.suffix = text[last + 1 :]
        """The literal end every name it matches ends with."""
        self.order = order
        """Its position in its list (the first matching entry in list order wins)."""
        self._regex: re.Pattern[str] | None = None

    def matches(self, name: str) -> bool:
        """Whether a normalised, grammar-valid ``name`` matches the whole glob."""
        regex = self._regex
        if regex is None:
            regex = self._regex = re.compile(_translate(self.text))
        return regex.fullmatch(name) is not None


class _Bucket:
    """Globs filed by their literal end; those with none are tried for every name."""

    __slots__ = ("by_suffix", "lengths", "rest")

    def __init__(self) -> None:
        self.by_suffix: dict[str, list[Glob]] = {}
        self.lengths: list[int] = []
        self.rest: list[Glob] = []

    def add(self, glob: Glob) -> None:
        if glob.suffix:
            self.by_suffix.setdefault(glob.suffix, []).append(glob)
            self.lengths = sorted({*self.lengths, len(glob.suffix)})
        else:
            self.rest.append(glob)

    def collect(self, name: str, size: int, out: list[Glob]) -> None:
        """Add to ``out`` the globs that could match ``name`` (``size`` its length)."""
        by_suffix = self.by_suffix
        for length in self.lengths:
            if length > size:
                break
            found = by_suffix.get(name[size - length :])
            if found is not None:
                out += found
        out += self.rest


class NameIndex:
    """Exact names and globs (normalised) of one list, looked up by literal start and end.

    A glob is filed under its literal start, then under its literal end;
    only a glob with neither (``*``, ``*.*``) is tried for every name. So a
    name tries only the globs that could match it, in list order, and stops
    at the first that does.
    """

    __slots__ = ("_exact", "_floating", "_lengths", "_order", "_prefixed")

    def __init__(self, entries: Iterable[str]) -> None:
        self._exact: dict[str, int] = {}
        self._prefixed: dict[str, _Bucket] = {}
        self._floating = _Bucket()  # globs that start with a wildcard
        self._order: dict[str, int] = {}  # glob text -> position in the list
        for position, entry in enumerate(entries):
            if is_glob(entry):
                if entry in self._order:
                    continue
                glob = Glob(entry, position)
                self._order[entry] = position
                if glob.prefix:
                    bucket = self._prefixed.get(glob.prefix)
                    if bucket is None:
                        bucket = self._prefixed[glob.prefix] = _Bucket()
                    bucket.add(glob)
                else:
                    self._floating.add(glob)
            else:
                self._exact.setdefault(entry, position)
        self._lengths = sorted({len(prefix) for prefix in self._prefixed})

    def match(self, name: str) -> str | None:
        """Return the first entry (in list order) that ``name`` matches, or None."""
        exact_at = self._exact.get(name)
        if not self._order:  # exact names only
            return None if exact_at is None else name
        size = len(name)
        candidates: list[Glob] = []
        prefixed = self._prefixed
        for length in self._lengths:
            if length > size:
                break
            bucket = prefixed.get(name[:length])
            if bucket is not None:
                bucket.collect(name, size, candidates)
        self._floating.collect(name, size, candidates)
        if len(candidates) > 1:
            candidates.sort(key=_by_order)
        for glob in candidates:
            if exact_at is not None and glob.order > exact_at:
                break
            if glob.matches(name):
                return glob.text
        return None if exact_at is None else name

    def entries(self) -> list[str]:
        """Return every entry, in list order (for explanations)."""
        positions = {**self._exact, **self._order}
        return sorted(positions, key=positions.__getitem__)

    def __len__(self) -> int:
        return len(self._exact) + len(self._order)


def _by_order(glob: Glob) -> int:
    return glob.order


def _translate(glob: str) -> str:
    """Translate a glob to a regex over the grammar (``*`` and ``?`` stop at separators)."""
    out: list[str] = []
    index, size = 0, len(glob)
    while index < size:
        char = glob[index]
        if char == "*":
            if glob.startswith("**", index):
                out.append(f"{_ANY_CHAR}*")
                index += 2
                continue
            out.append(f"{_SEGMENT_CHAR}*")
        elif char == "?":
            out.append(_SEGMENT_CHAR)
        elif char == "[":
            end = glob.find("]", index + 2)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = glob[index + 1 : end]
                negated = body[:1] in ("!", "^")
                members = re.escape(body[1:] if negated else body).replace("\\-", "-")
                # A range such as "--0" spans ".": a class never matches a separator.
                out.append(f"[^{members}.:]" if negated else f"(?![.:])[{members}]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def _describe(char: str) -> str:
    """Name a character for a reason: ``U+0000 a control character``, ``U+002F SOLIDUS``."""
    name = unicodedata.name(char, "")
    if not name:
        category = unicodedata.category(char)
        name = _UNNAMED.get(category, f"an unnamed character ({category})")
    return f"U+{ord(char):04X} {name}"


_UNNAMED: Final = {
    "Cc": "a control character",
    "Cs": "a surrogate",
    "Co": "a private-use character",
}
