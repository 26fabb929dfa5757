r"""Prompt-injection heuristics for tool output: phrasings, markup and hidden text.

Private: :class:`InjectionDetector` is public from :mod:`techrevati.runtime.guardrails`.
Two families of rules. Phrase rules look for what an injected instruction
says: telling the model to ignore what it was told, to become someone else,
that "new instructions" follow, a ``system:`` line, chat-template markup,
asking for the system prompt, or to send secrets somewhere. They run on a
view of the text with invisible characters dropped and full-width and common
Cyrillic look-alike letters folded to ASCII (so ``ig\u200bnore`` still reads
"ignore"); their spans are mapped back to the original. Hidden-text rules
look for what a reader would not see: zero-width characters inside words,
Unicode tag characters, bidirectional overrides, and HTML comments, hidden
elements (``display:none``, ``visibility:hidden``, zero size or opacity, white
text, ``hidden``) or base64 blobs whose content reads as an instruction.
Every scan is linear in the text: the patterns start with a literal or a
small class, their repeats are bounded or possessive, hidden HTML content is
read at most :data:`MAX_HIDDEN_CHARS` at a time, and at most
:data:`MAX_BASE64_CHARS` characters of base64 are decoded per string.
"""

from __future__ import annotations

import binascii
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Final

from techrevati.runtime._guardrail_core import (
    DEFAULT_MAX_DEPTH,
    GuardrailAction,
    GuardrailTarget,
    Hit,
    TextGuardrail,
    checked_template,
)
from techrevati.runtime.errors import InvalidValueError

__all__ = ["INJECTION_RULES", "MAX_BASE64_CHARS", "MAX_HIDDEN_CHARS", "InjectionDetector"]

MAX_HIDDEN_CHARS: Final = 10_000
"""Characters of one HTML comment or hidden element read to decide whether it is an instruction."""

MAX_BASE64_CHARS: Final = 65_536
"""Characters of base64 decoded per string, in blobs of at most :data:`_MAX_BLOB` each."""

_MAX_BLOB: Final = 8_192

INJECTION_RULES: Final[dict[str, str]] = {
    "ignore_instructions": "tells the model to ignore, forget or override what it was told",
    "role_play": "tells the model it is now someone else, or to enter an unrestricted mode",
    "new_instructions": 'announces "new instructions:" (or updated, real, important ...)',
    "system_line": 'a line starting "system:" or "developer:" that gives an order',
    "chat_markup": "chat-template markup: <|im_start|>, [INST], <<SYS>> and the like",
    "prompt_leak": "asks the model to reveal its system prompt or instructions",
    "exfiltration": "asks the model to send secrets or the conversation to an address",
    "zero_width": "zero-width characters inside a word, or several in a row",
    "unicode_tags": "Unicode tag characters (U+E0000 block), invisible text",
    "bidi_control": "bidirectional overrides or embeddings in text with no right-to-left script",
    "html_comment": "an HTML comment whose content reads as an instruction",
    "hidden_html": "an HTML element hidden by CSS or hidden= whose content reads as an instruction",
    "base64": "a base64 blob that decodes to text reading as an instruction",
}
"""Every rule :class:`InjectionDetector` has, and what makes it fire."""

_PHRASE_RULES: Final = (
    "ignore_instructions",
    "role_play",
    "new_instructions",
    "system_line",
    "chat_markup",
    "prompt_leak",
    "exfiltration",
)

# -- phrase rules ---------------------------------------------------------------------------

