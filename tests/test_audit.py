"""The audit chain: a 10,000-record chain verifies, and every kind of tampering names its record.

A pristine chain of 10,000 events is built once per module; each tampering
test copies it, damages the copy with plain ``sqlite3`` (as an attacker with
the file would) and checks that :func:`verify` names the exact seq and kind
of damage. Then: HMAC keys, anchors, archiving with checkpoints, the sink's
batching and reopening, several writers, ``kill -9``, the CLI.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from techrevati.runtime import Orchestrator
from techrevati.runtime._audit_chain import Signer, generic_record_text, record_text
from techrevati.runtime.audit import (
    GENESIS_HASH,
    RESERVED_KINDS,
    AuditChainError,
    AuditCheckpoint,
    AuditKeyError,
    AuditLog,
    AuditProblem,
    AuditSink,
    AuditVerdict,
    anchor,
    archive,
    chain_status,
    main,
    read_key_file,
    read_records,
    verify,
)
from techrevati.runtime.errors import (
    InvalidValueError,
    SchemaError,
    SinkClosedError,
    SinkWriteError,
    TechrevatiError,
)
from techrevati.runtime.events import AgentEvent, AgentFailureClass, EventName, UsageRecord
from techrevati.runtime.sqlite import SqliteSink
from tests.conftest import FakeClock, examples
from tests.sink_records import T0, event, usage

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
RECORDS = 10_000
ROOT = Path(__file__).resolve().parent.parent


def wall(start: datetime = T0) -> Callable[[], datetime]:
    """A wall clock that moves one second per reading."""
    moments = iter(start + timedelta(seconds=n) for n in range(10**9))
    return lambda: next(moments)


def build_chain(path: Path, count: int, *, key: bytes | None = None) -> None:
    with AuditSink(path, key=key, background=False, flush_every=1000, synchronous="normal") as sink:
        for i in range(count):
            sink.write_event(event(i=i))


def copy_db(source: Path, target: Path) -> Path:
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
    return target


def execute(path: Path, sql: str, *params: object) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(sql, params)


def rows_of(path: Path) -> list[tuple[int, str, str, str, str | None]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT seq, record, prev_hash, hash, mac FROM audit_log ORDER BY id"
        ).fetchall()


def rewrite(
    path: Path, transform: Callable[[list[tuple[object, ...]]], list[tuple[object, ...]]]
) -> None:
    """Replace the rows with ``transform(rows)``, stored in that order (ids 1, 2, ...)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        rows: list[tuple[object, ...]] = list(rows_of(path))
        new = transform(rows)
        conn.execute("DELETE FROM audit_log")
        conn.executemany(
            "INSERT INTO audit_log (id, seq, record, prev_hash, hash, mac) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(n, *row) for n, row in enumerate(new, start=1)],
        )


def link(prev_hex: str, seq: int, record: str) -> str:
    """The link hash as docs/compliance.md defines it, written out independently."""
    data = bytes.fromhex(prev_hex) + seq.to_bytes(8, "big") + record.encode("ascii")
    return hashlib.sha256(data).hexdigest()


def forged(prev_hex: str, seq: int, record: str, key: bytes | None = None) -> tuple[object, ...]:
    digest = link(prev_hex, seq, record)
    mac = None if key is None else hmac.new(key, bytes.fromhex(digest), "sha256").hexdigest()
    return (seq, record, prev_hex, digest, mac)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "pristine.db"
    build_chain(path, RECORDS)
    return path


@pytest.fixture(scope="module")
def pristine_keyed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audit") / "pristine-keyed.db"
    build_chain(path, 2_000, key=KEY)
    return path


@pytest.fixture
def chain(pristine: Path, tmp_path: Path) -> Path:
    return copy_db(pristine, tmp_path / "audit.db")


@pytest.fixture
def keyed(pristine_keyed: Path, tmp_path: Path) -> Path:
    return copy_db(pristine_keyed, tmp_path / "keyed.db")


def assert_broken(verdict: AuditVerdict, seq: int, problem: AuditProblem) -> None:
    assert not verdict.ok, verdict
    assert (verdict.first_bad_seq, verdict.problem) == (seq, problem), verdict.summary
    assert verdict.records == verdict.tip_seq - verdict.start_seq
    assert f"broken at seq {seq} ({problem.value})" in verdict.summary


# --- the 10,000-record chain and each kind of tampering ---------------------------------


def test_a_chain_of_10000_records_verifies_and_is_linked_as_documented(chain: Path) -> None:
    verdict = verify(chain)
    assert verdict.ok, verdict.summary
    assert (verdict.records, verdict.tip_seq, verdict.start_seq) == (RECORDS, RECORDS, 0)
    assert (verdict.first_bad_seq, verdict.problem, verdict.reason) == (None, None, None)
    prev = GENESIS_HASH
    for n, (seq, record, prev_hash, digest, mac) in enumerate(rows_of(chain), start=1):
        assert (seq, prev_hash, mac) == (n, prev, None)
        assert digest == link(prev, seq, record)
        prev = digest
    assert verdict.tip_hash == prev
    assert verdict.summary == (
        f"ok: {RECORDS} records (seq 1 to {RECORDS}) from the genesis; tip seq {RECORDS} {prev}"
    )


def test_editing_one_byte_of_a_record_names_that_record(chain: Path) -> None:
    (record,) = [r[1] for r in rows_of(chain) if r[0] == 4321]
    assert '"i":4320' in record
    execute(
        chain, "UPDATE audit_log SET record = ? WHERE seq = 4321", record.replace(":4320", ":4329")
    )
    verdict = verify(chain)
    assert_broken(verdict, 4321, AuditProblem.EDITED)
    assert verdict.reason == "its hash does not match its content: it was edited"


def test_deleting_a_record_names_the_missing_seq(chain: Path) -> None:
    execute(chain, "DELETE FROM audit_log WHERE seq = 5000")
    verdict = verify(chain)
    assert_broken(verdict, 5000, AuditProblem.DELETED)
    assert verdict.reason == "seq 5000 missing after seq 4999: deleted"


