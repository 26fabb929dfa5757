r"""The audit chain's arithmetic: canonical record text, link hashes, HMACs, checkpoints, the walk.

Everything here is pure (no SQLite): :mod:`techrevati.runtime._audit_store`
keeps the rows, :mod:`techrevati.runtime.audit` is the public face.

A record is stored as canonical JSON: the record's ``to_dict()`` (the same
fields the JSONL sink writes) under a ``"kind"`` key, keys sorted, no
whitespace, every non-ASCII character as a ``\u`` escape (so the text is
its own ASCII bytes and a lone surrogate survives as written), decimals as
exact strings. Row ``n`` links to row ``n - 1``::

    hash_n = SHA-256(prev_n || seq_n as 8 bytes big-endian || record_n)
    prev_1 = GENESIS (32 zero bytes); prev_n = hash_(n-1)
    mac_n  = HMAC-SHA256(key, hash_n)        (only with a key)

Hashes are stored as lowercase hex. A checkpoint vouches for ``(seq, hash)``
at a point of the chain; its ``check`` is SHA-256 over
:data:`CHECKPOINT_DOMAIN` and the canonical JSON of its fields, its ``mac``
the HMAC of the same bytes. :class:`ChainWalk` checks rows one at a time in
constant memory and stops at the first that is wrong, saying why.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final, TypeGuard

from techrevati.runtime._record_text import decimal_text, escaped, iso, sanitised
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, UsageRecord

GENESIS: Final = bytes(32)
"""The ``prev_hash`` of the first record of a chain: 32 zero bytes."""

GENESIS_HASH: Final = GENESIS.hex()
""":data:`GENESIS` as stored: 64 zeros."""

CHECKPOINT_DOMAIN: Final = b"techrevati.audit.checkpoint\n"
"""What a checkpoint's ``check`` and ``mac`` hash before its canonical JSON."""

KEY_ID_DOMAIN: Final = b"techrevati.audit.key-id"
"""What a key's id is the HMAC of (stored in the file, so a writer refuses a wrong key)."""

MIN_KEY_BYTES: Final = 16
"""The shortest HMAC key accepted (32 random bytes recommended)."""

RESERVED_KINDS: Final = frozenset({"event", "usage", "rejected", "dropped", "archive"})
"""Record kinds the library writes itself; ``append`` refuses them."""

_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def _plain(value: object) -> object:
    """How the canonical encoder writes a value JSON has no form for."""
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return iso(value)
    return str(value)


def _strict(value: object) -> object:
    """Like :func:`_plain`, but refuse what is not a decimal or a datetime (``append``)."""
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


_CANONICAL: Final = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), sort_keys=True, default=_plain
)
_STRICT: Final = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), sort_keys=True, default=_strict, allow_nan=False
)


def canonical(value: object) -> str:
    """Return the canonical JSON of ``value`` (raises for a cycle, mixed keys, deep nesting)."""
    return _CANONICAL.encode(value)


def record_text(record: AgentEvent | UsageRecord) -> str:
    """Return the canonical text of an event or usage record; raise if it has none as given.

    The text is ``canonical({"kind": ..., **record.to_dict()})``; records
    whose fields have their declared types take a fast path that writes the
    same text without building the dict (tests hold the two equal).
    """
    text: str | None = None
    if type(record) is AgentEvent:
        if _FAST_EVENT:
            text = _event_text(record)
    elif type(record) is UsageRecord and _FAST_USAGE:
        text = _usage_text(record)
    return generic_record_text(record) if text is None else text


def generic_record_text(record: AgentEvent | UsageRecord) -> str:
    """:func:`record_text` without the fast path: the canonical JSON of ``to_dict()``."""
    kind = "event" if isinstance(record, AgentEvent) else "usage"
    return _CANONICAL.encode({"kind": kind, **record.to_dict()})