_VERB = (
    r"(?:ignore|ignoring|disregard|disregarding|forget|forgetting|override|overriding|overrule"
    r"|bypass|skip|discard|abandon|neglect|set\s+aside|throw\s+out|pay\s+no\s+attention\s+to"
    r"|do\s+not\s+(?:follow|obey)|don'?t\s+(?:follow|obey)|stop\s+following|no\s+longer\s+follow)"
)
_DET = r"(?:all|any|every|each|the|your|my|of|these|those|its|their|our|such|that|this)"
_TIME = (
    r"(?:previous|previously\s+given|prior|preceding|above|earlier|former|past|initial|original"
    r"|old|existing|foregoing|aforementioned|system|developer|safety)"
)
_OBJ = (
    r"(?:instructions?|prompts?|directions?|directives?|rules?|guidelines?|guidance|commands?"
    r"|orders?|messages?|context|constraints?|restrictions?|policies|programming)"
)
_AFTER = (
    r"(?:above|before|so\s+far|given\s+(?:above|before|earlier|previously|to\s+you)"
    r"|(?:that\s+)?you\s+(?:were|have\s+been)\s+given|from\s+(?:before|earlier|above)"
    r"|up\s+to\s+(?:now|this\s+point)|provided\s+(?:above|earlier|before))"
)
_TOLD = (
    r"(?:everything|anything|all(?:\s+of\s+(?:that|this|it))?"
    r"|what(?:ever)?\s+(?:you\s+(?:were|have\s+been)\s+)?(?:told|said|written|instructed))"
)
_WHEN = (
    r"(?:above|before|earlier|previously|so\s+far|until\s+now|up\s+to\s+now"
    r"|you\s+(?:were|have\s+been)\s+told)"
)
_IGNORE = (
    rf"\b{_VERB}(?:\s+{_DET}){{0,3}}\s+{_TIME}(?:\s+(?:and|or|&)\s+{_TIME})?(?:\s+\w+)?\s+{_OBJ}\b"
    rf"|\b{_VERB}(?:\s+{_DET}){{0,3}}\s+{_OBJ}\s+{_AFTER}\b"
    rf"|\b{_VERB}\s+{_TOLD}\s+{_WHEN}\b"
    r"|\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:of\s+)?the\s+above(?=\s*(?:and\b|[,.;:!]|$))"
    r"|\b(?:ignorier(?:e|en|t)?|vergiss|vergessen\s+sie)\s+(?:(?:alle|die|deine|ihre|s[äa]mtliche)"
    r"\s+){0,2}(?:vorherigen|bisherigen|vorigen|obigen|fr[üu]heren)\s+"
    r"(?:anweisungen|instruktionen|befehle|regeln)"
    r"|\b(?:ignore[rz]?|oublie[rz]?)\s+(?:(?:toutes|tous|les|tes|vos)\s+){0,2}"
    r"(?:instructions|consignes|r[èe]gles)\s+(?:pr[ée]c[ée]dentes|ant[ée]rieures|initiales)"
    r"|\b(?:ignora|ignore|olvida|olvide)\s+(?:(?:todas|las|tus|sus)\s+){0,2}"
    r"(?:instrucciones|indicaciones|reglas)\s+(?:anteriores|previas|iniciales)"
)
_PERSONA = r"(?:AI|assistant|model|chatbot|bot|persona|character|hacker|DAN)"
_ROLE = (
    r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:in\s+)?(?:DAN\b|developer\s+mode|jailbroken"
    r"|jailbreak|unrestricted|unfiltered|uncensored|free\s+(?:from|of)|bound\s+by|restricted\s+by"
    rf"|an?\s+(?:\w+\s+){{0,3}}?{_PERSONA}\b)"
    r"|\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must|shall|should|can)\s+(?:\w+\s+){0,2}?"
    r"(?:respond|answer|reply|act|behave|ignore|obey|pretend|speak|only|always|never|roleplay"
    r"|role-play|be)\b"
    r"|\b(?:pretend|imagine)\s+(?:that\s+)?(?:you\s+are|you're|to\s+be)\s+(?:an?\s+|the\s+)?"
    rf"(?:\w+\s+){{0,3}}?{_PERSONA}\b"
    r"|\b(?:act|behave|respond)\s+as\s+(?:if\s+you\s+(?:are|were)\s+)?(?:an?\s+|the\s+)?"
    r"(?:\w+\s+){0,3}?(?:AI|assistant|model|chatbot|bot)\s+(?:with\s+no|without"
    r"|that\s+(?:has\s+no|ignores|doesn't|does\s+not))"
    r"|\b(?:enter|switch\s+(?:to|into)|enable|activate|turn\s+on)\s+(?:\w+\s+)?"
    r"(?:DAN|jailbreak|jailbroken|god|unrestricted|unfiltered|uncensored|evil)\s+mode\b"
)
_NEW = (
    r"\b(?:new|updated|revised|real|actual|true|important|additional|override|hidden|secret"
    r"|urgent)\s+(?:system\s+)?(?:instructions?|directives?|system\s+prompt|orders|task)\s*:"
)
_SYSTEM_LINE = (
    r"(?m)^[ \t>*#\-]*\[?(?:system|developer)(?:\s+(?:prompt|message|note|override))?\]?\s*:"
    r"[ \t]*(?:you\b|your\b|ignore|disregard|forget|always|never|do\s+not|don'?t|from\s+now"
    r"|respond|reply|answer|act\s+as|new\s+instructions|the\s+(?:assistant|ai|model)\b"
    r"|assistant\b|as\s+an?\s+ai)[^\n]{0,2000}+"
)
_MARKUP = (
    r"<\|(?:im_start|im_end|system|user|assistant|endoftext|start_header_id|end_header_id"
    r"|eot_id|begin_of_text)\|>|\[/?INST\]|<</?SYS>>"
)
_LEAK = (
    r"\b(?:reveal|print|output|repeat|show|display|tell\s+me|write\s+out|leak|dump|share"
    r"|disclose|recite)\s+(?:me\s+|us\s+)?(?:all\s+)?(?:of\s+)?(?:your|the)\s+"
    r"(?:(?:full|entire|complete|original|initial|hidden|secret|exact|whole)\s+){0,2}"
    r"(?:system\s+prompt|system\s+message|(?:initial|original|hidden|secret)\s+"
    r"(?:instructions|prompt)|instructions\s+(?:verbatim|word\s+for\s+word)|prompt\s+verbatim)"
)
_EXFIL = (
    r"\b(?:send|post|forward|upload|transmit|e-?mail|exfiltrate|leak|copy|paste|submit)\s+"
    r"(?:[\w']+\s+){0,4}?(?:conversation|chat\s+(?:history|log)|system\s+prompt|api\s+keys?"
    r"|credentials|secrets?|passwords?|access\s+tokens?|tokens|private\s+(?:data|keys?)"
    r"|user(?:'s)?\s+data|personal\s+data|environment\s+variables|\.env(?:\s+file)?"
    r"|ssh\s+keys?|session\s+cookies?|cookies)\s+(?:[\w']+\s+){0,3}?to\s+"
    r"(?:https?://|(?:this|the\s+following|my|our)\s+(?:url|address|endpoint|server|webhook"
    r"|email))"
)

