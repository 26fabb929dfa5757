"""Approval tokens: scope, expiry, max_uses under threads, revocation, tampering, and the log."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import techrevati.runtime
from techrevati.runtime import approvals
from techrevati.runtime.approvals import (
    ApprovalLedger,
    ApprovalLogWarning,
    ApprovalToken,
    TokenVerdict,
    arguments_digest,
    canonical_arguments,
)
from techrevati.runtime.errors import InvalidValueError, SinkWriteError

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SRC = Path(approvals.__file__).resolve().parents[2]  # the src directory these tests import


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def token(**overrides: object) -> ApprovalToken:
    fields: dict[str, object] = {
        "role": "dev",
        "tool": "fs.write",
        "granted_by": "alice",
        "granted_at": START,
    }
    fields.update(overrides)
    return ApprovalToken(**fields)  # type: ignore[arg-type]


def ledger_with(tok: ApprovalToken, clock: Clock | None = None) -> ApprovalLedger:
    ledger = ApprovalLedger(clock=clock or Clock())
    ledger.grant(tok)
    return ledger


# -- canonical arguments --------------------------------------------------------


def test_canonical_arguments_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_arguments({"b": 1, "a": [1, 2.5, None, True]}) == (
        '{"a":[1,2.5,null,true],"b":1}'
    )
    assert canonical_arguments({"z": {"y": 1, "x": 2}}) == '{"z":{"x":2,"y":1}}'


def test_canonical_arguments_none_is_no_arguments_and_tuples_are_lists() -> None:
    assert canonical_arguments(None) == canonical_arguments({}) == "{}"
    assert canonical_arguments({"p": (1, 2)}) == canonical_arguments({"p": [1, 2]})


def test_canonical_arguments_escapes_non_ascii() -> None:
    assert canonical_arguments({"name": "café"}) == '{"name":"caf\\u00e9"}'


def test_one_one_point_zero_and_true_are_different_values() -> None:
    digests = {arguments_digest({"n": value}) for value in (1, 1.0, True)}
    assert len(digests) == 3


def test_arguments_digest_is_the_sha256_of_the_canonical_text() -> None:
    args = {"path": "/tmp/x", "mode": "w"}
    expected = hashlib.sha256(canonical_arguments(args).encode()).hexdigest()
    assert arguments_digest(args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"a": [1, {"b": {1, 2}}]}, r"args\['a'\]\[1\]\['b'\] must be JSON data .* got set"),
        ({"x": math.nan}, r"args\['x'\] must be a finite number, got nan"),
        ({"x": [math.inf]}, r"args\['x'\]\[0\] must be a finite number, got inf"),
        ({"x": {1: "one"}}, r"args\['x'\] keys must be str, got 1 \(int\)"),
        ({"when": START}, r"args\['when'\] must be JSON data .* got datetime"),
        ({"raw": b"bytes"}, r"args\['raw'\] must be JSON data .* got bytes"),
    ],
)
def test_canonical_arguments_names_the_bad_value_and_its_path(
    args: Mapping[str, object], message: str
) -> None:
    with pytest.raises(InvalidValueError, match=message):
        canonical_arguments(args)


def test_canonical_arguments_refuses_a_cycle_and_deep_nesting() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(InvalidValueError, match=r"args\['l'\]\[0\] contains itself"):
        canonical_arguments({"l": loop})
    deep: object = "leaf"
    for _ in range(approvals.MAX_ARGUMENT_DEPTH):
        deep = [deep]
    with pytest.raises(InvalidValueError, match="nests deeper than"):
        canonical_arguments({"d": deep})
    shared = [1]
    assert canonical_arguments({"a": shared, "b": shared}) == '{"a":[1],"b":[1]}'


def test_canonical_arguments_refuses_a_non_mapping() -> None:
    with pytest.raises(InvalidValueError, match="args must be a mapping"):
        canonical_arguments([("a", 1)])  # type: ignore[arg-type]


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), _json_values, max_size=6), st.randoms())
def test_canonical_arguments_ignores_key_order(args: dict[str, object], rnd: random.Random) -> None:
    items = list(args.items())
    rnd.shuffle(items)
    assert canonical_arguments(dict(items)) == canonical_arguments(args)
    assert json.loads(canonical_arguments(args)) == args


@given(st.dictionaries(st.text(), _json_values, min_size=1, max_size=6), st.data())
def test_the_digest_differs_when_any_value_differs(
    args: dict[str, object], data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(sorted(args)))
    other = data.draw(
        _json_values.filter(
            lambda v: canonical_arguments({"v": v}) != canonical_arguments({"v": args[key]})
        )
    )
    changed = {**args, key: other}
    assert arguments_digest(changed) != arguments_digest(args)


# -- the token as data ----------------------------------------------------------


def test_a_token_has_a_random_128_bit_id_by_default() -> None:
    first, second = token(), token()
    assert len(first.token_id) == 32
    int(first.token_id, 16)
    assert first.token_id != second.token_id


def test_token_times_are_stored_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    tok = token(expires_at=datetime(2030, 1, 1, 14, 0, tzinfo=plus_two))
    assert tok.expires_at == START
    assert tok.expires_at is not None
    assert tok.expires_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"token_id": ""}, "token_id must be 1 to 128"),
        ({"token_id": "has space"}, "token_id must be 1 to 128"),
        ({"role": "  "}, "role must be a non-empty str"),
        ({"tool": 3}, "tool must be a non-empty str"),
        ({"granted_by": ""}, "granted_by must be a non-empty str"),
        ({"arguments_digest": "ABC"}, "arguments_digest must be None or 64 lowercase hex"),
        (
            {"arguments_digest": "0" * 64, "argument_pattern": "p*"},
            "at most one of arguments_digest",
        ),
        ({"argument_pattern": ""}, "argument_pattern must be a non-empty str"),
        ({"expires_at": datetime(2030, 1, 1)}, "expires_at must be a timezone-aware"),
        ({"granted_at": "2030-01-01"}, "granted_at must be a timezone-aware"),
        ({"max_uses": 0}, "max_uses must be None or an int >= 1"),
        ({"max_uses": True}, "max_uses must be None or an int >= 1"),
        ({"reason": None}, "reason must be a str"),
    ],
)
def test_a_malformed_token_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        token(**overrides)


def test_to_dict_and_from_dict_round_trip() -> None:
    tok = token(
        arguments_digest=arguments_digest({"p": 1}),
        expires_at=START + timedelta(hours=1),
        max_uses=3,
        reason="deploy fix",
    )
    data = tok.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["expires_at"] == "2030-01-01T13:00:00.000000+00:00"
    assert ApprovalToken.from_dict(data) == tok
    pattern = token(argument_pattern="/tmp/*")
    assert ApprovalToken.from_dict(pattern.to_dict()) == pattern


def test_from_dict_defaults_the_optional_keys() -> None:
    tok = ApprovalToken.from_dict(
        {
            "token_id": "t1",
            "role": "dev",
            "tool": "fs.write",
            "granted_by": "alice",
            "granted_at": "2030-01-01T12:00:00+00:00",
        }
    )
    assert tok == token(token_id="t1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown keys 'extra'"),
        ({"token_id": None}, "token_id must be a str"),
        ({"role": 5}, "role must be a str"),
        ({"max_uses": "3"}, "max_uses must be an int or None"),
        ({"max_uses": 2.0}, "max_uses must be an int or None"),
        ({"expires_at": "tomorrow"}, "expires_at must be ISO 8601 text"),
        ({"expires_at": 1893499200}, "expires_at must be ISO 8601 text"),
        ({"granted_at": "2030-01-01T12:00:00"}, "granted_at must be a timezone-aware"),
        ({"argument_pattern": ["a"]}, "argument_pattern must be a str or None"),
        ({"reason": None}, "reason must be a str"),
    ],
)
def test_from_dict_is_strict(change: dict[str, object], message: str) -> None:
    data = {**token(token_id="t1").to_dict(), **change}
    with pytest.raises(InvalidValueError, match=message):
        ApprovalToken.from_dict(data)


def test_from_dict_names_the_missing_keys() -> None:
    data = token().to_dict()
    del data["granted_by"], data["tool"]
    with pytest.raises(InvalidValueError, match="lacks granted_by, tool"):
        ApprovalToken.from_dict(data)
    with pytest.raises(InvalidValueError, match="must be a mapping"):
        ApprovalToken.from_dict("t1")  # type: ignore[arg-type]


# -- scope ----------------------------------------------------------------------


def test_an_exact_call_token_accepts_that_call_with_names_normalised() -> None:
    tok = token(arguments_digest=arguments_digest({"path": "a.txt"}))
    ledger = ledger_with(tok)
    verdict = ledger.verify(tok, " DEV", "FS.Write", {"path": "a.txt"})
    assert verdict.accepted
    assert verdict
    assert verdict.rule == "accepted"
    assert verdict.token == tok
    assert verdict.uses_left is None
    assert "unlimited uses" in verdict.reason


def test_another_role_or_tool_is_refused_with_the_reason() -> None:
    tok = token(token_id="tok-1")
    ledger = ledger_with(tok)
    role = ledger.verify("tok-1", "reviewer", "fs.write")
    assert (role.accepted, role.rule) == (False, "wrong_role")
    assert role.reason == "token 'tok-1' is for role 'dev', not 'reviewer'"
    tool = ledger.verify("tok-1", "dev", "fs.read")
    assert (tool.accepted, tool.rule) == (False, "wrong_tool")
    assert tool.reason == "token 'tok-1' is for tool 'fs.write', not 'fs.read'"
    assert not tool


def test_other_arguments_are_refused_with_the_digests() -> None:
    approved = {"path": "a.txt"}
    tok = token(arguments_digest=arguments_digest(approved))
    ledger = ledger_with(tok)
    verdict = ledger.verify(tok, "dev", "fs.write", {"path": "b.txt"})
    assert (verdict.accepted, verdict.rule) == (False, "arguments_differ")
    assert "arguments differ from the approved ones" in verdict.reason
    assert arguments_digest(approved)[:12] in verdict.reason
    assert arguments_digest({"path": "b.txt"})[:12] in verdict.reason
    assert not ledger.verify(tok, "dev", "fs.write").accepted  # no arguments is other arguments


def test_a_token_without_argument_scope_accepts_any_arguments() -> None:
    tok = token()
    ledger = ledger_with(tok)
    assert ledger.verify(tok, "dev", "fs.write", {"path": "anything"}).accepted
    assert ledger.verify(tok, "dev", "fs.write").accepted


def test_a_pattern_token_asks_the_matcher() -> None:
    tok = token(argument_pattern="/tmp/*")
    ledger = ledger_with(tok)
    seen: list[tuple[str, Mapping[str, object]]] = []

    def matcher(pattern: str, args: Mapping[str, object]) -> bool:
        seen.append((pattern, args))
        return str(args.get("path", "")).startswith(pattern.rstrip("*"))

    assert ledger.verify(tok, "dev", "fs.write", {"path": "/tmp/a"}, matcher=matcher).accepted
    refused = ledger.verify(tok, "dev", "fs.write", {"path": "/etc/passwd"}, matcher=matcher)
    assert (refused.accepted, refused.rule) == (False, "pattern_unmatched")
    assert "'/tmp/*'" in refused.reason
    assert seen == [("/tmp/*", {"path": "/tmp/a"}), ("/tmp/*", {"path": "/etc/passwd"})]


def test_a_pattern_token_without_a_matcher_is_refused() -> None:
    tok = token(argument_pattern="/tmp/*")
    verdict = ledger_with(tok).consume(tok, "dev", "fs.write", {"path": "/tmp/a"})
    assert (verdict.accepted, verdict.rule) == (False, "no_matcher")
    assert "no matcher was given" in verdict.reason


def test_a_matcher_must_return_a_bool() -> None:
    tok = token(argument_pattern="p")
    ledger = ledger_with(tok)
    with pytest.raises(InvalidValueError, match="matcher must return a bool, got 1"):
        ledger.verify(tok, "dev", "fs.write", matcher=lambda _p, _a: 1)  # type: ignore[arg-type,return-value]


def test_bad_arguments_to_verify_raise() -> None:
    tok = token()
    ledger = ledger_with(tok)
    with pytest.raises(InvalidValueError, match="role must be a non-empty str"):
        ledger.verify(tok, "", "fs.write")
    with pytest.raises(InvalidValueError, match="token must be an ApprovalToken or a token id"):
        ledger.verify(42, "dev", "fs.write")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match=r"args\['s'\] must be JSON data"):
        ledger.verify(tok, "dev", "fs.write", {"s": {1}})


# -- unknown, tampered, duplicate -----------------------------------------------


def test_an_unknown_token_is_refused_not_raised() -> None:
    ledger = ApprovalLedger(clock=Clock())
    verdict = ledger.consume("0123456789abcdef0123", "dev", "fs.write")
    assert verdict == TokenVerdict(
        False,
        "token '0123456789ab...' was never granted",
        "unknown_token",
        "0123456789abcdef0123",
        None,
        None,
    )
    assert ledger.verify(token(), "dev", "fs.write").rule == "unknown_token"
    assert ledger.uses("0123456789abcdef0123") == []
    assert ledger.get("0123456789abcdef0123") is None


def test_a_tampered_token_is_refused_naming_the_fields() -> None:
    tok = token(max_uses=1, tool="fs.read")
    ledger = ledger_with(tok)
    forged = dataclasses.replace(tok, max_uses=100, tool="fs.write")
    verdict = ledger.consume(forged, "dev", "fs.write")
    assert (verdict.accepted, verdict.rule) == (False, "tampered")
    assert verdict.reason.endswith("differs from the granted token in tool, max_uses")
    assert verdict.token == tok
    assert ledger.uses(tok.token_id) == []
    assert ledger.consume(tok, "dev", "fs.read").accepted  # the genuine one still works


def test_a_matcher_is_not_asked_about_a_tampered_token() -> None:
    tok = token(argument_pattern="p")
    ledger = ledger_with(tok)
    forged = dataclasses.replace(tok, argument_pattern="*")
    calls: list[str] = []

    def matcher(pattern: str, _args: Mapping[str, object]) -> bool:
        calls.append(pattern)
        return True

    assert ledger.verify(forged, "dev", "fs.write", matcher=matcher).rule == "tampered"
    assert calls == []


def test_granting_a_token_id_twice_is_refused() -> None:
    tok = token(token_id="same")
    ledger = ledger_with(tok)
    with pytest.raises(InvalidValueError, match="token 'same' is already granted"):
        ledger.grant(token(token_id="same", tool="other"))
    assert ledger.tokens() == [tok]
    with pytest.raises(InvalidValueError, match="token must be an ApprovalToken"):
        ledger.grant({"token_id": "x"})  # type: ignore[arg-type]


# -- expiry ---------------------------------------------------------------------


def test_a_token_is_accepted_until_the_instant_before_expiry() -> None:
    clock = Clock()
    expires = START + timedelta(minutes=10)
    tok = token(expires_at=expires)
    ledger = ledger_with(tok, clock)
    clock.now = expires - timedelta(microseconds=1)
    assert ledger.consume(tok, "dev", "fs.write").accepted
    clock.now = expires
    verdict = ledger.consume(tok, "dev", "fs.write")
    assert (verdict.accepted, verdict.rule) == (False, "expired")
    assert verdict.reason.endswith(
        "expired at 2030-01-01T12:10:00.000000+00:00 (now 2030-01-01T12:10:00.000000+00:00)"
    )
    assert len(ledger.uses(tok.token_id)) == 1


def test_the_clock_must_be_aware() -> None:
    ledger = ApprovalLedger(clock=lambda: datetime(2030, 1, 1))
    tok = ledger.grant(token())
    with pytest.raises(InvalidValueError, match="clock must return an aware datetime"):
        ledger.verify(tok, "dev", "fs.write")
    with pytest.raises(InvalidValueError, match="clock must be callable"):
        ApprovalLedger(clock=5)  # type: ignore[arg-type]


# -- uses -----------------------------------------------------------------------


def test_verify_never_consumes_and_consume_counts_down() -> None:
    tok = token(max_uses=2)
    ledger = ledger_with(tok)
    for _ in range(5):
        assert ledger.verify(tok, "dev", "fs.write").uses_left == 2
    first = ledger.consume(tok, "Dev", "fs.write", {"n": 1})
    assert (first.accepted, first.uses_left) == (True, 1)
    assert "1 of 2 uses left" in first.reason
    assert ledger.consume(tok, "dev", "fs.write").uses_left == 0
    refused = ledger.consume(tok, "dev", "fs.write")
    assert (refused.accepted, refused.rule, refused.uses_left) == (False, "used_up", 0)
    assert refused.reason.endswith("was used 2 of 2 times")
    uses = ledger.uses(tok.token_id)
    assert [(u.role, u.tool, u.arguments_digest, u.at) for u in uses] == [
        ("Dev", "fs.write", arguments_digest({"n": 1}), START),
        ("dev", "fs.write", arguments_digest(None), START),
    ]


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so a race shows."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("eager_switching")
def test_exactly_max_uses_consumes_succeed_under_16_threads() -> None:
    max_uses, rounds = 5, 100
    ledger = ApprovalLedger(clock=Clock())
    tokens = [ledger.grant(token(max_uses=max_uses)) for _ in range(rounds)]
    barrier = threading.Barrier(16)
    verdicts: dict[str, list[TokenVerdict]] = {tok.token_id: [] for tok in tokens}
    lock = threading.Lock()

    def worker() -> None:
        for tok in tokens:
            barrier.wait()  # all 16 threads present this token at once
            for _ in range(2):
                verdict = ledger.consume(tok.token_id, "dev", "fs.write")
                with lock:
                    verdicts[tok.token_id].append(verdict)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for tok in tokens:
        accepted = [v for v in verdicts[tok.token_id] if v.accepted]
        refused = [v for v in verdicts[tok.token_id] if not v.accepted]
        assert len(accepted) == max_uses
        assert len(refused) == 32 - max_uses
        assert sorted(v.uses_left for v in accepted if v.uses_left is not None) == [0, 1, 2, 3, 4]
        assert {v.rule for v in refused} == {"used_up"}
        assert {v.reason.split(" ", 2)[2] for v in refused} == {"was used 5 of 5 times"}
        assert len(ledger.uses(tok.token_id)) == max_uses


# -- revocation -----------------------------------------------------------------


def test_a_revoked_token_is_refused_with_who_and_why() -> None:
    clock = Clock()
    tok = token(token_id="tok-r")
    ledger = ledger_with(tok, clock)
    assert ledger.consume(tok, "dev", "fs.write").accepted
    clock.now = START + timedelta(minutes=1)
    assert ledger.revoke("tok-r", by="bob", reason="wrong repo") is True
    assert ledger.revoke("tok-r", by="carol") is False
    revocation = ledger.revocation("tok-r")
    assert revocation is not None
    assert (revocation.by, revocation.reason, revocation.at) == ("bob", "wrong repo", clock.now)
    verdict = ledger.verify(tok, "dev", "fs.write")
    assert (verdict.accepted, verdict.rule) == (False, "revoked")
    assert verdict.reason == (
        "token 'tok-r' was revoked by 'bob' at 2030-01-01T12:01:00.000000+00:00: wrong repo"
    )
    assert len(ledger.uses("tok-r")) == 1


def test_revoking_needs_a_known_token_and_a_name() -> None:
    ledger = ledger_with(token(token_id="t"))
    with pytest.raises(InvalidValueError, match="cannot revoke unknown token 'nope'"):
        ledger.revoke("nope", by="bob")
    with pytest.raises(InvalidValueError, match="by must be a non-empty str"):
        ledger.revoke("t", by="")
    assert ledger.revocation("t") is None


# -- the log --------------------------------------------------------------------


def test_the_log_holds_one_line_per_grant_use_and_revocation(tmp_path: Path) -> None:
    path = tmp_path / "approvals.jsonl"
    ledger = ApprovalLedger.open(path, clock=Clock())
    assert ledger.log == path
    assert path.read_bytes() == b""
    tok = ledger.grant(token(token_id="t1", max_uses=3))
    ledger.consume("t1", "dev", "fs.write", {"a": 1})
    ledger.consume("t1", "dev", "fs.read")  # refused: not logged
    ledger.revoke("t1", by="bob")
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["kind"] for r in records] == ["grant", "use", "revoke"]
    assert records[0] == {"v": 1, "kind": "grant", "token": tok.to_dict()}
    assert records[1]["arguments_digest"] == arguments_digest({"a": 1})
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o600


def test_loading_the_log_rebuilds_tokens_uses_and_revocations(tmp_path: Path) -> None:
    path = tmp_path / "approvals.jsonl"
    first = ApprovalLedger.open(path, clock=Clock())
    kept = first.grant(token(token_id="kept", max_uses=2, expires_at=START + timedelta(days=1)))
    gone = first.grant(token(token_id="gone"))
    first.consume("kept", "dev", "fs.write")
    first.revoke("gone", by="bob", reason="no")
    again = ApprovalLedger.load(path, clock=Clock())
    assert again.tokens() == [kept, gone]
    assert again.uses("kept") == first.uses("kept")
    assert again.revocation("gone") == first.revocation("gone")
    assert again.verify("gone", "dev", "fs.write").rule == "revoked"
    assert again.consume("kept", "dev", "fs.write").uses_left == 0
    assert again.consume("kept", "dev", "fs.write").rule == "used_up"


_SECOND_PROCESS = """
import json, sys
from datetime import datetime
from techrevati.runtime import ApprovalLedger, ApprovalToken
path, token_json, now = sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])
ledger = ApprovalLedger.load(path, clock=lambda: now)
token = ApprovalToken.from_dict(json.loads(token_json))
verdicts = [ledger.consume(token, "dev", "fs.write", {"path": "a.txt"}) for _ in range(2)]
print(json.dumps([[v.accepted, v.rule, v.uses_left] for v in verdicts]))
"""


def test_a_paused_token_is_presented_again_in_a_second_process(tmp_path: Path) -> None:
    path = tmp_path / "approvals.jsonl"
    clock = Clock()
    ledger = ApprovalLedger.open(path, clock=clock)
    args = {"path": "a.txt"}
    tok = ledger.grant(
        token(arguments_digest=arguments_digest(args), max_uses=2, expires_at=START + timedelta(1))
    )
    assert ledger.consume(tok, "dev", "fs.write", args).accepted
    carried = json.dumps(tok.to_dict())  # what a paused agent keeps

    done = subprocess.run(
        [sys.executable, "-c", _SECOND_PROCESS, str(path), carried, START.isoformat()],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[True, "accepted", 0], [False, "used_up", 0]]

    reloaded = ApprovalLedger.load(path, clock=clock)
    assert len(reloaded.uses(tok.token_id)) == 2
    verdict = reloaded.consume(tok, "dev", "fs.write", args)
    assert verdict.reason.endswith("was used 2 of 2 times")


def test_a_torn_last_line_is_skipped_and_the_lines_around_it_kept(tmp_path: Path) -> None:
    path = tmp_path / "approvals.jsonl"
    ledger = ApprovalLedger.open(path, clock=Clock())
    ledger.grant(token(token_id="t1", max_uses=5))
    ledger.consume("t1", "dev", "fs.write")
    whole = path.read_bytes()
    with path.open("ab") as file:  # a crash in the middle of writing a use
        file.write(b'{"v":1,"kind":"use","token_id":"t1","at":"2030-01-')

    with pytest.warns(ApprovalLogWarning, match=r"line 3 is not a whole record"):
        resumed = ApprovalLedger.load(path, clock=Clock())
    assert len(resumed.uses("t1")) == 1
    assert resumed.consume("t1", "dev", "fs.write").uses_left == 3  # appended on a line of its own
    assert path.read_bytes().startswith(whole)

    with pytest.warns(ApprovalLogWarning, match=r"line 3 is not a whole record"):
        again = ApprovalLedger.load(path, clock=Clock())
    assert len(again.uses("t1")) == 2
    assert again.tokens() == resumed.tokens()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"v":1,"kind":"grant"}', "line 2: grant record lacks token"),
        ('{"v":2,"kind":"use"}', "line 2: unknown format version 2"),
        ('{"v":1,"kind":"oops"}', "line 2: unknown record kind 'oops'"),
        ("[1, 2]", "line 2: a record must be a JSON object"),
        (
            '{"v":1,"kind":"revoke","token_id":"zz","at":"2030-01-01T00:00:00+00:00",'
            '"by":"b","reason":""}',
            "line 2: a record for token 'zz' never granted",
        ),
        (
            '{"v":1,"kind":"use","token_id":"t1","at":"2030-01-01T00:00:00+00:00",'
            '"role":"dev","tool":"x","arguments_digest":"nothex"}',
            "line 2: arguments_digest must be 64 hex digits",
        ),
    ],
)
def test_a_readable_line_that_is_no_record_raises_naming_it(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "approvals.jsonl"
    ApprovalLedger.open(path).grant(token(token_id="t1"))
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")
    with pytest.raises(InvalidValueError, match=message):
        ApprovalLedger.load(path)


def test_a_token_granted_twice_in_the_log_raises(tmp_path: Path) -> None:
    path = tmp_path / "approvals.jsonl"
    ApprovalLedger.open(path).grant(token(token_id="t1"))
    path.write_bytes(path.read_bytes() * 2)
    with pytest.raises(InvalidValueError, match="line 2: token 't1' is granted twice"):
        ApprovalLedger.load(path)


def test_loading_a_missing_log_raises(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="no approval log at"):
        ApprovalLedger.load(tmp_path / "missing.jsonl")
    with pytest.raises(InvalidValueError, match="log must be a path or None"):
        ApprovalLedger(log=3)  # type: ignore[arg-type]


def test_a_failed_write_raises_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "approvals.jsonl"
    ledger = ApprovalLedger.open(path, clock=Clock())
    tok = ledger.grant(token(token_id="t1", max_uses=1))
    path.unlink()
    path.mkdir()  # the log can no longer be written
    with pytest.raises(SinkWriteError, match="could not append to the approval log"):
        ledger.consume(tok, "dev", "fs.write")
    assert ledger.uses("t1") == []
    with pytest.raises(SinkWriteError):
        ledger.revoke("t1", by="bob")
    assert ledger.revocation("t1") is None
    with pytest.raises(SinkWriteError):
        ledger.grant(token(token_id="t2"))
    assert ledger.get("t2") is None


def test_the_public_names_are_exported() -> None:
    for name in (
        "ApprovalLedger",
        "ApprovalLogWarning",
        "ApprovalToken",
        "TokenRevocation",
        "TokenUse",
        "TokenVerdict",
        "arguments_digest",
        "canonical_arguments",
    ):
        assert name in techrevati.runtime.__all__
        assert getattr(techrevati.runtime, name) is getattr(approvals, name)
