"""Rules on a tool call's arguments: ``shell(npm run *)``, ``fs.write(path:src/**)``.

Private to :mod:`~techrevati.runtime.permissions`. An entry of a role's
``allowed_tools``, ``ask_tools`` or ``denied_tools`` may carry a pattern in
parentheses after the tool name: over one named argument (``path:src/**``)
or, with no name, over the whole call (the one argument of a
single-argument tool). How the value is read depends on the argument's kind,
told by its name:

- **paths** (``path``, ``file``, ``dir``, ``cwd``, ``*_path``, ...) are made
  absolute against the policy's workspace and resolved (``..`` and
  symlinks), then matched relative to it; ``*`` stays in one segment, ``**``
  crosses them. A pattern starting with ``/`` is matched against the
  absolute path.
- **URLs** (``url``, ``uri``, ``endpoint``, ``*_url``, or a value with
  ``://``) are split and rebuilt (scheme and host lowercased, default port
  dropped, ``.``/``..`` segments and percent-escapes of the path decoded);
  one with user info (``user@host``), a percent-escape in the host or a
  non-ASCII host is never matched. ``*`` matches anything after the literal.
- **commands** (``command``, ``cmd``, ``script``, and the whole call given as
  a str) are split into words like a POSIX shell does; one holding a shell
  operator, substitution or redirection (``;``, ``&``, ``|``, ``$(``,
  backquote, ``>``, ``<``, a newline) is never matched. Each pattern word is
  a glob over one word; a last ``*`` matches one or more remaining words.
- anything else is matched as text with a glob (a control character makes
  it unreadable); a pattern over the whole call reads a text argument as a
  command.

A value that cannot be read for its kind (not a str, a bad path or URL) is
*unreadable*: a deny rule that needs it denies, and an allow rule does not
match. :func:`read_rule` parses an entry; :meth:`ArgRule.test` says whether
a call matches and why not.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shlex
import urllib.parse
from collections.abc import Mapping
from typing import Final, Literal

__all__ = ["ArgRule", "Outcome", "Workspace", "argument_kind", "read_rule"]

Kind = Literal["path", "url", "command", "text"]
Outcome = tuple[Literal["match", "no_match", "unreadable"], str]
"""What testing a rule gives: the verdict and a sentence saying why."""

_PATH_NAMES: Final = frozenset(
    {"path", "file", "filename", "filepath", "dir", "directory", "cwd", "folder", "dest", "src"}
)
_URL_NAMES: Final = frozenset({"url", "uri", "endpoint", "href", "link"})
_COMMAND_NAMES: Final = frozenset({"command", "cmd", "script", "commandline", "shell"})
_ARG_NAME: Final = re.compile(r"[a-z_][a-z0-9_]*")
_SHELL_OPERATORS: Final = (";", "&", "|", "$(", "${", "`", ">", "<", "\n", "\r")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def argument_kind(name: str) -> Kind:
    """Return how an argument called ``name`` is read (by its name alone), remembered."""
    kind = _KINDS.get(name)
    if kind is None:
        kind = _kind_of(name)
        if len(_KINDS) < 4096:
            _KINDS[name] = kind
    return kind


_KINDS: dict[str, Kind] = {}


def _kind_of(name: str) -> Kind:
    if name in _PATH_NAMES or name.endswith(("_path", "_file", "_dir", "_directory")):
        return "path"
    if name in _URL_NAMES or name.endswith(("_url", "_uri")):
        return "url"
    if name in _COMMAND_NAMES or name.endswith("_command"):
        return "command"
    return "text"


class Workspace:
    """The directory path arguments are resolved against (None: paths stay as given)."""

    __slots__ = ("_prefix", "root")

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = None if root is None else os.path.realpath(root)
        """The workspace, resolved (symlinks followed), or None."""
        self._prefix = "" if self.root is None else self.root.rstrip("/") + "/"

    def resolve(self, value: str) -> tuple[str, bool] | str:
        """Return (the resolved path as text, inside the workspace?), or why it is unreadable.

        Inside, the text is relative to the workspace (``"."`` for the root
        itself); outside, absolute.
        """
        if "\x00" in value or not value:
            return "it is empty or holds a NUL" if not value else "it holds a NUL"
        root = self.root
        if root is None:
            normal = posixpath.normpath(value)
            if normal.startswith("//"):  # POSIX keeps a leading "//"; the kernel does not
                normal = "/" + normal.lstrip("/")
            if normal == ".." or normal.startswith("../"):
                return f"{value!r} climbs above where it starts"
            return normal, not normal.startswith("/")
        full = os.path.realpath(os.path.join(root, value))  # an absolute value replaces root
        if full == root:
            return ".", True
        if full.startswith(self._prefix):
            return full[len(self._prefix) :], True
        return full, False


class ArgRule:
    """One entry's argument pattern: which argument, read how, matched against what.

    The pattern is read once (its words, its canonical URL, its compiled
    glob); a call's value is read once per call, however many rules look at
    it, through the ``memo`` the caller passes to :meth:`test`.
    """

    __slots__ = ("_glob", "_url", "_words", "argument", "entry", "pattern", "tool")

    def __init__(self, entry: str, tool: str, argument: str | None, pattern: str) -> None:
        self.entry = entry
        """The entry as normalised, e.g. ``fs.write(path:src/**)``."""
        self.tool = tool
        """The tool name or glob before the parentheses."""
        self.argument = argument
        """The argument the pattern is over (None: the whole call)."""
        self.pattern = pattern
        self._words: list[str] | None = None
        self._url: re.Pattern[str] | None = None
        self._glob: re.Pattern[str] | None = None

    @property
    def is_literal(self) -> bool:
        """Whether the pattern names one value exactly (no wildcard)."""
        return not any(char in self.pattern for char in "*?[")

    def test(
        self,
        args: object,
        workspace: Workspace,
        memo: dict[tuple[str, str], object] | None = None,
        *,
        explain: bool = True,
    ) -> Outcome:
        """Say whether a call with ``args`` (a mapping, or the call as a str) matches.

        ``memo`` keeps what reading a value gave, for the other rules of the
        same call; ``explain=False`` leaves a non-match's sentence empty.
        """
        found = self._value(args)
        if isinstance(found, str):
            return "unreadable", found
        name, value = found
        kind: Kind = argument_kind(name) if name else "command"
        if kind == "text" and "://" in value:
            kind = "url"
        elif kind == "text" and self.argument is None:
            kind = "command"  # the whole call of a one-argument tool: read like a shell would
        if memo is None:
            memo = {}
        if kind == "path":
            return self._test_path(value, workspace, memo, explain)
        if kind == "url":
            return self._test_url(value, memo, explain)
        if kind == "command":
            return self._test_command(value, memo, explain)
        if _CONTROL.search(value):
            return "unreadable", f"argument {name!r} holds a control character"
        glob = self._glob
        if glob is None:
            glob = self._glob = re.compile(fnmatch.translate(self.pattern), re.DOTALL)
        if glob.match(value):
            return "match", f"{value!r} matches {self.pattern!r}"
        return "no_match", f"pattern {self.pattern!r} did not match {value!r}" if explain else ""

    def _value(self, args: object) -> tuple[str, str] | str:
        """Return (argument name, its value), or why the call cannot be read for this rule."""
        if isinstance(args, str):
            if self.argument is None:
                return "", args
            return f"the call gives no argument {self.argument!r}"
        if args is None:
            return "the call's arguments were not given"
        if not isinstance(args, Mapping):
            return f"the call's arguments are a {type(args).__name__}, not a mapping"
        if self.argument is None:
            if len(args) != 1:
                return f"the pattern is over the whole call, which has {len(args)} arguments"
            ((name, value),) = args.items()
        else:
            if self.argument not in args:
                return f"the call gives no argument {self.argument!r}"
            name, value = self.argument, args[self.argument]
        if type(value) is not str:
            return f"argument {name!r} is a {type(value).__name__}, not a str"
        return str(name), value

    def _test_path(
        self, value: str, workspace: Workspace, memo: dict[tuple[str, str], object], explain: bool
    ) -> Outcome:
        key = ("path", value)
        resolved = memo.get(key)
        if resolved is None:
            resolved = memo[key] = workspace.resolve(value)
        if isinstance(resolved, str):
            return "unreadable", f"path {value!r} cannot be read: {resolved}"
        text = resolved[0]  # type: ignore[index]
        pattern = self.pattern
        if _path_glob(pattern).fullmatch(text):
            return "match", f"path {value!r} (as {text!r}) matches {pattern!r}"
        if not explain:
            return "no_match", ""
        return "no_match", f"pattern {pattern!r} did not match path {value!r} (as {text!r})"

    def _test_url(self, value: str, memo: dict[tuple[str, str], object], explain: bool) -> Outcome:
        key = ("url", value)
        url = memo.get(key)
        if url is None:
            url = memo[key] = canonical_url(value)
        assert isinstance(url, str)
        if url.startswith("!"):
            return "unreadable", f"URL {value!r} {url[1:]}"
        pattern = self._url
        if pattern is None:
            text = canonical_url(self.pattern, pattern=True).lstrip("!")
            pattern = self._url = re.compile(fnmatch.translate(text), re.DOTALL)
        if pattern.match(url):
            return "match", f"URL {value!r} (as {url!r}) matches {self.pattern!r}"
        if not explain:
            return "no_match", ""
        return "no_match", f"pattern {self.pattern!r} did not match URL {value!r} (as {url!r})"

    def _test_command(
        self, value: str, memo: dict[tuple[str, str], object], explain: bool
    ) -> Outcome:
        key = ("command", value)
        words = memo.get(key)
        if words is None:
            words = memo[key] = _command_words(value)
        if isinstance(words, str):
            return "unreadable", f"command {value!r} {words}"
        assert isinstance(words, list)
        pattern = self._words
        if pattern is None:
            parsed = _command_words(self.pattern)
            pattern = self._words = [] if isinstance(parsed, str) else parsed
        if _words_match(pattern, words):
            return "match", f"command {value!r} matches {self.pattern!r}"
        if not explain:
            return "no_match", ""
        return (
            "no_match",
            f"pattern {self.pattern!r} did not match command {value!r} (words {words})",
        )


def read_rule(tool: str, spec: str) -> ArgRule:
    """Parse the ``(...)`` part of an entry for ``tool`` (normalised); ValueError if malformed.

    The pattern keeps its case and spacing: arguments are compared as given.
    """
    spec = spec.strip()
    if not (spec.startswith("(") and spec.endswith(")")):
        raise ValueError(f"the argument pattern {spec!r} must be one '(...)' after the tool name")
    inner = spec[1:-1]
    argument: str | None = None
    head, colon, rest = inner.partition(":")
    if colon and _ARG_NAME.fullmatch(head) and not rest.startswith("//"):
        argument, inner = head, rest
    if not inner:
        raise ValueError(f"the argument pattern {spec!r} is empty")
    return ArgRule(f"{tool}{spec}", tool, argument, inner)


def canonical_url(value: str, *, pattern: bool = False) -> str:
    """Return a URL rebuilt in one spelling, or ``"!"`` and why it cannot be read."""
    if _CONTROL.search(value) or " " in value:
        return "!holds a control character or a space"
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError as exc:
        return f"!cannot be split: {exc}"
    if not parts.scheme or not parts.netloc:
        return "!has no scheme or no host"
    if "@" in parts.netloc:
        return "!holds user info before the host ('@')"
    host = parts.hostname or ""
    if not host or not host.isascii() or "%" in parts.netloc:
        return "!has an empty, non-ASCII or percent-encoded host"
    try:
        port = parts.port
    except ValueError:
        return "!has a malformed port"
    scheme = parts.scheme.lower()
    netloc = host.lower()
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    path = parts.path
    if not pattern:
        if "%2f" in path.lower() or "%5c" in path.lower():
            return "!encodes a slash in its path"
        path = urllib.parse.unquote(path)
        if path:
            path = posixpath.normpath(path) + ("/" if path.endswith("/") and path != "/" else "")
            if path.startswith("//"):
                path = "/" + path.lstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{path or '/'}{query}"


def _command_words(value: str) -> list[str] | str:
    """Split a command into words, or say why it is refused."""
    operator = next((op for op in _SHELL_OPERATORS if op in value), None)
    if operator is not None:
        return f"holds the shell operator {operator!r}"
    if _CONTROL.search(value.replace("\t", " ")):
        return "holds a control character"
    if not any(char in value for char in "'\"\\"):
        return value.split()
    try:
        return shlex.split(value)
    except ValueError as exc:
        return f"cannot be split into words: {exc}"


def _words_match(pattern: list[str], words: list[str]) -> bool:
    """Whether command words match pattern words (each a glob; a last ``*`` takes the rest)."""
    if pattern and pattern[-1] == "*":
        head = pattern[:-1]
        if len(words) <= len(head):
            return False
    elif len(words) != len(pattern):
        return False
    else:
        head = pattern
    return all(
        glob == word or (_has_wildcard(glob) and fnmatch.fnmatchcase(word, glob))
        for glob, word in zip(head, words, strict=False)
    )


def _has_wildcard(word: str) -> bool:
    return "*" in word or "?" in word or "[" in word


_PATH_GLOBS: dict[str, re.Pattern[str]] = {}


def _path_glob(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: ``*`` and ``?`` stay in one segment, ``**`` crosses them."""
    compiled = _PATH_GLOBS.get(pattern)
    if compiled is None:
        out: list[str] = []
        index = 0
        while index < len(pattern):
            char = pattern[index]
            if pattern.startswith("**/", index):
                out.append("(?:[^/]*/)*")
                index += 3
                continue
            if pattern.startswith("**", index):
                out.append(".*")
                index += 2
                continue
            out.append("[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char))
            index += 1
        compiled = re.compile("".join(out), re.DOTALL)
        if len(_PATH_GLOBS) < 4096:
            _PATH_GLOBS[pattern] = compiled
    return compiled