# What makes hidden content (a comment, a hidden element, decoded base64) an instruction,
# beyond the phrase rules: it addresses a model, or orders it to say or do something.
_ADDRESS = (
    r"\b(?:dear|attention|note\s+(?:to|for)|message\s+(?:to|for)|instructions?\s+(?:to|for)|hey"
    r"|hi|hello|if\s+you\s+are)\s+(?:an?\s+|the\s+)?(?:ai|llm|language\s+model|assistant|chatbot"
    r"|agent|bot|gpt|claude|gemini|copilot)s?\b"
    r"|\b(?:ai|llm|assistant|chatbot|agent|gpt|claude|gemini|copilot)s?\s*[:,]\s+\w"
)
_IMPERATIVE = (
    r"\b(?:you\s+(?:must|should|shall|will|need\s+to|have\s+to|are\s+(?:to|required\s+to))"
    r"|make\s+sure\s+(?:you|to)|be\s+sure\s+to|always|never|do\s+not|don'?t|instead,?)\s+"
    r"(?:\w+\s+){0,4}?(?:tell|say|respond|reply|answer|recommend|mention|output|include|write"
    r"|call|run|execute|send|ignore|reveal|praise|rate|describe|state|claim)\b"
)

_SOURCES: Final[dict[str, str]] = {
    "ignore_instructions": _IGNORE,
    "role_play": _ROLE,
    "new_instructions": _NEW,
    "system_line": _SYSTEM_LINE,
    "chat_markup": _MARKUP,
    "prompt_leak": _LEAK,
    "exfiltration": _EXFIL,
    "address": _ADDRESS,
    "imperative": _IMPERATIVE,
}
r"""Each phrase pattern, written in lower case (its escapes are all lower case: \b, \s, \w)."""

