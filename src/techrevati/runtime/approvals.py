"""Approval tokens: a human's "yes, this once" for one tool call, kept, checked and counted.

Reach for :class:`ApprovalLedger` when a tool call needs someone's approval
and the agent must be able to wait for it, pause, and present it later. An
:class:`ApprovalToken` is plain data: it approves one role calling one tool,
for the exact arguments of one call (:func:`arguments_digest` of their
canonical JSON, :func:`canonical_arguments`), for arguments an opaque
pattern accepts (matched by a function the caller gives), or for any
arguments; until ``expires_at``, at most ``max_uses`` times, granted by
someone named. The ledger :meth:`~ApprovalLedger.grant`-s tokens,
:meth:`~ApprovalLedger.verify`-es them without using them,
:meth:`~ApprovalLedger.consume`-s one use atomically (threads of one process
never get more than ``max_uses`` acceptances between them),
:meth:`~ApprovalLedger.revoke`-s them and records each use. A refusal is a
:class:`TokenVerdict` with the reason, never an exception: an unknown token,
a token whose fields differ from the granted one, a revoked, expired or used
up token, another role, another tool, other arguments.

Given a file (``ApprovalLedger.open(path)``), the ledger appends every grant,
use and revocation to it as one JSON line, flushed and ``fsync``-ed before
the call returns, and :meth:`ApprovalLedger.load` rebuilds the state from it,
so a paused agent resumed in another process presents the same token and its
uses are counted across the processes that run one after another. Several
processes writing one file *at the same time* are not coordinated: each only
knows what it loaded plus what it wrote itself.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from techrevati.runtime._clock import WallClock, utc_now
from techrevati.runtime._validate import non_empty_str, optional_int_at_least
from techrevati.runtime.errors import InvalidValueError, SinkWriteError
from techrevati.runtime.permissions import normalize_permission_name

__all__ = [
    "LOG_FORMAT_VERSION",
    "MAX_ARGUMENT_DEPTH",
    "ApprovalLedger",
    "ApprovalLogWarning",
    "ApprovalToken",
    "ArgumentMatcher",
    "TokenRevocation",
    "TokenUse",
    "TokenVerdict",
    "arguments_digest",
    "canonical_arguments",
]

ArgumentMatcher = Callable[[str, Mapping[str, object]], bool]
"""``matcher(pattern, args) -> bool``: does a token's ``argument_pattern`` accept ``args``?"""

MAX_ARGUMENT_DEPTH: Final = 64
"""How deeply call arguments may nest (lists and dicts) before they are refused."""

LOG_FORMAT_VERSION: Final = 1
"""The ``"v"`` of every line an :class:`ApprovalLedger` writes; other versions are refused."""

_TOKEN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")
_MAX_SHOWN_CHARS: Final = 80
_SHOWN_ID_CHARS: Final = 12


class ApprovalLogWarning(UserWarning):
    """An approval log line that could not be read (cut by a crash) was skipped."""


# -- canonical arguments --------------------------------------------------------


def canonical_arguments(args: Mapping[str, object] | None) -> str:
    """Return the canonical JSON text of a call's arguments.

    Keys sorted, no whitespace, non-ASCII escaped (``ensure_ascii``), so two
    mappings with the same content give the same text whatever their key
    order. Only JSON data is accepted: ``str``, ``int``, finite ``float``,
    ``bool``, ``None``, ``list`` / ``tuple`` (both become a JSON array) and
    mappings with ``str`` keys, nested at most :data:`MAX_ARGUMENT_DEPTH`
    deep. ``1``, ``1.0`` and ``True`` are three different values. ``None``
    is the same as ``{}`` (a call without arguments). Anything else raises
    :class:`~techrevati.runtime.errors.InvalidValueError` naming the value and
    where it is (``args['paths'][2]``).
    """
    if args is None:
        return "{}"
    if not isinstance(args, Mapping):
        raise InvalidValueError(
            f"args must be a mapping of argument names to JSON data or None, got {_show(args)}"
        )
    plain = _plain(args, "args", 0, set())
    text: str = _json().dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text