_text: Final = json.encoder.encode_basestring_ascii  # what the encoder writes for a str
# The canonical encoder's C core, made once: JSONEncoder.encode builds one per call. Without
# the markers of check_circular a cycle ends in RecursionError instead of ValueError; either
# sends the record to the sanitised path.
_C_MAKE: Final = getattr(json.encoder, "c_make_encoder", None)
_DATA: Final = (
    None if _C_MAKE is None else _C_MAKE(None, _plain, _text, None, ":", ",", True, False, True)
)


def _data_text(data: dict[str, object]) -> str:
    """Return the canonical JSON of an event's ``data`` dict, as ``canonical`` would."""
    if _DATA is None:
        return _CANONICAL.encode(data)
    return "".join(_DATA(data, 0))


def _event_text(e: AgentEvent) -> str | None:
    """Return the canonical text of an event with fields of their declared types, or None."""
    name, role, phase, status, detail = e.name, e.role, e.phase, e.status, e.detail
    session_id, worker_id, project_id, failure = (
        e.session_id,
        e.worker_id,
        e.project_id,
        e.failure_class,
    )
    if not (
        type(role) is str
        and type(phase) is str
        and type(session_id) is str
        and type(worker_id) is str
        and (status is None or type(status) is str)
        and (detail is None or type(detail) is str)
        and (failure is None or type(failure) is AgentFailureClass)
    ):
        return None
    if project_id is None:
        project = "null"
    elif type(project_id) is str:
        project = _text(project_id)
    elif type(project_id) is int:
        project = int.__repr__(project_id)
    else:
        return None
    data = e.data
    body = _data_text(data if type(data) is dict else dict(data)) if data else "{}"
    return (
        f'{{"data":{body},"detail":{"null" if detail is None else _text(detail)},'
        f'"failure_class":{"null" if failure is None else _text(failure.value)},'
        f'"kind":"event","name":{_text(str(name))},"phase":{_text(phase)},'
        f'"project_id":{project},"role":{_text(role)},"session_id":{_text(session_id)},'
        f'"status":{"null" if status is None else _text(status)},'
        f'"timestamp":{_text(e.timestamp.isoformat())},"worker_id":{_text(worker_id)}}}'
    )


def _usage_text(r: UsageRecord) -> str | None:
    """Return the canonical text of a usage record with fields of their declared types, or None."""
    project_id, duration, tier = r.project_id, r.duration_seconds, r.service_tier
    read, one_hour, write = r.cache_read_tokens, r.cache_write_1h_tokens, r.cache_write_tokens
    inp, out, reasoning = r.input_tokens, r.output_tokens, r.reasoning_tokens
    if not (
        type(r.model) is str
        and type(r.role) is str
        and type(r.phase) is str
        and type(r.session_id) is str
        and type(r.worker_id) is str
        and (tier is None or type(tier) is str)
        and type(r.priced) is bool
        and type(read) is int
        and type(one_hour) is int
        and type(write) is int
        and type(inp) is int
        and type(out) is int
        and type(reasoning) is int
    ):
        return None
    if project_id is None:
        project = "null"
    elif type(project_id) is str:
        project = _text(project_id)
    elif type(project_id) is int:
        project = int.__repr__(project_id)
    else:
        return None
    if duration is None:
        seconds = "null"
    elif type(duration) is float and math.isfinite(duration):
        seconds = float.__repr__(duration)
    elif type(duration) is int:
        seconds = int.__repr__(duration)
    else:
        return None
    # An int formats as its repr, as JSON writes it; a Decimal's str is ASCII with no quote.
    return (
        f'{{"cache_read_tokens":{read},"cache_write_1h_tokens":{one_hour},'
        f'"cache_write_tokens":{write},"cost_usd":"{r.cost_usd}",'
        f'"duration_seconds":{seconds},"input_tokens":{inp},"kind":"usage",'
        f'"model":{_text(r.model)},"output_tokens":{out},"phase":{_text(r.phase)},'
        f'"priced":{"true" if r.priced else "false"},"project_id":{project},'
        f'"reasoning_tokens":{reasoning},"role":{_text(r.role)},'
        f'"service_tier":{"null" if tier is None else _text(tier)},'
        f'"session_id":{_text(r.session_id)},"timestamp":{_text(r.timestamp.isoformat())},'
        f'"worker_id":{_text(r.worker_id)}}}'
    )