_HEAD_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "ignore_instructions": (
        "ignor", "disregard", "forget", "overr", "bypass", "skip", "discard", "abandon",
        "neglect", "set", "throw", "pay", "do", "stop", "no", "verg", "oubli", "olvid",
    ),
    "role_play": (
        "you", "from", "pretend", "imagine", "act", "behave", "respond", "enter", "switch",
        "enable", "activate", "turn",
    ),
    "new_instructions": (
        "new", "updated", "revised", "real", "actual", "true", "important", "additional",
        "override", "hidden", "secret", "urgent",
    ),
    "prompt_leak": (
        "reveal", "print", "output", "repeat", "show", "display", "tell", "write", "leak", "dump",
        "share", "disclose", "recite",
    ),
    "exfiltration": (
        "send", "post", "forward", "upload", "transmit", "email", "e-mail", "exfiltrate", "leak",
        "copy", "paste", "submit",
    ),
    "address": (
        "dear", "attention", "note", "message", "instruction", "hey", "hi", "hello", "if", "ai",
        "llm", "assistant", "chatbot", "agent", "gpt", "claude", "gemini", "copilot",
    ),
    "imperative": ("you", "make", "be", "always", "never", "do", "instead"),
}  # fmt: skip
"""How every match of each word-led phrase pattern starts: one of these, at a word start.

One pass of :data:`_HEAD` finds those places for every rule at once, and a
rule's pattern is tried only there (``match`` at that offset), which gives the
matches a ``finditer`` over the whole text would, at a fraction of the cost.
``system_line`` (anchored at line starts) and ``chat_markup`` (literal-led)
are cheap enough to scan whole.
"""


_Trie = dict[str, "_Trie"]


def _trie(words: Iterable[str]) -> str:
    """Return a pattern for any of ``words`` (the longest one at a place), each at a word start.

    Written as a trie (``a(?:ct(?:ivate)?|i)|b(?:e)...``) so that at each place
    the engine compares one letter per level instead of trying every word, and
    with the word-start check after the first letter so it can skip ahead to
    the places that start with one of the first letters.
    """
    tree: _Trie = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def below(node: _Trie) -> str:
        branches = [re.escape(char) + below(node[char]) for char in sorted(node) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return "|".join(re.escape(char) + r"(?<!\w(?s:.))" + below(tree[char]) for char in sorted(tree))


_WORDS: Final = frozenset(word for words in _HEAD_WORDS.values() for word in words)
_HEAD_SOURCE: Final = _trie(_WORDS)
_HEAD: Final = re.compile(_HEAD_SOURCE)
"""Where a word-led phrase can start: the longest head word there, at a word start."""
_HEAD_ANY_CASE: Final = re.compile(_HEAD_SOURCE, re.IGNORECASE)
_RULES_AT: Final[dict[str, tuple[str, ...]]] = {
    word: tuple(
        rule for rule, words in _HEAD_WORDS.items() if any(word.startswith(head) for head in words)
    )
    for word in _WORDS
}
"""For each head word, the rules that may match where it is (theirs, or a prefix of it)."""

_LOWER: Final[dict[str, re.Pattern[str]]] = {
    name: re.compile(source.lower()) for name, source in _SOURCES.items()
}
"""The phrase patterns for a lower-cased view: no IGNORECASE, so the engine can skip ahead."""
_ANY_CASE: Final[dict[str, re.Pattern[str]]] = {
    name: re.compile(source, re.IGNORECASE) for name, source in _SOURCES.items()
}
"""The same for the rare view that lower-casing would lengthen (``İ``)."""

# -- hidden text ----------------------------------------------------------------------------

_INVISIBLE: Final = re.compile(
    "[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]+"
)
"""Characters the phrase rules' view drops: zero-width, soft hyphen, direction marks, tags."""
_ZERO_WIDTH: Final = re.compile("[\u180e\u200b-\u200d\u2060-\u2064\ufeff]++")
_TAGS: Final = re.compile("[\U000e0000-\U000e007f]++")
_BIDI: Final = re.compile("[\u202a-\u202e\u2066-\u2069]++")
_OVERRIDES: Final = frozenset("\u202d\u202e")
_RTL: Final = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")
_BLACK_FLAG: Final = "\U0001f3f4"
_CANCEL_TAG: Final = "\U000e007f"

_CONFUSABLES: Final = (
    "\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u0261\u0410\u0415"
    "\u041e\u0420\u0421\u0425\u0406\u0408\u0405\u0412\u041c\u041d\u0422\u041a"
)
_LOOK_ALIKES: Final = str.maketrans(
    {
        **{chr(code): chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)},
        **dict(zip(_CONFUSABLES, "aeopcyxijsdgAEOPCXIJSBMHTK", strict=True)),
    }
)
"""Full-width ASCII and Cyrillic letters that look Latin, folded for the phrase rules."""
_LOOK_ALIKE: Final = re.compile(f"[\uff01-\uff5e{_CONFUSABLES}]")
"""Finds one of them: ``str.translate`` is slow, so it runs only on a text that has some."""