def arguments_digest(args: Mapping[str, object] | None) -> str:
    """Return the SHA-256 hex digest of :func:`canonical_arguments` of ``args``."""
    return hashlib.sha256(canonical_arguments(args).encode("ascii")).hexdigest()


def _plain(value: object, path: str, depth: int, seen: set[int]) -> object:
    """Return ``value`` as plain JSON data (tuples as lists, str subclasses as str)."""
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"{path} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, list | tuple | Mapping):
        if depth >= MAX_ARGUMENT_DEPTH:
            raise InvalidValueError(
                f"{path} nests deeper than {MAX_ARGUMENT_DEPTH} levels of lists and dicts"
            )
        if id(value) in seen:
            raise InvalidValueError(f"{path} contains itself (a cycle)")
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                out: dict[str, object] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise InvalidValueError(
                            f"{path} keys must be str, got {_show(key)} ({type(key).__name__})"
                        )
                    out[str.__str__(key)] = _plain(item, f"{path}[{key!r}]", depth + 1, seen)
                return out
            return [
                _plain(item, f"{path}[{index}]", depth + 1, seen)
                for index, item in enumerate(value)
            ]
        finally:
            seen.discard(id(value))
    raise InvalidValueError(
        f"{path} must be JSON data (str, int, finite float, bool, None, list, tuple or a "
        f"mapping with str keys), got {type(value).__name__} {_show(value)}"
    )


# -- the data -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalToken:
    """One approval: ``role`` may call ``tool`` with these arguments, until, how often, by whom.

    The arguments are scoped by at most one of ``arguments_digest`` (the
    :func:`arguments_digest` of the exact call approved) and
    ``argument_pattern`` (an opaque string, accepted or not by the matcher
    given to :meth:`ApprovalLedger.verify`; without a matcher it is refused).
    With neither, any arguments of that tool are approved. ``role`` and
    ``tool`` are kept as given and compared after
    :func:`~techrevati.runtime.permissions.normalize_permission_name`.
    ``expires_at`` (``None``: never) and ``granted_at`` must be
    timezone-aware and are stored in UTC; the token is expired from the
    instant ``expires_at`` on. ``max_uses`` is ``None`` (unlimited) or >= 1.
    ``token_id`` defaults to 128 random bits in hex: whoever knows it can
    present the token, so keep it like a password.
    """

    role: str
    tool: str
    granted_by: str
    token_id: str = field(default_factory=lambda: secrets.token_hex(16))
    arguments_digest: str | None = None
    argument_pattern: str | None = None
    expires_at: datetime | None = None
    max_uses: int | None = None
    granted_at: datetime = field(default_factory=utc_now)
    reason: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.token_id, str) or _TOKEN_ID.fullmatch(self.token_id) is None:
            raise InvalidValueError(
                "token_id must be 1 to 128 letters, digits, '_', '.', ':' or '-' starting with"
                f" a letter or digit, got {_show(self.token_id)}"
            )
        _name("role", self.role)
        _name("tool", self.tool)
        non_empty_str("granted_by", self.granted_by)
        if self.arguments_digest is not None and (
            not isinstance(self.arguments_digest, str)
            or _DIGEST.fullmatch(self.arguments_digest) is None
        ):
            raise InvalidValueError(
                "arguments_digest must be None or 64 lowercase hex digits (arguments_digest(args)),"
                f" got {_show(self.arguments_digest)}"
            )
        if self.argument_pattern is not None:
            non_empty_str("argument_pattern", self.argument_pattern)
            if self.arguments_digest is not None:
                raise InvalidValueError(
                    "give at most one of arguments_digest (an exact call) and argument_pattern,"
                    " not both"
                )
        if self.expires_at is not None:
            object.__setattr__(self, "expires_at", _aware_utc("expires_at", self.expires_at))
        object.__setattr__(self, "granted_at", _aware_utc("granted_at", self.granted_at))
        optional_int_at_least("max_uses", self.max_uses, 1)
        if not isinstance(self.reason, str):
            raise InvalidValueError(f"reason must be a str, got {_show(self.reason)}")

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (times as ISO 8601 UTC text) that :meth:`from_dict` reads."""
        return {
            "token_id": self.token_id,
            "role": self.role,
            "tool": self.tool,
            "arguments_digest": self.arguments_digest,
            "argument_pattern": self.argument_pattern,
            "expires_at": None if self.expires_at is None else _iso(self.expires_at),
            "max_uses": self.max_uses,
            "granted_by": self.granted_by,
            "granted_at": _iso(self.granted_at),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ApprovalToken:
        """Rebuild a token from :meth:`to_dict`'s output, strictly.

        ``token_id``, ``role``, ``tool``, ``granted_by`` and ``granted_at`` are
        required; the rest default as in the constructor. An unknown key, a
        missing one or a value of the wrong type raises
        :class:`~techrevati.runtime.errors.InvalidValueError` naming it.
        """
        if not isinstance(data, Mapping):
            raise InvalidValueError(f"an approval token must be a mapping, got {_show(data)}")
        _check_keys("approval token", data, _TOKEN_FIELDS, _TOKEN_REQUIRED)
        expires_at = data.get("expires_at")
        max_uses = data.get("max_uses")
        if max_uses is not None and (not isinstance(max_uses, int) or isinstance(max_uses, bool)):
            raise InvalidValueError(f"max_uses must be an int or None, got {_show(max_uses)}")
        return cls(
            token_id=_text(data, "token_id"),
            role=_text(data, "role"),
            tool=_text(data, "tool"),
            arguments_digest=_text_or_none(data, "arguments_digest"),
            argument_pattern=_text_or_none(data, "argument_pattern"),
            expires_at=None if expires_at is None else _parse_time("expires_at", expires_at),
            max_uses=max_uses,
            granted_by=_text(data, "granted_by"),
            granted_at=_parse_time("granted_at", data["granted_at"]),
            reason=_text(data, "reason") if "reason" in data else "",
        )


_TOKEN_FIELDS: Final = frozenset(f.name for f in fields(ApprovalToken))
_TOKEN_REQUIRED: Final = frozenset({"token_id", "role", "tool", "granted_by", "granted_at"})


@dataclass(frozen=True, slots=True)
class TokenUse:
    """One accepted use of a token: when, by which role, on which tool, with which arguments."""

    token_id: str
    at: datetime
    role: str
    tool: str
    arguments_digest: str

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (``at`` as ISO 8601 UTC text)."""
        return {
            "token_id": self.token_id,
            "at": _iso(self.at),
            "role": self.role,
            "tool": self.tool,
            "arguments_digest": self.arguments_digest,
        }