def test_deleting_a_run_of_records_names_the_first_and_the_span(chain: Path) -> None:
    execute(chain, "DELETE FROM audit_log WHERE seq BETWEEN 10 AND 19")
    verdict = verify(chain)
    assert_broken(verdict, 10, AuditProblem.DELETED)
    assert verdict.reason == "seq 10 to 19 missing after seq 9: deleted"


def test_inserting_a_forged_record_names_where_it_went_in(chain: Path) -> None:
    # The forger links the row properly (the right prev_hash and hash): only what follows breaks.
    def insert(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        prev = str(rows[6999][3])  # the hash of seq 7000
        fake = forged(prev, 7001, '{"kind":"event","name":"tool.approved"}')
        return [*rows[:7000], fake, *rows[7000:]]

    rewrite(chain, insert)
    verdict = verify(chain)
    assert_broken(verdict, 7001, AuditProblem.INSERTED)
    assert (
        verdict.reason == "seq 7001 comes again after seq 7001: a record was inserted (or copied)"
    )
    # The forged row checked good (nothing shows it is not the real seq 7001); the real one
    # after it is the duplicate that gives it away.
    assert verdict.tip_seq == 7001


def test_inserting_a_clumsily_forged_record_names_it_as_edited(chain: Path) -> None:
    def insert(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        _seq, record, prev, _, mac = rows[2999]
        return [*rows[:3000], (3001, str(record) + " ", prev, "0" * 64, mac), *rows[3000:]]

    rewrite(chain, insert)
    assert_broken(verify(chain), 3001, AuditProblem.EDITED)


def test_swapping_two_adjacent_records_names_the_first(chain: Path) -> None:
    def swap(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        rows[2499], rows[2500] = rows[2500], rows[2499]
        return rows

    rewrite(chain, swap)
    verdict = verify(chain)
    assert_broken(verdict, 2500, AuditProblem.REORDERED)
    assert verdict.reason == (
        "seq 2501 comes where seq 2500 should, which is stored further on: "
        "records were swapped or moved"
    )


def test_swapping_two_distant_records_names_the_first(chain: Path) -> None:
    def swap(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        rows[99], rows[8999] = rows[8999], rows[99]
        return rows

    rewrite(chain, swap)
    assert_broken(verify(chain), 100, AuditProblem.REORDERED)


def test_swapping_the_contents_of_two_rows_keeping_their_seqs_is_an_edit(chain: Path) -> None:
    with contextlib.closing(sqlite3.connect(chain)) as conn, conn:
        a, b = (
            conn.execute("SELECT record FROM audit_log WHERE seq = ?", (s,)).fetchone()[0]
            for s in (600, 601)
        )
        conn.execute("UPDATE audit_log SET record = ? WHERE seq = 600", (b,))
        conn.execute("UPDATE audit_log SET record = ? WHERE seq = 601", (a,))
    assert_broken(verify(chain), 600, AuditProblem.EDITED)


def test_a_record_copied_in_twice_is_an_insertion(chain: Path) -> None:
    rewrite(chain, lambda rows: [*rows[:51], rows[50], *rows[51:]])
    assert_broken(verify(chain), 51, AuditProblem.INSERTED)


def test_an_edit_with_its_hash_recomputed_breaks_the_next_link(chain: Path) -> None:
    with contextlib.closing(sqlite3.connect(chain)) as conn, conn:
        record, prev = conn.execute(
            "SELECT record, prev_hash FROM audit_log WHERE seq = 1234"
        ).fetchone()
        edited = record.replace('"detail 1233"', '"detail XXXX"')
        conn.execute(
            "UPDATE audit_log SET record = ?, hash = ? WHERE seq = 1234",
            (edited, link(prev, 1234, edited)),
        )
    verdict = verify(chain)
    assert_broken(verdict, 1235, AuditProblem.BROKEN_LINK)
    assert "seq 1234 was rewritten" in str(verdict.reason)


def test_a_malformed_row_is_named(chain: Path) -> None:
    execute(chain, "UPDATE audit_log SET seq = 'x' WHERE seq = 77")
    assert_broken(verify(chain), 77, AuditProblem.MALFORMED)


def test_a_hash_that_is_no_hash_is_malformed(chain: Path) -> None:
    execute(chain, "UPDATE audit_log SET hash = 'zz' WHERE seq = 3")
    assert_broken(verify(chain), 3, AuditProblem.MALFORMED)


def test_a_record_stored_as_invalid_utf8_is_an_edit(chain: Path) -> None:
    execute(chain, "UPDATE audit_log SET record = CAST(X'FF7B' AS TEXT) WHERE seq = 9")
    assert_broken(verify(chain), 9, AuditProblem.EDITED)


def test_the_first_of_several_tamperings_is_the_one_named(chain: Path) -> None:
    execute(chain, "DELETE FROM audit_log WHERE seq = 9000")
    execute(chain, "UPDATE audit_log SET record = record || ' ' WHERE seq = 300")
    assert_broken(verify(chain), 300, AuditProblem.EDITED)


def test_verification_streams_in_constant_memory(chain: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.db"
    build_chain(small, 500)

    def peak(path: Path) -> int:
        tracemalloc.start()
        try:
            assert verify(path).ok
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    big_peak, small_peak = peak(chain), peak(small)
    # 10,000 records are ~3 MB of text; the walk holds one row at a time.
    assert big_peak < 200_000
    assert big_peak < small_peak + 50_000


# --- what the chain alone cannot show, and the anchor that shows it -----------------------


def test_cutting_off_the_last_records_needs_an_anchor_to_show(chain: Path) -> None:
    mark = anchor(chain)
    assert (mark.seq, mark.records, mark.archive) == (RECORDS, RECORDS, None)
    execute(chain, "DELETE FROM audit_log WHERE seq > 9990")
    assert verify(chain).ok  # a shorter chain is still a chain
    verdict = verify(chain, anchor=mark)
    assert_broken(verdict, 9991, AuditProblem.TRUNCATED)
    assert "before the anchor's seq 10000" in str(verdict.reason)


def test_a_consistent_rewrite_of_an_unkeyed_chain_needs_an_anchor_to_show(chain: Path) -> None:
    mark = AuditCheckpoint.from_json(anchor(chain).to_json())

    def rewrite_all(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        prev, out = GENESIS_HASH, []
        for seq, record, *_ in rows:
            row = forged(prev, int(str(seq)), str(record).replace("writer", "editor"))
            out.append(row)
            prev = str(row[3])
        return out

    rewrite(chain, rewrite_all)
    assert verify(chain).ok
    assert_broken(verify(chain, anchor=mark), RECORDS, AuditProblem.ANCHOR_MISMATCH)


def test_an_anchor_round_trips_through_json_and_refuses_an_edit(chain: Path) -> None:
    mark = anchor(chain)
    assert AuditCheckpoint.from_json(mark.to_json()) == mark
    assert verify(chain, anchor=mark).ok
    data = json.loads(mark.to_json())
    data["hash"] = "1" * 64
    with pytest.raises(InvalidValueError, match="check hash does not match"):
        verify(chain, anchor=AuditCheckpoint.from_json(json.dumps(data)))
    with pytest.raises(InvalidValueError, match="a checkpoint needs seq"):
        AuditCheckpoint.from_json('{"seq": "1"}')
    with pytest.raises(InvalidValueError, match="JSON object"):
        AuditCheckpoint.from_json("[1]")


def test_an_anchor_in_the_middle_of_the_chain_is_checked_there(chain: Path, tmp_path: Path) -> None:
    early = tmp_path / "early.db"
    build_chain(early, 100)
    mark = anchor(early)  # the same records as the first 100 of the big chain
    assert verify(chain, anchor=mark).ok
    execute(chain, "UPDATE audit_log SET record = record || ' ' WHERE seq = 50")
    assert_broken(verify(chain, anchor=mark), 50, AuditProblem.EDITED)


def test_anchor_refuses_a_broken_chain(chain: Path) -> None:
    execute(chain, "DELETE FROM audit_log WHERE seq = 2")
    with pytest.raises(AuditChainError, match="broken at seq 2"):
        anchor(chain)


# --- HMAC keys ------------------------------------------------------------------------------


def test_a_keyed_chain_verifies_with_its_key_and_without_one(keyed: Path) -> None:
    with_key, without = verify(keyed, key=KEY), verify(keyed)
    assert with_key.ok
    assert with_key.keyed
    assert without.ok
    assert not without.keyed
    assert with_key.tip_hash == without.tip_hash
    assert "HMACs checked" in with_key.summary


def test_a_consistent_rewrite_of_a_keyed_chain_is_caught_at_the_first_row(keyed: Path) -> None:
    def rewrite_all(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        prev, out = GENESIS_HASH, []
        for seq, record, *_ in rows:
            row = forged(prev, int(str(seq)), str(record), key=OTHER_KEY)
            out.append(row)
            prev = str(row[3])
        return out

    rewrite(keyed, rewrite_all)
    assert verify(keyed).ok  # without the key it is a valid chain
    assert_broken(verify(keyed, key=KEY), 1, AuditProblem.BAD_MAC)


def test_a_keyed_chain_names_a_forged_insertion_itself(keyed: Path) -> None:
    def insert(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        fake = forged(str(rows[999][3]), 1001, '{"kind":"x"}', key=OTHER_KEY)
        return [*rows[:1000], fake, *rows[1000:]]

    rewrite(keyed, insert)
    assert_broken(verify(keyed), 1001, AuditProblem.INSERTED)
    assert_broken(verify(keyed, key=KEY), 1001, AuditProblem.BAD_MAC)


def test_an_edit_with_hash_recomputed_is_named_at_the_record_under_a_key(keyed: Path) -> None:
    with contextlib.closing(sqlite3.connect(keyed)) as conn, conn:
        record, prev = conn.execute(
            "SELECT record, prev_hash FROM audit_log WHERE seq = 10"
        ).fetchone()
        edited = record + " "
        conn.execute(
            "UPDATE audit_log SET record = ?, hash = ? WHERE seq = 10",
            (edited, link(prev, 10, edited)),
        )
    assert_broken(verify(keyed, key=KEY), 10, AuditProblem.BAD_MAC)


def test_a_removed_mac_and_a_wrong_key_are_named(keyed: Path) -> None:
    assert_broken(verify(keyed, key=OTHER_KEY), 1, AuditProblem.BAD_MAC)
    execute(keyed, "UPDATE audit_log SET mac = NULL WHERE seq = 5")
    verdict = verify(keyed, key=KEY)
    assert_broken(verdict, 5, AuditProblem.BAD_MAC)
    assert verdict.reason == "it has no HMAC, and a key was given"


def test_an_unkeyed_chain_fails_a_keyed_verification(chain: Path) -> None:
    assert_broken(verify(chain, key=KEY), 1, AuditProblem.BAD_MAC)


def test_writers_refuse_a_key_that_does_not_fit_the_file(
    keyed: Path, chain: Path, tmp_path: Path
) -> None:
    with pytest.raises(AuditKeyError, match="pass key="):
        AuditLog(keyed)
    with pytest.raises(AuditKeyError, match="not the HMAC key"):
        AuditSink(keyed, key=OTHER_KEY)
    with pytest.raises(AuditKeyError, match="started without a key"):
        AuditLog(chain, key=KEY)
    with pytest.raises(InvalidValueError, match="at least 16 bytes"):
        AuditLog(tmp_path / "new.db", key=b"short")
    with pytest.raises(InvalidValueError, match="key must be bytes"):
        AuditLog(tmp_path / "new.db", key="a string key" * 3)  # type: ignore[arg-type]
    with AuditLog(keyed, key=KEY) as log:
        assert log.keyed
        entry = log.append("incident", {"what": "x"})
    assert entry.seq == 2_001
    assert verify(keyed, key=KEY).ok
    assert issubclass(AuditKeyError, TechrevatiError)
    assert issubclass(AuditChainError, TechrevatiError)


def test_a_key_file_is_its_bytes_less_one_newline(tmp_path: Path) -> None:
    file = tmp_path / "key"
    file.write_bytes(KEY + b"\n")
    assert read_key_file(file) == KEY
    file.write_bytes(KEY + b"\r\n")
    assert read_key_file(file) == KEY
    file.write_bytes(KEY + b"\n\n")
    assert read_key_file(file) == KEY + b"\n"


# --- the sink: batches, reopening, several writers, the orchestrator ------------------------


def test_the_chain_continues_across_batches_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditSink(path, flush_every=100, background=False) as sink:
        for i in range(250):
            sink.write_event(event(i=i))
        sink.flush()
        assert sink.batches == 3
        assert sink.tip[0] == 250
    with AuditSink(path, flush_every=100, background=False) as sink:
        assert sink.tip[0] == 250  # read at open
        for i in range(250):
            sink.write_usage(usage(i))
    verdict = verify(path)
    assert verdict.ok
    assert verdict.records == 500
    assert [r[0] for r in rows_of(path)] == list(range(1, 501))


def test_records_are_stored_as_canonical_json_of_their_to_dict(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    ev = event(data={"z": 1, "a": [Decimal("0.10"), "é"]})
    rec = usage(3, cost="0.0000001")
    with AuditSink(path, background=False) as sink:
        sink.write_event(ev)
        sink.write_usage(rec)
    (_, first, *_), (_, second, *_) = rows_of(path)
    expected = {"kind": "event", **ev.to_dict()}
    expected["data"] = {"z": 1, "a": ["0.10", "é"]}
    assert json.loads(first) == expected
    assert first == json.dumps(expected, sort_keys=True, separators=(",", ":"))
    assert first.isascii()
    assert "\\u00e9" in first
    assert json.loads(second) == {"kind": "usage", **rec.to_dict()}
    assert '"cost_usd":"1E-7"' in second  # str(Decimal): exact


def test_an_unkeyed_writer_can_be_read_back_with_read_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditSink(path, background=False, wall_clock=wall()) as sink:
        sink.write_event(event(i=1))
        entry = sink.append("review.decision", {"approved": True, "cost": Decimal("1.50")})
        sink.write_usage(usage(1))
        sink.append("incident", {"severity": "low"})
    assert entry.seq == 2
    assert entry.kind == "review.decision"
    reviews = read_records(path, kind="review.decision")
    assert [(r.seq, r.hash) for r in reviews] == [(2, entry.hash)]
    assert reviews[0].record == {
        "kind": "review.decision",
        "timestamp": T0.isoformat(timespec="microseconds"),
        "data": {"approved": True, "cost": "1.50"},
    }
    assert [r.kind for r in read_records(path)] == ["event", "review.decision", "usage", "incident"]
    assert [r.seq for r in read_records(path, after_seq=2, limit=1)] == [3]


def test_append_comes_after_every_record_handed_over_before_it_and_is_durable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.db"
    with AuditSink(path, flush_every=1000, flush_interval=3600) as sink:
        for i in range(10):
            sink.write_event(event(i=i))
        entry = sink.append("review.decision", {"approved": False})
        assert entry.seq == 11
        assert len(rows_of(path)) == 11  # committed: another connection sees it
        assert sink.anchor().seq == 11


def test_append_refuses_reserved_kinds_and_payloads_with_no_canonical_form(tmp_path: Path) -> None:
    loop: list[object] = []
    loop.append(loop)
    with AuditLog(tmp_path / "audit.db") as log:
        for kind in sorted(RESERVED_KINDS):
            with pytest.raises(InvalidValueError, match="the library's own"):
                log.append(kind, {})
        with pytest.raises(InvalidValueError, match="kind must be a non-empty str"):
            log.append("  ", {})
        with pytest.raises(InvalidValueError, match="payload must be a mapping"):
            log.append("incident", [1, 2])  # type: ignore[arg-type]
        for bad in ({"x": object()}, {"x": float("nan")}, {"x": loop}, {1: "a", "b": 2}):
            with pytest.raises(InvalidValueError, match="JSON-serialisable"):
                log.append("incident", bad)  # type: ignore[arg-type]
        assert log.tip == (0, GENESIS_HASH)
    naive = AuditLog(tmp_path / "naive.db", wall_clock=lambda: datetime(2026, 1, 1))
    with naive as log, pytest.raises(InvalidValueError, match="aware datetime"):
        log.append("incident", {})
    with pytest.raises(SinkClosedError):
        log.append("incident", {})


def test_many_threads_appending_keep_one_gap_free_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditLog(path, synchronous="normal") as log:
        seqs: list[int] = []
        lock = threading.Lock()

        def work(n: int) -> None:
            for i in range(25):
                entry = log.append("note", {"thread": n, "i": i})
                with lock:
                    seqs.append(entry.seq)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(seqs) == list(range(1, 201))
    assert verify(path).records == 200


def test_two_sinks_and_a_log_on_one_file_share_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    one = AuditSink(path, flush_every=7, background=False)
    two = AuditSink(path, flush_every=5, background=False)
    log = AuditLog(path)
    for i in range(100):
        (one if i % 3 else two).write_event(event(i=i))
        if i % 17 == 0:
            log.append("note", {"i": i})
    for writer in (one, two, log):
        writer.close()
    verdict = verify(path)
    assert verdict.ok
    assert verdict.records == 100 + 6


def test_a_background_sink_behind_an_orchestrator_chains_every_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    sink = AuditSink(path)
    orch = Orchestrator("writer", "draft", sinks=[sink])
    with orch.session() as session:
        session.run_turn(lambda: "ok", model="m")
    sink.close()
    kinds = [(r.kind, r.record.get("name")) for r in read_records(path)]
    assert ("event", "session.started") in kinds
    assert ("event", "turn.completed") in kinds
    assert ("usage", None) in kinds
    assert verify(path).ok


def test_a_record_json_cannot_hold_is_stored_sanitised_and_counted(tmp_path: Path) -> None:
    loop: list[object] = []
    loop.append(loop)
    surrogate = json.loads('"a\\ud800b"')
    path = tmp_path / "audit.db"
    with AuditSink(path, background=False) as sink:
        sink.write_event(event(data={"s": surrogate}))  # ASCII escapes hold it as is
        sink.write_event(event(data={"loop": loop}))
        sink.write_event(event(data={1: "one", "b": 2}))  # type: ignore[dict-item]
        assert (sink.sanitised, sink.rejected) == (2, 0)
    texts = [r[1] for r in rows_of(path)]
    assert json.loads(texts[0])["data"] == {"s": surrogate}
    assert json.loads(texts[1])["data"] == {"loop": ["<cycle>"]}
    assert json.loads(texts[2])["data"] == {"1": "one", "b": 2}
    assert verify(path).ok


class _Unreadable(Mapping[str, object]):
    """Data whose every read raises: no form of the record can be made."""

    def __getitem__(self, key: str) -> object:
        raise RuntimeError("unreadable")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("unreadable")

    def __len__(self) -> int:
        raise RuntimeError("unreadable")


def test_a_record_with_no_storable_form_is_chained_as_rejected(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditSink(path, background=False) as sink:
        sink.write_event(AgentEvent(name="tool.completed", data=_Unreadable(), timestamp=T0))
        sink.write_event(event(i=2))
        assert (sink.sanitised, sink.rejected) == (0, 1)
    first = read_records(path)[0]
    assert first.kind == "rejected"
    assert first.record["record_type"] == "AgentEvent"
    assert "RuntimeError: unreadable" in str(first.record["reason"])
    assert verify(path).records == 2


def test_records_dropped_while_the_disk_refused_are_noted_in_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    clock = FakeClock()
    sink = AuditSink(
        path, background=False, flush_every=2, max_pending=4, clock=clock, wall_clock=wall()
    )
    store = sink._log._store
    failing = [True]

    def refuse(texts: object) -> tuple[int, str]:
        if failing[0]:
            raise OSError("disk full")
        return store(texts)  # type: ignore[arg-type]

    sink._log._store = refuse  # type: ignore[method-assign]
    for i in range(10):
        with contextlib.suppress(SinkWriteError):
            sink.write_event(event(i=i))
    assert sink.dropped == 6
    failing[0] = False
    sink.close()
    records = read_records(path)
    assert records[0].kind == "dropped"
    assert records[0].record["data"] == {"records": 6, "dropped_total": 6}
    assert [r.record["detail"] for r in records[1:]] == [f"detail {i}" for i in range(6, 10)]
    assert verify(path).ok


def test_an_audit_file_and_a_sqlite_sink_file_refuse_each_other(tmp_path: Path) -> None:
    runs = tmp_path / "runs.db"
    SqliteSink(runs).close()
    with pytest.raises(SchemaError, match="not an audit file"):
        AuditSink(runs)
    with pytest.raises(SchemaError, match="not an audit file"):
        verify(runs)
    audit = tmp_path / "audit.db"
    AuditLog(audit).close()
    with pytest.raises(SchemaError, match="another application"):
        SqliteSink(audit)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database at all " * 10)
    with pytest.raises(SchemaError):
        verify(text)
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "missing.db")


def test_an_empty_audit_file_verifies_with_no_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog(path).close()
    verdict = verify(path)
    assert verdict.ok
    assert verdict.records == 0
    assert verdict.tip_hash == GENESIS_HASH
    assert "no records" in verdict.summary


KILLED_WRITER = """
import os, sys
from techrevati.runtime.audit import AuditSink
from techrevati.runtime.events import AgentEvent
sink = AuditSink(sys.argv[1], flush_every=50)
for i in range(10**9):
    sink.write_event(AgentEvent(name="turn.completed", data={"i": i}))
    if i == 3000:
        os.write(1, b"go\\n")
"""


def test_a_sink_killed_mid_write_leaves_a_chain_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"go\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=20)
    verdict = verify(path)
    assert verdict.ok, verdict.summary
    assert verdict.records >= 3001 - 200  # max_lag: four batches of 50
    details = [r.record["data"] for r in read_records(path)]
    assert details == [{"i": i} for i in range(verdict.records)]


# --- archiving with a checkpoint -------------------------------------------------------------


def test_archiving_leaves_a_live_file_and_an_archive_that_both_verify(
    chain: Path, tmp_path: Path
) -> None:
    old = tmp_path / "archive.db"
    cp = archive(chain, 6001, old, wall_clock=wall())
    assert (cp.seq, cp.records, cp.archive, cp.mac) == (6000, 6000, "archive.db", None)
    live = verify(chain)
    assert live.ok, live.summary
    assert (live.start_seq, live.records, live.tip_seq) == (6000, 4001, 10_001)
    assert "after the checkpoint at seq 6000" in live.summary
    kept = verify(old)
    assert kept.ok
    assert (kept.records, kept.tip_seq, kept.tip_hash) == (6000, 6000, cp.hash)
    both = verify(old, chain)
    assert both.ok
    assert both.records == 10_001
    note = read_records(chain, kind="archive")[0]
    assert note.seq == 10_001
    assert note.record["data"] == {
        "through_seq": 6000,
        "hash": cp.hash,
        "archive": "archive.db",
        "records": 6000,
    }
    assert min(r[0] for r in rows_of(chain)) == 6001


def test_one_archive_file_takes_each_archiving_in_turn(chain: Path, tmp_path: Path) -> None:
    old = tmp_path / "archive.db"
    archive(chain, 3001, old)
    archive(chain, 8001, old)
    assert verify(old).records == 8000
    verdict = verify(old, chain)
    assert verdict.ok
    assert verdict.records == 10_002


def test_archives_in_separate_files_chain_together(chain: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "2026-01.db", tmp_path / "2026-02.db"
    archive(chain, 3001, first)
    archive(chain, 8001, second)
    alone = verify(second)
    assert alone.ok
    assert alone.start_seq == 3000
    assert verify(first, second, chain).ok
    assert_broken(verify(first, chain), 3001, AuditProblem.DELETED)
    overlap = verify(second, first)
    assert (overlap.first_bad_seq, overlap.problem) == (1, AuditProblem.INSERTED)
    assert "the files overlap" in str(overlap.reason)


def test_everything_can_be_archived(chain: Path, tmp_path: Path) -> None:
    archive(chain, RECORDS + 1, tmp_path / "all.db")
    verdict = verify(chain)
    assert verdict.summary.startswith(f"ok: 1 record (seq {RECORDS + 1} to {RECORDS + 1})")
    assert verdict.ok
    assert verdict.records == 1
    assert verdict.tip_seq == RECORDS + 1


def test_archiving_while_a_sink_writes_keeps_the_chain(chain: Path, tmp_path: Path) -> None:
    old = tmp_path / "archive.db"
    with AuditSink(chain, flush_every=10, background=False) as sink:
        for i in range(25):
            sink.write_event(event(i=i))
        archive(chain, 9000, old)
        for i in range(25):
            sink.write_event(event(i=i))
    assert verify(chain).ok
    verdict = verify(old, chain)
    assert verdict.ok
    assert verdict.records == RECORDS + 50 + 1


def test_tampering_with_the_checkpoint_is_detected(chain: Path, tmp_path: Path) -> None:
    archive(chain, 6001, tmp_path / "archive.db")
    saved = copy_db(chain, tmp_path / "saved.db")
    execute(chain, "UPDATE audit_checkpoint SET hash = ?", "1" * 64)
    verdict = verify(chain)
    assert (verdict.ok, verdict.first_bad_seq, verdict.problem) == (
        False,
        6000,
        AuditProblem.BAD_CHECKPOINT,
    )
    assert "check hash does not match its fields" in str(verdict.reason)
    # An attacker who also recomputes the check breaks the link to the first live record.
    fake = AuditCheckpoint.make(6000, "1" * 64, T0, archive="archive.db")
    live = copy_db(saved, tmp_path / "live.db")
    execute(
        live,
        "UPDATE audit_checkpoint SET hash = ?, created_at = ?, check_hash = ?",
        fake.hash,
        fake.created_at,
        fake.check,
    )
    assert_broken(verify(live), 6001, AuditProblem.BROKEN_LINK)
    # Dropping the checkpoint leaves records that start nowhere.
    gone = copy_db(saved, tmp_path / "gone.db")
    execute(gone, "DELETE FROM audit_checkpoint")
    assert_broken(verify(gone), 1, AuditProblem.DELETED)
    counted = copy_db(saved, tmp_path / "counted.db")
    execute(counted, "UPDATE audit_checkpoint SET records = 5")
    assert verify(counted).problem is AuditProblem.BAD_CHECKPOINT


def test_a_checkpoint_that_miscounts_is_refused_even_when_self_consistent(
    chain: Path, tmp_path: Path
) -> None:
    cp = archive(chain, 101, tmp_path / "archive.db")
    wrong = AuditCheckpoint(cp.seq, cp.hash, 5, cp.created_at, cp.archive)
    check = hashlib.sha256(wrong.signed_bytes()).hexdigest()
    execute(chain, "UPDATE audit_checkpoint SET records = 5, check_hash = ?", check)
    verdict = verify(chain)
    assert (verdict.first_bad_seq, verdict.problem) == (100, AuditProblem.BAD_CHECKPOINT)
    assert "it counts 5 records up to seq 100" in str(verdict.reason)


def test_an_unsigned_checkpoint_fails_a_keyed_verification(chain: Path, tmp_path: Path) -> None:
    archive(chain, 101, tmp_path / "archive.db")
    verdict = verify(chain, key=KEY)
    assert (verdict.first_bad_seq, verdict.problem) == (100, AuditProblem.BAD_CHECKPOINT)
    assert "it has no HMAC, and a key was given" in str(verdict.reason)


def test_a_keyed_checkpoint_is_signed_and_a_resigned_one_is_refused(
    keyed: Path, tmp_path: Path
) -> None:
    with pytest.raises(AuditKeyError, match="pass key="):
        archive(keyed, 1001, tmp_path / "nokey.db")
    cp = archive(keyed, 1001, tmp_path / "archive.db", key=KEY)
    assert cp.mac is not None
    assert verify(keyed, key=KEY).ok
    assert verify(tmp_path / "archive.db", keyed, key=KEY).ok
    fake = AuditCheckpoint.make(cp.seq, cp.hash, T0, archive="archive.db", key=OTHER_KEY)
    execute(
        keyed,
        "UPDATE audit_checkpoint SET created_at = ?, check_hash = ?, mac = ?",
        fake.created_at,
        fake.check,
        fake.mac,
    )
    assert verify(keyed).ok  # without the key the checkpoint is only self-consistent
    verdict = verify(keyed, key=KEY)
    assert (verdict.first_bad_seq, verdict.problem) == (1000, AuditProblem.BAD_CHECKPOINT)
    assert "its HMAC does not match" in str(verdict.reason)


def test_archive_refuses_a_broken_chain_and_moves_nothing(chain: Path, tmp_path: Path) -> None:
    execute(chain, "DELETE FROM audit_log WHERE seq = 10")
    old = tmp_path / "archive.db"
    with pytest.raises(AuditChainError, match="nothing was archived") as caught:
        archive(chain, 5000, old)
    assert isinstance(caught.value.verdict, AuditVerdict)
    assert caught.value.verdict.first_bad_seq == 10
    assert not old.exists()
    assert len(rows_of(chain)) == RECORDS - 1


def test_archive_refuses_a_seq_that_moves_nothing_or_too_much(chain: Path, tmp_path: Path) -> None:
    old = tmp_path / "archive.db"
    archive(chain, 101, old)
    for before in (1, 101, RECORDS + 3):
        with pytest.raises(InvalidValueError, match="before_seq must be"):
            archive(chain, before, old)
    with pytest.raises(InvalidValueError, match="another file"):
        archive(chain, 200, chain)


def test_an_archive_that_does_not_continue_is_refused(chain: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    build_chain(other, 10)
    rewrite(other, lambda rows: [forged(GENESIS_HASH, 1, "{}")])
    with pytest.raises(AuditChainError, match="not where the records to archive"):
        archive(chain, 500, other)
    assert verify(chain).records == RECORDS


def test_an_archiving_cut_short_between_the_files_can_be_run_again(
    chain: Path, tmp_path: Path
) -> None:
    before = copy_db(chain, tmp_path / "before.db")
    old = tmp_path / "archive.db"
    archive(chain, 4001, old)  # the archive is written; pretend the live commit never happened
    archive(before, 4001, old)
    assert verify(before).ok
    assert verify(old, before).ok
    again = copy_db(before, tmp_path / "again.db")
    archive(again, 6001, old)  # and the archive keeps going from where it ends
    assert verify(old, again).ok


def test_an_anchor_before_the_live_records_must_be_checked_with_the_archive(
    chain: Path, tmp_path: Path
) -> None:
    early = tmp_path / "early.db"
    build_chain(early, 100)
    mark = anchor(early)
    old = tmp_path / "archive.db"
    archive(chain, 5001, old)
    with pytest.raises(InvalidValueError, match="verify the archive first"):
        verify(chain, anchor=mark)
    assert verify(old, chain, anchor=mark).ok


# --- chain_status and the command line --------------------------------------------------------


def test_chain_status_reports_an_ok_and_a_broken_chain(chain: Path, keyed: Path) -> None:
    status = chain_status(chain)
    assert status == {
        "path": str(chain),
        "ok": True,
        "records": RECORDS,
        "first_seq": 1,
        "tip_seq": RECORDS,
        "tip_hash": verify(chain).tip_hash,
        "checkpoint_seq": None,
        "keyed": False,
        "hmac_checked": False,
        "first_bad_seq": None,
        "problem": None,
        "reason": None,
        "summary": verify(chain).summary,
    }
    json.dumps(status)
    execute(chain, "DELETE FROM audit_log WHERE seq = 42")
    broken = chain_status(chain)
    assert (broken["ok"], broken["first_bad_seq"], broken["problem"]) == (False, 42, "deleted")
    keyed_status = chain_status(keyed, key=KEY)
    assert keyed_status["keyed"] is True
    assert keyed_status["hmac_checked"] is True


def test_the_cli_verifies_and_names_the_first_broken_record(
    chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(chain)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {RECORDS} records (seq 1 to {RECORDS})")
    execute(chain, "DELETE FROM audit_log WHERE seq = 777")
    assert main(["verify", str(chain)]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("broken at seq 777 (deleted): ")


def test_the_cli_refuses_bad_input_on_one_line(
    tmp_path: Path, chain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(tmp_path / "missing.db")]) == 2
    assert capsys.readouterr().err == f"audit: no such file: {tmp_path / 'missing.db'}\n"
    runs = tmp_path / "runs.db"
    SqliteSink(runs).close()
    assert main(["verify", str(runs)]) == 2
    assert "not an audit file" in capsys.readouterr().err
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    assert main(["verify", str(chain), "--key-file", str(short)]) == 2
    assert "at least 16 bytes" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["verify"]) == 2
    assert main(["archive", str(chain), "--before", "x", "--to", "a.db"]) == 2
    capsys.readouterr()


def test_the_cli_archives_anchors_and_checks_a_key(
    keyed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY + b"\n")
    old = tmp_path / "archive.db"
    assert main(["verify", str(keyed), "--key-file", str(key_file)]) == 0
    assert "HMACs checked" in capsys.readouterr().out
    assert main(["archive", str(keyed), "--before", "501", "--to", str(old)]) == 2
    assert "pass key=" in capsys.readouterr().err
    assert (
        main(
            [
                "archive",
                str(keyed),
                "--before",
                "501",
                "--to",
                str(old),
                "--key-file",
                str(key_file),
            ]
        )
        == 0
    )
    assert "checkpoint at seq 500" in capsys.readouterr().out
    assert main(["verify", str(old), str(keyed), "--key-file", str(key_file)]) == 0
    assert "ok: 2001 records (seq 1 to 2001)" in capsys.readouterr().out
    assert main(["anchor", str(keyed), "--key-file", str(key_file)]) == 0
    mark_file = tmp_path / "anchor.json"
    mark_file.write_text(capsys.readouterr().out)
    assert AuditCheckpoint.from_json(mark_file.read_text()).seq == 2001
    execute(keyed, "DELETE FROM audit_log WHERE seq > 1990")
    assert main(["verify", str(keyed), "--anchor", str(mark_file)]) == 2
    assert capsys.readouterr().out.startswith("broken at seq 1991 (truncated)")


def test_the_cli_runs_in_its_own_process(chain: Path) -> None:
    execute(chain, "UPDATE audit_log SET record = record || ' ' WHERE seq = 9999")
    code = "import sys; from techrevati.runtime.audit import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", code, "verify", str(chain)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == (
        f"broken at seq 9999 (edited): {chain}: "
        "its hash does not match its content: it was edited\n"
    )


# --- properties on small chains ---------------------------------------------------------------

_TAMPER = st.one_of(
    st.tuples(st.just("edit"), st.integers(1, 20), st.sampled_from([1, 2, 3])),
    st.tuples(st.just("delete"), st.integers(1, 19), st.just(0)),
    st.tuples(st.just("swap"), st.integers(1, 19), st.integers(1, 19)),
    st.tuples(st.just("copy"), st.integers(1, 20), st.just(0)),
)


@settings(max_examples=examples(40), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tamper=_TAMPER)
def test_any_single_tampering_names_the_expected_seq(
    tmp_path: Path, tamper: tuple[str, int, int]
) -> None:
    path = tmp_path / "small.db"
    for leftover in (path, tmp_path / "small.db-wal", tmp_path / "small.db-shm"):
        leftover.unlink(missing_ok=True)
    build_chain(path, 20)
    kind, seq, other = tamper
    expected: tuple[int, AuditProblem]
    if kind == "edit":
        column = {1: "record", 2: "prev_hash", 3: "hash"}[other]
        # flip the last character: hex stays hex, a record stays text
        execute(
            path,
            f"UPDATE audit_log SET {column} = substr({column}, 1, length({column}) - 1) || "
            f"CASE WHEN substr({column}, -1) = '0' THEN '1' ELSE '0' END WHERE seq = ?",
            seq,
        )
        expected = (seq, AuditProblem.EDITED)
    elif kind == "delete":
        execute(path, "DELETE FROM audit_log WHERE seq = ?", seq)
        expected = (seq, AuditProblem.DELETED)
    elif kind == "swap":
        if seq == other:
            return
        low, high = sorted((seq, other))

        def swap(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
            rows[low - 1], rows[high - 1] = rows[high - 1], rows[low - 1]
            return rows

        rewrite(path, swap)
        expected = (low, AuditProblem.REORDERED)
    else:
        rewrite(path, lambda rows: [*rows[:seq], rows[seq - 1], *rows[seq:]])
        expected = (seq, AuditProblem.INSERTED)
    verdict = verify(path)
    assert (verdict.first_bad_seq, verdict.problem) == expected, verdict.summary


@settings(max_examples=examples(30))
@given(
    data=st.dictionaries(
        st.text(max_size=8),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=5,
    )
)
def test_a_record_text_is_canonical_and_reads_back_as_its_to_dict(data: dict[str, object]) -> None:
    from techrevati.runtime._audit_chain import canonical

    ev = AgentEvent(name="tool.completed", data=data, timestamp=T0)
    text = record_text(ev)
    assert text.isascii()
    parsed = json.loads(text)
    assert parsed == json.loads(json.dumps({"kind": "event", **ev.to_dict()}))
    assert canonical(parsed) == text  # re-encoding what was read gives the same bytes


_TEXT = st.text(max_size=6) | st.sampled_from(["", "é", json.loads('"\\ud800"'), '"\\\n'])
_WHEN = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3, minutes=-30))]))


@settings(max_examples=examples(60))
@given(
    name=st.sampled_from(["turn.completed", EventName.TOOL_DENIED, "x\u00e9"]),
    role=_TEXT,
    status=st.none() | _TEXT,
    failure=st.none() | st.sampled_from(AgentFailureClass),
    detail=st.none() | _TEXT,
    data=st.dictionaries(_TEXT, st.integers() | _TEXT | st.floats() | st.none(), max_size=3),
    project=st.none() | st.integers() | _TEXT,
    when=_WHEN,
)
def test_the_event_fast_path_writes_the_generic_text(  # noqa: PLR0917
    name: str,
    role: str,
    status: str | None,
    failure: AgentFailureClass | None,
    detail: str | None,
    data: dict[str, object],
    project: int | str | None,
    when: datetime,
) -> None:
    ev = AgentEvent(
        name=name,
        role=role,
        phase=role[::-1],
        status=status,
        failure_class=failure,
        detail=detail,
        data=data,
        timestamp=when,
        session_id=role + "s",
        worker_id="w",
        project_id=project,
    )
    assert record_text(ev) == generic_record_text(ev)


@settings(max_examples=examples(60))
@given(
    tokens=st.lists(st.integers(0, 2**70), min_size=6, max_size=6),
    cost=st.decimals(allow_nan=False, allow_infinity=False),
    duration=st.none() | st.floats() | st.integers(-5, 5),
    text=_TEXT,
    tier=st.none() | _TEXT,
    priced=st.booleans(),
    project=st.none() | st.integers() | _TEXT,
    when=_WHEN,
)
def test_the_usage_fast_path_writes_the_generic_text(  # noqa: PLR0917
    tokens: list[int],
    cost: Decimal,
    duration: float | None,
    text: str,
    tier: str | None,
    priced: bool,
    project: int | str | None,
    when: datetime,
) -> None:
    rec = UsageRecord(
        model="m" + text,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cache_read_tokens=tokens[2],
        cache_write_tokens=tokens[3],
        reasoning_tokens=tokens[4],
        cache_write_1h_tokens=tokens[5],
        cost_usd=cost,
        priced=priced,
        duration_seconds=duration,
        role=text,
        phase=text * 2,
        session_id="s",
        worker_id=text,
        project_id=project,
        timestamp=when,
        service_tier=tier,
    )
    assert record_text(rec) == generic_record_text(rec)


def test_records_of_unexpected_field_types_take_the_generic_path() -> None:
    class Name(str):
        pass

    odd: list[AgentEvent | UsageRecord] = [
        AgentEvent(name="n", role=Name("r"), timestamp=T0),
        AgentEvent(name="n", project_id=True, timestamp=T0),
        AgentEvent(name="n", data={"k": (1, 2)}, timestamp=T0),
        UsageRecord(model="m", project_id=1.5, timestamp=T0),  # type: ignore[arg-type]
        UsageRecord(model="m", duration_seconds=float("nan"), timestamp=T0),
        UsageRecord(model="m", priced=1, timestamp=T0),  # type: ignore[arg-type]
        UsageRecord(model=Name("m"), timestamp=T0),
    ]
    for record in odd:
        assert record_text(record) == generic_record_text(record)


@settings(max_examples=examples(40))
@given(key=st.binary(min_size=16, max_size=150), message=st.binary(max_size=100))
def test_the_signer_is_hmac_sha256(key: bytes, message: bytes) -> None:
    assert Signer(key)(message) == hmac.digest(key, message, "sha256")


@pytest.mark.parametrize("length", [16, 32, 63, 64, 65, 200])
def test_the_signer_is_hmac_sha256_at_the_block_size_edges(length: int) -> None:
    key = bytes(range(length % 256)) + bytes(max(0, length - 256))
    assert Signer(key)(b"message") == hmac.digest(key, b"message", "sha256")


def test_without_the_c_encoder_the_data_is_written_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from techrevati.runtime import _audit_chain

    ev = event(data={"b": [1, 2.5, None], "a": {"z": "é", "y": Decimal("1E-7")}})
    fast = record_text(ev)
    monkeypatch.setattr(_audit_chain, "_DATA", None)
    assert record_text(ev) == fast == generic_record_text(ev)


def test_a_log_and_a_sink_are_both_audit_appenders(tmp_path: Path) -> None:
    from techrevati.runtime.audit import AuditAppender

    def record_decision(audit: AuditAppender, who: str) -> int:
        return audit.append("review.decision", {"reviewer": who}).seq

    with AuditLog(tmp_path / "log.db") as log, AuditSink(tmp_path / "sink.db") as sink:
        assert isinstance(log, AuditAppender)
        assert isinstance(sink, AuditAppender)
        assert record_decision(log, "ana") == record_decision(sink, "bob") == 1
    assert not isinstance(object(), AuditAppender)


def test_a_chain_verifies_while_its_sink_keeps_writing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditSink(path, flush_every=10) as sink:
        for i in range(35):
            sink.write_event(event(i=i))
        sink.flush()
        assert verify(path).records == 35
        for i in range(35):
            sink.write_event(event(i=i))
        sink.flush()
        status = chain_status(path)
        assert (status["ok"], status["records"]) == (True, 70)