_OPEN_TAG: Final = re.compile(r"<([a-zA-Z][a-zA-Z0-9]{0,15}+)(\s[^<>]{0,2000}+)>")
_HIDING: Final = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0+(?:\.0+)?(?:px|pt|em|rem|%)?"
    r"\s*(?:;|\"|'|$)|opacity\s*:\s*0+(?:\.0+)?\s*(?:;|\"|'|$)"
    r"|(?<![\w-])color\s*:\s*(?:#fff\b|#ffffff\b|white\b|rgb\(\s*255\s*,\s*255\s*,\s*255\s*\))"
    r"|(?:^|\s)(?:hidden|aria-hidden\s*=\s*[\"']?true)(?=[\s=/]|$)"
    r"|(?:left|text-indent)\s*:\s*-\d{3,}",
    re.IGNORECASE,
)
_BASE64: Final = re.compile(
    r"[A-Za-z0-9+/_\-](?<![A-Za-z0-9+/_\-](?s:.))[A-Za-z0-9+/_\-]{23,}+={0,2}+(?![A-Za-z0-9+/=_\-])"
)
_URLSAFE: Final = str.maketrans("-_", "+/")

PATTERNS: Final[dict[str, re.Pattern[str]]] = {
    **{f"phrase_{name}": pattern for name, pattern in _LOWER.items()},
    **{f"phrase_{name}_any_case": pattern for name, pattern in _ANY_CASE.items()},
    "head": _HEAD,
    "head_any_case": _HEAD_ANY_CASE,
    "invisible": _INVISIBLE,
    "look_alike": _LOOK_ALIKE,
    "zero_width": _ZERO_WIDTH,
    "tags": _TAGS,
    "bidi": _BIDI,
    "open_tag": _OPEN_TAG,
    "hiding": _HIDING,
    "base64": _BASE64,
}
"""Every pattern the detector runs, by name (tests feed each an adversarial 1 MB string)."""