# The fast paths write these keys; should a record type gain a field, they switch off
# (the generic path writes every field) until they are taught it.
_FAST_EVENT: Final = sorted({"kind", *AgentEvent(name="x").to_dict()}) == [
    "data", "detail", "failure_class", "kind", "name", "phase", "project_id", "role",
    "session_id", "status", "timestamp", "worker_id",
]  # fmt: skip
_FAST_USAGE: Final = sorted({"kind", *UsageRecord(model="x").to_dict()}) == [
    "cache_read_tokens", "cache_write_1h_tokens", "cache_write_tokens", "cost_usd",
    "duration_seconds", "input_tokens", "kind", "model", "output_tokens", "phase", "priced",
    "project_id", "reasoning_tokens", "role", "service_tier", "session_id", "timestamp",
    "worker_id",
]  # fmt: skip


def sanitised_text(record: AgentEvent | UsageRecord, notes: set[str]) -> str:
    """Return the canonical text of a storable copy of ``record`` (``_record_text.sanitised``)."""
    kind = "event" if isinstance(record, AgentEvent) else "usage"
    return _CANONICAL.encode(sanitised({"kind": kind, **record.to_dict()}, notes))


def rejected_text(record: AgentEvent | UsageRecord, reason: str) -> str:
    """Return the canonical text that stands for a record with no storable form; never raises."""
    try:
        text = _CANONICAL.encode(sanitised(record.to_dict(), set()))
    except Exception:
        try:
            text = escaped(repr(record))
        except Exception:
            text = f"<unprintable {type(record).__name__}>"
    try:
        when = iso(record.timestamp)
    except Exception:
        when = ""
    return _CANONICAL.encode(
        {
            "kind": "rejected",
            "reason": reason,
            "record_type": type(record).__name__,
            "timestamp": when,
            "record": text,
        }
    )


def entry_text(kind: str, timestamp: datetime, payload: Mapping[str, object]) -> str:
    """Return the canonical text of an appended record; raise InvalidValueError if it has none."""
    try:
        return _STRICT.encode({"kind": kind, "timestamp": iso(timestamp), "data": payload})
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidValueError(
            f"payload of {kind!r} must be JSON-serialisable (str keys; numbers, str, bool, "
            f"None, lists, dicts, Decimal, datetime): {type(exc).__name__}: {exc}"
        ) from None


def link(prev: bytes, seq: int, text: bytes) -> bytes:
    """Return the raw SHA-256 link hash of row ``seq`` (see the module docstring)."""
    return hashlib.sha256(prev + seq.to_bytes(8, "big") + text).digest()


class Signer:
    """HMAC-SHA256 under one key, its padded key states hashed once (RFC 2104).

    ``signer(message)`` equals ``hmac.digest(key, message, "sha256")``;
    it copies two prepared hash states instead of setting the key up again
    for every row (about a third of the cost).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:  # the block size: a longer key is hashed first
            key = hashlib.sha256(key).digest()
        padded = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def __call__(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def key_id(key: bytes) -> str:
    """Return the id of ``key`` a file records (not the key; 16 hex digits)."""
    return hmac.digest(key, KEY_ID_DOMAIN, "sha256").hex()[:16]


def check_key(key: object) -> bytes | None:
    """Return ``key`` if it is None or bytes of at least :data:`MIN_KEY_BYTES`."""
    if key is None:
        return None
    if not isinstance(key, bytes | bytearray | memoryview):
        raise InvalidValueError(f"key must be bytes or None, got {type(key).__name__}")
    raw = bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise InvalidValueError(
            f"key must be at least {MIN_KEY_BYTES} bytes (32 random bytes recommended), "
            f"got {len(raw)}"
        )
    return raw


def is_hash(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a stored hash: 64 lowercase hex digits."""
    return type(value) is str and _HEX64.fullmatch(value) is not None