@dataclass(frozen=True, slots=True)
class TokenRevocation:
    """When a token was revoked, by whom, and why."""

    token_id: str
    at: datetime
    by: str
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (``at`` as ISO 8601 UTC text)."""
        return {
            "token_id": self.token_id,
            "at": _iso(self.at),
            "by": self.by,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class TokenVerdict:
    """The answer to presenting a token: accepted or not, and why.

    ``rule`` names the check that decided: ``"accepted"``, or one of
    ``"unknown_token"``, ``"tampered"``, ``"revoked"``, ``"expired"``,
    ``"wrong_role"``, ``"wrong_tool"``, ``"used_up"``, ``"no_matcher"``,
    ``"pattern_unmatched"``, ``"arguments_differ"`` (checked in that order).
    ``uses_left`` is ``None`` for an unlimited or unknown token; after a
    :meth:`~ApprovalLedger.consume` it counts the use just made. ``token``
    is the granted token (``None`` if unknown). The truth value is ``accepted``.
    """

    accepted: bool
    reason: str
    rule: str
    token_id: str
    uses_left: int | None
    token: ApprovalToken | None

    def __bool__(self) -> bool:
        return self.accepted


# -- the ledger -----------------------------------------------------------------


class ApprovalLedger:
    """The granted tokens, their uses and revocations; optionally kept in a JSON Lines file.

    ``clock`` returns the current time as an aware datetime (default
    ``datetime.now(UTC)``); inject one to test expiry. ``log`` is a file
    path: the records already in it are loaded (like :meth:`load`), and
    every grant, use and revocation from then on is appended to it as one
    line, flushed and ``fsync``-ed before the call returns; the state
    changes only once its line is written (a failed write raises
    :class:`~techrevati.runtime.errors.SinkWriteError` and changes nothing).
    The file is created with mode ``0o600``: it holds the token ids.

    Safe to share between threads: one lock guards the state, and a
    :meth:`consume` checks and counts under it, so at most ``max_uses``
    consumes are accepted whatever the number of threads. The clock and a
    matcher are called outside the lock. Processes that share one log file
    one after another see each other's records (each loads the file when it
    opens it); processes writing it at the same time are not coordinated.
    """

    def __init__(
        self,
        *,
        clock: WallClock | None = None,
        log: str | os.PathLike[str] | None = None,
    ) -> None:
        if clock is not None and not callable(clock):
            raise InvalidValueError(f"clock must be callable or None, got {_show(clock)}")
        self._clock: WallClock = utc_now if clock is None else clock
        self._lock = threading.Lock()
        self._tokens: dict[str, ApprovalToken] = {}
        self._uses: dict[str, list[TokenUse]] = {}
        self._revoked: dict[str, TokenRevocation] = {}
        self._log: Path | None = None
        if log is not None:
            if not isinstance(log, str | os.PathLike):
                raise InvalidValueError(f"log must be a path or None, got {_show(log)}")
            path = Path(log)
            if path.exists():
                self._replay(path)
            else:
                _create(path)
            self._log = path

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, clock: WallClock | None = None
    ) -> ApprovalLedger:
        """Return a ledger kept in the file ``path``: loaded if it exists, created if not."""
        return cls(clock=clock, log=path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, clock: WallClock | None = None
    ) -> ApprovalLedger:
        """Rebuild the ledger another process wrote to ``path``, and keep appending to it.

        The tokens, their uses and revocations come back as they were. A line
        that cannot be read as JSON (the last line cut by a crash) is skipped
        with an :class:`ApprovalLogWarning`, keeping every line around it; a
        readable line that is not a record of this format raises
        :class:`~techrevati.runtime.errors.InvalidValueError` naming the file
        and the line. A missing file raises it too (use :meth:`open` to create).
        """
        if not isinstance(path, str | os.PathLike) or not Path(path).is_file():
            raise InvalidValueError(f"no approval log at {path!r}")
        return cls(clock=clock, log=path)

    @property
    def log(self) -> Path | None:
        """The file the records are appended to, or ``None`` (in memory only)."""
        return self._log

    def grant(self, token: ApprovalToken) -> ApprovalToken:
        """Keep ``token`` (and log it); a token id granted before is refused."""
        if not isinstance(token, ApprovalToken):
            raise InvalidValueError(f"token must be an ApprovalToken, got {_show(token)}")
        with self._lock:
            if token.token_id in self._tokens:
                raise InvalidValueError(f"token {_token_name(token.token_id)} is already granted")
            self._write({"kind": "grant", "token": token.to_dict()})
            self._tokens[token.token_id] = token
            self._uses[token.token_id] = []
        return token

    def verify(
        self,
        token: ApprovalToken | str,
        role: str,
        tool: str,
        args: Mapping[str, object] | None = None,
        *,
        matcher: ArgumentMatcher | None = None,
    ) -> TokenVerdict:
        """Say whether ``token`` (or its id) approves this call now, without using it."""
        return self._present(token, role, tool, args, matcher, consume=False)

    def consume(
        self,
        token: ApprovalToken | str,
        role: str,
        tool: str,
        args: Mapping[str, object] | None = None,
        *,
        matcher: ArgumentMatcher | None = None,
    ) -> TokenVerdict:
        """Verify as :meth:`verify` does and, if accepted, count (and log) one use, atomically."""
        return self._present(token, role, tool, args, matcher, consume=True)

    def revoke(self, token_id: str, *, by: str, reason: str = "") -> bool:
        """Revoke a granted token; return ``False`` if it already was. An unknown id raises."""
        token_id = _presented_id(token_id)
        non_empty_str("by", by)
        if not isinstance(reason, str):
            raise InvalidValueError(f"reason must be a str, got {_show(reason)}")
        now = self._now()
        with self._lock:
            if token_id not in self._tokens:
                raise InvalidValueError(f"cannot revoke unknown token {_token_name(token_id)}")
            if token_id in self._revoked:
                return False
            revocation = TokenRevocation(token_id, now, by, reason)
            self._write({"kind": "revoke", **revocation.to_dict()})
            self._revoked[token_id] = revocation
        return True

    def get(self, token_id: str) -> ApprovalToken | None:
        """Return the granted token with this id, or ``None``."""
        with self._lock:
            return self._tokens.get(token_id)

    def tokens(self) -> list[ApprovalToken]:
        """Return every granted token, in the order granted (revoked and expired ones too)."""
        with self._lock:
            return list(self._tokens.values())

    def uses(self, token_id: str) -> list[TokenUse]:
        """Return the accepted uses of a token, oldest first (empty for an unknown id)."""
        with self._lock:
            return list(self._uses.get(token_id, ()))

    def revocation(self, token_id: str) -> TokenRevocation | None:
        """Return how a token was revoked, or ``None`` if it is not (or unknown)."""
        with self._lock:
            return self._revoked.get(token_id)

    # -- internals ------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.utcoffset() is None:
            raise InvalidValueError(f"clock must return an aware datetime, got {_show(now)}")
        return now.astimezone(UTC)

    def _present(
        self,
        token: ApprovalToken | str,
        role: str,
        tool: str,
        args: Mapping[str, object] | None,
        matcher: ArgumentMatcher | None,
        *,
        consume: bool,
    ) -> TokenVerdict:
        presented = token if isinstance(token, ApprovalToken) else None
        token_id = presented.token_id if presented is not None else _presented_id(token)
        non_empty_str("role", role)
        non_empty_str("tool", tool)
        if matcher is not None and not callable(matcher):
            raise InvalidValueError(f"matcher must be callable or None, got {_show(matcher)}")
        digest = arguments_digest(args)
        now = self._now()
        with self._lock:
            granted = self._tokens.get(token_id)
        matched: bool | None = None
        if (
            granted is not None
            and granted.argument_pattern is not None
            and matcher is not None
            and (presented is None or presented == granted)
        ):  # the caller's matcher runs outside the lock; a granted token never changes
            result = matcher(granted.argument_pattern, {} if args is None else args)
            if not isinstance(result, bool):
                raise InvalidValueError(f"matcher must return a bool, got {_show(result)}")
            matched = result
        with self._lock:
            verdict = self._decide(
                token_id,
                presented,
                role=role,
                tool=tool,
                digest=digest,
                matched=matched,
                now=now,
                consume=consume,
            )
            if verdict.accepted and consume:
                use = TokenUse(token_id, now, role, tool, digest)
                self._write({"kind": "use", **use.to_dict()})
                self._uses[token_id].append(use)
        return verdict

    def _decide(
        self,
        token_id: str,
        presented: ApprovalToken | None,
        *,
        role: str,
        tool: str,
        digest: str,
        matched: bool | None,
        now: datetime,
        consume: bool,
    ) -> TokenVerdict:
        """Check a presented token against the state; the caller holds the lock."""
        name = _token_name(token_id)
        granted = self._tokens.get(token_id)
        if granted is None:
            return _refuse("unknown_token", f"token {name} was never granted", token_id, None, None)
        used = len(self._uses[token_id])
        left = None if granted.max_uses is None else max(granted.max_uses - used, 0)

        def refuse(rule: str, reason: str) -> TokenVerdict:
            return _refuse(rule, f"token {name} {reason}", token_id, left, granted)

        if presented is not None and presented != granted:
            differ = [f.name for f in fields(ApprovalToken) if _differs(presented, granted, f.name)]
            return refuse("tampered", f"differs from the granted token in {', '.join(differ)}")
        revocation = self._revoked.get(token_id)
        if revocation is not None:
            why = f": {revocation.reason}" if revocation.reason else ""
            return refuse(
                "revoked",
                f"was revoked by {_show(revocation.by)} at {_iso(revocation.at)}{why}",
            )
        if granted.expires_at is not None and now >= granted.expires_at:
            return refuse("expired", f"expired at {_iso(granted.expires_at)} (now {_iso(now)})")
        if normalize_permission_name(role) != normalize_permission_name(granted.role):
            return refuse("wrong_role", f"is for role {_show(granted.role)}, not {_show(role)}")
        if normalize_permission_name(tool) != normalize_permission_name(granted.tool):
            return refuse("wrong_tool", f"is for tool {_show(granted.tool)}, not {_show(tool)}")
        if granted.max_uses is not None and used >= granted.max_uses:
            return refuse("used_up", f"was used {used} of {granted.max_uses} times")
        if granted.argument_pattern is not None:
            pattern = _show(granted.argument_pattern)
            if matched is None:
                return refuse(
                    "no_matcher",
                    f"approves arguments matching the pattern {pattern}, and no matcher was given",
                )
            if not matched:
                return refuse(
                    "pattern_unmatched",
                    f"approves arguments matching the pattern {pattern}, and these do not match",
                )
        elif granted.arguments_digest is not None and digest != granted.arguments_digest:
            return refuse(
                "arguments_differ",
                f"approves another call: the arguments differ from the approved ones (digest"
                f" {granted.arguments_digest[:_SHOWN_ID_CHARS]}..., these"
                f" {digest[:_SHOWN_ID_CHARS]}...)",
            )
        if left is not None and consume:
            left -= 1
        count = "unlimited uses" if left is None else f"{left} of {granted.max_uses} uses left"
        return TokenVerdict(
            True,
            f"token {name} approves tool {_show(tool)} for role {_show(role)} ({count})",
            "accepted",
            token_id,
            left,
            granted,
        )

    def _write(self, record: dict[str, object]) -> None:
        """Append one record to the log (if any), synced; the caller holds the lock."""
        if self._log is None:
            return
        line = _json().dumps(
            {"v": LOG_FORMAT_VERSION, **record}, separators=(",", ":"), ensure_ascii=True
        )
        data = line.encode("ascii") + b"\n"
        try:
            fd = os.open(self._log, os.O_RDWR | os.O_APPEND | os.O_CREAT | _O_BINARY, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size:  # a line cut by a crash stays a line of its own
                    os.lseek(fd, size - 1, os.SEEK_SET)
                    if os.read(fd, 1) != b"\n":
                        data = b"\n" + data
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SinkWriteError(
                f"could not append to the approval log {self._log}: {exc}"
            ) from exc

    def _replay(self, path: Path) -> None:
        """Load the records of ``path`` into the (still private) state."""
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise InvalidValueError(f"cannot read the approval log {path}: {exc}") from exc
        json = _json()
        for number, raw in enumerate(content.split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("ascii"))
            except (UnicodeDecodeError, ValueError) as exc:
                warnings.warn(
                    f"approval log {path} line {number} is not a whole record (cut by a crash?);"
                    f" skipped: {exc}",
                    ApprovalLogWarning,
                    stacklevel=4,
                )
                continue
            try:
                self._apply(record)
            except InvalidValueError as exc:
                raise InvalidValueError(f"approval log {path} line {number}: {exc}") from None

    def _apply(self, record: object) -> None:
        if not isinstance(record, dict):
            raise InvalidValueError(f"a record must be a JSON object, got {_show(record)}")
        version = record.get("v")
        if version != LOG_FORMAT_VERSION or isinstance(version, bool):
            raise InvalidValueError(
                f"unknown format version {version!r} (this library writes {LOG_FORMAT_VERSION})"
            )
        kind = record.get("kind")
        if kind == "grant":
            _check_keys("grant record", record, _GRANT_KEYS, _GRANT_KEYS)
            token_data = record["token"]
            if not isinstance(token_data, dict):
                raise InvalidValueError(f"token must be an object, got {_show(token_data)}")
            token = ApprovalToken.from_dict(token_data)
            if token.token_id in self._tokens:
                raise InvalidValueError(f"token {_token_name(token.token_id)} is granted twice")
            self._tokens[token.token_id] = token
            self._uses[token.token_id] = []
        elif kind == "use":
            _check_keys("use record", record, _USE_KEYS, _USE_KEYS)
            token_id = self._known(record)
            digest = _text(record, "arguments_digest")
            if _DIGEST.fullmatch(digest) is None:
                raise InvalidValueError(f"arguments_digest must be 64 hex digits, got {digest!r}")
            self._uses[token_id].append(
                TokenUse(
                    token_id,
                    _parse_time("at", record["at"]),
                    _text(record, "role"),
                    _text(record, "tool"),
                    digest,
                )
            )
        elif kind == "revoke":
            _check_keys("revoke record", record, _REVOKE_KEYS, _REVOKE_KEYS)
            token_id = self._known(record)
            if token_id not in self._revoked:
                self._revoked[token_id] = TokenRevocation(
                    token_id,
                    _parse_time("at", record["at"]),
                    _text(record, "by"),
                    _text(record, "reason"),
                )
        else:
            raise InvalidValueError(
                f"unknown record kind {_show(kind)} (expected grant, use or revoke)"
            )

    def _known(self, record: Mapping[str, object]) -> str:
        token_id = _text(record, "token_id")
        if token_id not in self._tokens:
            raise InvalidValueError(f"a record for token {_token_name(token_id)} never granted")
        return token_id


_GRANT_KEYS: Final = frozenset({"v", "kind", "token"})
_USE_KEYS: Final = frozenset({"v", "kind", "token_id", "at", "role", "tool", "arguments_digest"})
_REVOKE_KEYS: Final = frozenset({"v", "kind", "token_id", "at", "by", "reason"})
_O_BINARY: Final[int] = getattr(os, "O_BINARY", 0)


# -- helpers --------------------------------------------------------------------


def _json() -> Any:
    """Return :mod:`json`, imported on first use so importing this module stays light."""
    import json  # noqa: PLC0415 (kept out of import time, see tests/test_imports.py)

    return json


def _create(path: Path) -> None:
    """Create an empty log file (mode 0o600) and sync its directory entry."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_BINARY, 0o600))
        if os.name == "posix":
            dir_fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        raise SinkWriteError(f"could not create the approval log {path}: {exc}") from exc