class InjectionDetector(TextGuardrail):
    """Heuristics for prompt injection in tool output; each finding names the rule that fired.

    ``rules`` chooses among :data:`INJECTION_RULES` (all by default).
    ``action="redact"`` (the default) neutralises what fired: a phrase,
    comment, hidden element or blob is replaced with ``replacement``
    (``{rule}`` is the rule's name) and invisible characters are removed;
    ``"flag"`` only reports, ``"block"`` refuses the value. As a hook it
    looks at tool results by default (``on``). These are heuristics: the
    measured precision and recall, and what they miss, are in
    docs/guardrails.md.
    """

    __slots__ = ("_html", "_phrases", "_rules", "_template")

    def __init__(
        self,
        rules: str | Iterable[str] | None = None,
        *,
        action: GuardrailAction = "redact",
        replacement: str = "[removed: {rule}]",
        on: GuardrailTarget | Iterable[GuardrailTarget] = ("results",),
        name: str = "injection",
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__(name, action, on, max_depth)
        self._rules = _checked_rules(rules)
        self._template = checked_template("replacement", replacement, rule="role_play")
        self._phrases = tuple(rule for rule in _PHRASE_RULES if rule in self._rules)
        self._html = "html_comment" in self._rules or "hidden_html" in self._rules

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules this detector runs, in :data:`INJECTION_RULES` order."""
        return self._rules

    def _scan(self, text: str, key: object) -> list[Hit]:
        hits: list[Hit] = []
        if not text.isascii():
            hits.extend(self._hidden_characters(text))
        if self._phrases:
            for rule, start, end in _phrase_matches(_View(text), self._phrases):
                hits.append(self._hit(rule, start, end, INJECTION_RULES[rule]))
        if self._html and "<" in text:
            hits.extend(self._hidden_html(text))
        if "base64" in self._rules:
            hits.extend(self._base64(text))
        return sorted(hits, key=lambda h: (h.start, h.end))

    def _replacement(self, rule: str) -> str:
        return self._template.format(rule=rule)

    def _hit(
        self, rule: str, start: int, end: int, reason: str, replacement: str | None = None
    ) -> Hit:
        full = f"{self._name}.{rule}"
        text = self._template.format(rule=full) if replacement is None else replacement
        return Hit(full, start, end, reason, text)

    def _hidden_characters(self, text: str) -> Iterator[Hit]:
        rules = self._rules
        if "zero_width" in rules:
            for match in _ZERO_WIDTH.finditer(text):
                start, end = match.span()
                if end - start >= 2 or _inside_word(text, start, end):
                    reason = f"{end - start} zero-width character(s) inside a word or in a row"
                    yield self._hit("zero_width", start, end, reason, "")
        if "unicode_tags" in rules:
            for match in _TAGS.finditer(text):
                start, end = match.span()
                if _flag_sequence(text, start, end):
                    continue
                decoded = "".join(chr(ord(char) - 0xE0000) for char in match.group())
                said = " that read as an instruction" if _instruction_like(decoded) else ""
                reason = f"{end - start} invisible Unicode tag character(s){said}"
                yield self._hit("unicode_tags", start, end, reason, "")
        if "bidi_control" in rules:
            rtl = None
            for match in _BIDI.finditer(text):
                if not _OVERRIDES.intersection(match.group()):
                    if rtl is None:
                        rtl = _RTL.search(text) is not None
                    if rtl:
                        continue
                start, end = match.span()
                reason = f"{end - start} bidirectional control character(s)"
                yield self._hit("bidi_control", start, end, reason, "")

    def _hidden_html(self, text: str) -> Iterator[Hit]:
        if "html_comment" in self._rules:
            yield from self._comments(text)
        if "hidden_html" in self._rules:
            yield from self._hidden_elements(text)

    def _comments(self, text: str) -> Iterator[Hit]:
        position = 0
        while (start := text.find("<!--", position)) != -1:
            limit = min(len(text), start + 4 + MAX_HIDDEN_CHARS)
            close = text.find("-->", start + 4, limit)
            end = limit if close == -1 else close + 3
            if _instruction_like(text[start + 4 : end]):
                yield self._hit("html_comment", start, end, INJECTION_RULES["html_comment"])
            position = end

    def _hidden_elements(self, text: str) -> Iterator[Hit]:
        position = 0
        while (match := _OPEN_TAG.search(text, position)) is not None:
            position = match.end()
            if not _HIDING.search(match.group(2)):
                continue
            tag = match.group(1)
            limit = min(len(text), position + MAX_HIDDEN_CHARS)
            closer = re.compile(rf"</{re.escape(tag)}\s*>", re.IGNORECASE)
            close = closer.search(text, position, limit)
            end = limit if close is None else close.end()
            content = text[position : end if close is None else close.start()]
            if _instruction_like(_TAG_STRIP.sub(" ", content)):
                yield self._hit("hidden_html", match.start(), end, INJECTION_RULES["hidden_html"])
            position = end

    def _base64(self, text: str) -> Iterator[Hit]:
        budget = MAX_BASE64_CHARS
        for match in _BASE64.finditer(text):
            blob = match.group()
            if len(blob) > _MAX_BLOB or blob.islower() or blob.isupper():
                continue
            budget -= len(blob)
            if budget < 0:
                return
            decoded = _decoded(blob)
            if decoded is not None and _instruction_like(decoded):
                yield self._hit("base64", match.start(), match.end(), INJECTION_RULES["base64"])


class _View:
    """The text the phrase rules read, and how to map its offsets back to the original."""

    __slots__ = ("_kept", "_starts", "lowered", "text")

    def __init__(self, text: str) -> None:
        self._kept: list[tuple[int, int]] | None = None
        self._starts: list[int] = []
        self.lowered = True
        if text.isascii():
            self.text = text.lower()
            return
        folded = text  # folding maps one character to one: offsets unchanged
        if _LOOK_ALIKE.search(text) is not None:
            folded = text.translate(_LOOK_ALIKES)
        if _INVISIBLE.search(folded) is None:
            self.text = self._lower(folded)
            return
        kept: list[tuple[int, int]] = []
        position = 0
        for match in _INVISIBLE.finditer(folded):
            if match.start() > position:
                kept.append((position, match.start()))
            position = match.end()
        if position < len(folded):
            kept.append((position, len(folded)))
        self._kept = kept
        at = 0
        for start, end in kept:
            self._starts.append(at)
            at += end - start
        self.text = self._lower("".join(folded[start:end] for start, end in kept))

    def _lower(self, text: str) -> str:
        """``text`` lower-cased if that keeps every offset (else as is, read case-insensitively)."""
        lowered = text.lower()
        if len(lowered) == len(text):  # lower-casing never shortens: same length, same offsets
            return lowered
        self.lowered = False
        return text

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Return the original offsets of ``self.text[start:end]`` (a non-empty span)."""
        if self._kept is None:
            return start, end
        return self._original(start), self._original(end - 1) + 1

    def _original(self, index: int) -> int:
        piece = bisect_right(self._starts, index) - 1
        return self._kept[piece][0] + index - self._starts[piece]  # type: ignore[index]


_TAG_STRIP: Final = re.compile(r"<[^<>]{0,2000}+>")


def _instruction_like(text: str) -> bool:
    """Whether hidden or decoded text reads as an instruction to a model."""
    return next(_phrase_matches(_View(text), _INSTRUCTION_RULES), None) is not None


_INSTRUCTION_RULES: Final = (*_PHRASE_RULES, "address", "imperative")


def _phrase_matches(view: _View, rules: tuple[str, ...]) -> Iterator[tuple[str, int, int]]:
    """Return each match of each rule's phrase pattern in the view, as ``finditer`` finds them.

    Yields the rule and the match's span in the original text (mapped back
    through the view).
    """
    text = view.text
    patterns = _LOWER if view.lowered else _ANY_CASE
    for rule in rules:
        if rule not in _HEAD_WORDS:
            for whole in patterns[rule].finditer(text):
                yield rule, *view.span(*whole.span())
    after = {rule: 0 for rule in rules if rule in _HEAD_WORDS}
    if not after:
        return
    head = _HEAD if view.lowered else _HEAD_ANY_CASE
    for found in head.finditer(text):
        start = found.start()
        for rule in _RULES_AT.get(found.group().casefold(), tuple(after)):
            if start < after.get(rule, len(text) + 1):
                continue
            match = patterns[rule].match(text, start)
            if match is not None:
                after[rule] = match.end()
                yield rule, *view.span(*match.span())


def _inside_word(text: str, start: int, end: int) -> bool:
    """Whether the characters at ``[start, end)`` sit between two ASCII letters or digits."""
    return (
        start > 0
        and end < len(text)
        and text[start - 1].isascii()
        and text[start - 1].isalnum()
        and text[end].isascii()
        and text[end].isalnum()
    )


def _flag_sequence(text: str, start: int, end: int) -> bool:
    """Whether tag characters at ``[start, end)`` spell a flag emoji (🏴 + tags + cancel tag)."""
    return (
        start > 0
        and text[start - 1] == _BLACK_FLAG
        and text[end - 1] == _CANCEL_TAG
        and end - start <= 8
    )


def _decoded(blob: str) -> str | None:
    """Return the text a base64 blob decodes to, if it is mostly printable UTF-8."""
    data = blob.rstrip("=").translate(_URLSAFE)
    if len(data) % 4 == 1:
        return None
    try:
        raw = binascii.a2b_base64(data + "=" * (-len(data) % 4), strict_mode=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    printable = sum(1 for char in decoded if char.isprintable() or char in "\n\r\t")
    return decoded if decoded and printable >= 0.95 * len(decoded) else None


def _checked_rules(rules: str | Iterable[str] | None) -> tuple[str, ...]:
    if rules is None:
        return tuple(INJECTION_RULES)
    if isinstance(rules, str):
        rules = (rules,)
    try:
        given = set(rules)
    except TypeError:
        raise InvalidValueError(
            f"rules must be a collection of rule names, got {rules!r}"
        ) from None
    unknown = sorted(str(rule) for rule in given if rule not in INJECTION_RULES)
    if unknown:
        raise InvalidValueError(
            f"unknown injection rule(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(INJECTION_RULES)}"
        )
    if not given:
        raise InvalidValueError(f"rules must name at least one of {', '.join(INJECTION_RULES)}")
    return tuple(rule for rule in INJECTION_RULES if rule in given)