class AuditProblem(StrEnum):
    """Why :func:`~techrevati.runtime.audit.verify` refused a chain, by the kind of damage."""

    EDITED = "edited"
    """A record's hash does not match its content: the record (or its hash) was changed."""
    DELETED = "deleted"
    """A seq is missing: the record was removed."""
    INSERTED = "inserted"
    """A seq comes again after it was seen: a record was added (or copied)."""
    REORDERED = "reordered"
    """A later seq comes first, the expected one after it: records were swapped or moved."""
    BROKEN_LINK = "broken_link"
    """A record is whole but does not follow its predecessor (the one before it was rewritten)."""
    BAD_MAC = "bad_mac"
    """A record's HMAC is missing or wrong: forged, or rewritten without the key."""
    BAD_CHECKPOINT = "bad_checkpoint"
    """The checkpoint the file starts from was altered (or is unsigned under a key)."""
    ANCHOR_MISMATCH = "anchor_mismatch"
    """The chain's hash at the anchor's seq is not the anchor's: the chain was rewritten."""
    TRUNCATED = "truncated"
    """The chain ends before the anchor's seq: its last records were cut off."""
    MALFORMED = "malformed"
    """A row is not of the shape the log writes (a seq that is no integer, a hash no hash)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The first thing wrong with a chain: the seq it concerns, the kind, and a sentence."""

    seq: int
    problem: AuditProblem
    reason: str