def _refuse(
    rule: str, reason: str, token_id: str, left: int | None, token: ApprovalToken | None
) -> TokenVerdict:
    return TokenVerdict(False, reason, rule, token_id, left, token)


def _differs(a: ApprovalToken, b: ApprovalToken, name: str) -> bool:
    return bool(getattr(a, name) != getattr(b, name))


def _presented_id(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValueError(f"token must be an ApprovalToken or a token id, got {_show(value)}")
    return value


def _name(field_name: str, value: object) -> None:
    if not isinstance(value, str) or not normalize_permission_name(value):
        raise InvalidValueError(f"{field_name} must be a non-empty str, got {_show(value)}")


def _aware_utc(field_name: str, value: object) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidValueError(
            f"{field_name} must be a timezone-aware datetime, got {_show(value)}"
        )
    return value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_time(field_name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidValueError(f"{field_name} must be ISO 8601 text, got {_show(value)}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValueError(f"{field_name} must be ISO 8601 text, got {_show(value)}") from None
    return _aware_utc(field_name, parsed)


def _text(data: Mapping[str, object], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise InvalidValueError(f"{key} must be a str, got {_show(value)}")
    return value


def _text_or_none(data: Mapping[str, object], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidValueError(f"{key} must be a str or None, got {_show(value)}")
    return value


def _check_keys(
    what: str, data: Mapping[str, object], known: frozenset[str], required: frozenset[str]
) -> None:
    unknown = sorted(repr(key) for key in data if key not in known)
    if unknown:
        raise InvalidValueError(f"{what} has unknown keys {', '.join(unknown)}")
    missing = sorted(required - data.keys())
    if missing:
        raise InvalidValueError(f"{what} lacks {', '.join(missing)}")


def _token_name(token_id: str) -> str:
    """Show a token id by its first characters only: whoever knows it can present it."""
    if len(token_id) <= _SHOWN_ID_CHARS:
        return repr(token_id)
    return repr(token_id[:_SHOWN_ID_CHARS] + "...")


def _show(value: object) -> str:
    """Render a caller's value for a message: its repr, bounded."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real message
        text = f"<{type(value).__name__}>"
    if len(text) > _MAX_SHOWN_CHARS:
        return f"{text[:_MAX_SHOWN_CHARS]}... ({len(text)} chars)"
    return text