@dataclass(frozen=True, slots=True)
class AuditCheckpoint:
    """A point of a chain vouched for: ``seq``, the ``hash`` there, and a ``check``/``mac`` over it.

    :func:`~techrevati.runtime.audit.archive` leaves one in the live file
    (``archive`` names the archive file); :func:`~techrevati.runtime.audit.anchor`
    returns one for the current tip, to keep somewhere else and hand back to
    ``verify(..., anchor=)``. ``records`` is how many records the chain holds
    up to ``seq`` (equal to ``seq``: seqs are gap-free from 1). ``mac`` is the
    HMAC under the log's key, ``None`` without one.
    """

    seq: int
    hash: str
    records: int
    created_at: str
    archive: str | None = None
    check: str = ""
    mac: str | None = None

    @classmethod
    def make(
        cls,
        seq: int,
        digest: str,
        created_at: datetime,
        *,
        archive: str | None = None,
        key: bytes | None = None,
    ) -> AuditCheckpoint:
        """Return the checkpoint of ``(seq, digest)`` with its ``check``; signed with ``key``."""
        unsigned = cls(seq, digest, seq, iso(created_at), archive)
        body = unsigned.signed_bytes()
        return cls(
            seq,
            digest,
            seq,
            unsigned.created_at,
            archive,
            hashlib.sha256(body).hexdigest(),
            None if key is None else hmac.digest(key, body, "sha256").hex(),
        )

    def signed_bytes(self) -> bytes:
        """Return the bytes ``check`` and ``mac`` are computed over."""
        fields = {
            "archive": self.archive,
            "created_at": self.created_at,
            "hash": self.hash,
            "records": self.records,
            "seq": self.seq,
        }
        return CHECKPOINT_DOMAIN + canonical(fields).encode("ascii")

    def problem(self, key: bytes | None) -> str | None:
        """Return why this checkpoint cannot be trusted (under ``key``, if given), or None."""
        if type(self.seq) is not int or self.seq < 0 or not is_hash(self.hash):
            return "its seq or hash is malformed"
        if type(self.records) is not int or self.records != self.seq:
            return f"it counts {self.records!r} records up to seq {self.seq}"
        if self.seq == 0 and self.hash != GENESIS_HASH:
            return "at seq 0 its hash is not the genesis hash"
        try:
            body = self.signed_bytes()
        except (TypeError, ValueError, UnicodeEncodeError):
            return "its fields are malformed"
        if not isinstance(self.check, str) or not hmac.compare_digest(
            self.check, hashlib.sha256(body).hexdigest()
        ):
            return "its check hash does not match its fields: it was edited"
        if key is not None:
            if not isinstance(self.mac, str):
                return "it has no HMAC, and a key was given"
            if not hmac.compare_digest(self.mac, hmac.digest(key, body, "sha256").hex()):
                return "its HMAC does not match: it was edited, or signed with another key"
        return None

    def to_json(self) -> str:
        """Return the checkpoint as one line of canonical JSON (what ``from_json`` reads)."""
        return canonical(
            {
                "archive": self.archive,
                "check": self.check,
                "created_at": self.created_at,
                "hash": self.hash,
                "mac": self.mac,
                "records": self.records,
                "seq": self.seq,
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AuditCheckpoint:
        """Read a checkpoint written by :meth:`to_json`; InvalidValueError if it is not one."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidValueError(f"a checkpoint must be a JSON object: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidValueError(f"a checkpoint must be a JSON object, got {data!r:.80}")
        seq, digest, records = data.get("seq"), data.get("hash"), data.get("records")
        created, archive = data.get("created_at"), data.get("archive")
        check, mac = data.get("check"), data.get("mac")
        if (
            type(seq) is not int
            or seq < 0
            or not is_hash(digest)
            or type(records) is not int
            or not isinstance(created, str)
            or not (archive is None or isinstance(archive, str))
            or not isinstance(check, str)
            or not (mac is None or isinstance(mac, str))
        ):
            raise InvalidValueError(
                "a checkpoint needs seq (int >= 0), hash (64 hex digits), records (int), "
                f"created_at, check (str), archive and mac (str or null); got {data!r:.200}"
            )
        return cls(seq, str(digest), records, created, archive, check, mac)


class ChainWalk:
    """Check a chain's rows in order, one at a time, in constant memory.

    Start each file with :meth:`start` (its checkpoint, or ``None`` for a
    file that starts at the genesis), feed its rows to :meth:`row` in
    storage order, then call :meth:`finish`. Each returns the first
    :class:`Failure`, or ``None``; after a failure stop feeding.
    """

    __slots__ = ("anchor", "key", "prev", "records", "seq", "signer", "start_seq", "started")

    def __init__(self, key: bytes | None, anchor: AuditCheckpoint | None = None) -> None:
        self.key = key
        self.signer = None if key is None else Signer(key)
        self.anchor = anchor
        self.seq = 0  # the last good seq
        self.prev = GENESIS_HASH  # its hash
        self.records = 0  # rows checked good
        self.start_seq = 0  # the seq the first file starts after
        self.started = False

    def start(self, checkpoint: AuditCheckpoint | None) -> Failure | None:
        """Begin a file that starts after ``checkpoint`` (``None``: after the genesis)."""
        if checkpoint is None:
            seq, digest = 0, GENESIS_HASH
        else:
            why = checkpoint.problem(self.key)
            if why is not None:
                at = checkpoint.seq if type(checkpoint.seq) is int else self.seq
                return Failure(
                    at, AuditProblem.BAD_CHECKPOINT, f"the checkpoint at seq {at}: {why}"
                )
            seq, digest = checkpoint.seq, checkpoint.hash
        if not self.started:
            self.started = True
            self.seq, self.prev, self.start_seq = seq, digest, seq
        elif (seq, digest) != (self.seq, self.prev):
            return self._seam(seq)
        anchor = self.anchor
        if anchor is not None and anchor.seq == seq and anchor.hash != digest:
            return Failure(
                seq,
                AuditProblem.ANCHOR_MISMATCH,
                f"the chain's hash at seq {seq} is not the anchor's: it was rewritten",
            )
        return None

    def _seam(self, seq: int) -> Failure:
        """Why a file does not start where the previous one ended."""
        if seq > self.seq:
            return Failure(
                self.seq + 1,
                AuditProblem.DELETED,
                f"the file starts after seq {seq} but the one before it ends at seq {self.seq}: "
                f"{_span(self.seq + 1, seq)} missing (deleted)",
            )
        if seq < self.seq:
            return Failure(
                seq + 1,
                AuditProblem.INSERTED,
                f"the file starts after seq {seq} but the one before it already holds seq "
                f"{seq + 1} to {self.seq}: the files overlap",
            )
        return Failure(
            seq + 1,
            AuditProblem.BROKEN_LINK,
            f"the file starts from another hash at seq {seq} than the one before it ends with",
        )

    def row(
        self,
        seq: object,
        text: object,
        prev: object,
        digest: object,
        mac: object,
        *,
        later: Callable[[int], bool],
    ) -> Failure | None:
        """Check one row; ``later(s)`` says whether seq ``s`` is stored further on in this file."""
        expected = self.seq + 1
        if type(seq) is not int:
            return Failure(expected, AuditProblem.MALFORMED, f"seq {seq!r:.40} is not an integer")
        if seq != expected:
            return self._out_of_place(seq, expected, later)
        if type(text) is not bytes or not is_hash(prev) or not is_hash(digest):
            return Failure(
                seq, AuditProblem.MALFORMED, "its record, prev_hash or hash is malformed"
            )
        raw = link(bytes.fromhex(prev), seq, text)
        if raw.hex() != digest:
            return Failure(
                seq, AuditProblem.EDITED, "its hash does not match its content: it was edited"
            )
        if prev != self.prev:
            return Failure(
                seq,
                AuditProblem.BROKEN_LINK,
                f"its prev_hash is not the hash of seq {self.seq}: seq {self.seq} was rewritten, "
                "or this record was put here from another chain",
            )
        signer = self.signer
        if signer is not None:
            if not isinstance(mac, str):
                return Failure(seq, AuditProblem.BAD_MAC, "it has no HMAC, and a key was given")
            if not hmac.compare_digest(mac, signer(raw).hex()):
                return Failure(
                    seq,
                    AuditProblem.BAD_MAC,
                    "its HMAC does not match: it was forged or rewritten without the key "
                    "(or the key is not this log's)",
                )
        anchor = self.anchor
        if anchor is not None and anchor.seq == seq and anchor.hash != digest:
            return Failure(
                seq,
                AuditProblem.ANCHOR_MISMATCH,
                f"the chain's hash at seq {seq} is not the anchor's: the chain was rewritten",
            )
        self.seq = seq
        self.prev = digest
        self.records += 1
        return None

    def _out_of_place(self, seq: int, expected: int, later: Callable[[int], bool]) -> Failure:
        if seq < expected:
            return Failure(
                seq,
                AuditProblem.INSERTED,
                f"seq {seq} comes again after seq {self.seq}: a record was inserted (or copied)",
            )
        if later(expected):
            return Failure(
                expected,
                AuditProblem.REORDERED,
                f"seq {seq} comes where seq {expected} should, which is stored further on: "
                "records were swapped or moved",
            )
        return Failure(
            expected,
            AuditProblem.DELETED,
            f"{_span(expected, seq - 1)} missing after seq {self.seq}: deleted",
        )

    def finish(self) -> Failure | None:
        """After the last row of the last file: check the anchor was reached."""
        anchor = self.anchor
        if anchor is not None and anchor.seq > self.seq:
            return Failure(
                self.seq + 1,
                AuditProblem.TRUNCATED,
                f"the chain ends at seq {self.seq}, before the anchor's seq {anchor.seq}: "
                "its last records were cut off",
            )
        return None


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first} to {last}"
