"""JsonlSink: the branches of opening a file that the rest of the suite left untaken.

Found by ``coverage run --branch`` (docs/testing.md): a file of blank lines
only, a torn file whose every side-file name is taken, and a platform without
``os.O_DIRECTORY``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from techrevati.runtime import jsonl
from techrevati.runtime.events import AgentEvent
from techrevati.runtime.jsonl import JsonlSink, read_jsonl
from tests.sink_records import event


def test_a_file_of_blank_lines_only_is_ours_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n  \n\n")
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    assert path.read_bytes().startswith(b"\n  \n\n{")
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1]


def test_a_torn_file_whose_side_file_names_are_all_taken_is_refused_and_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Frozen:
            return cls(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)

    monkeypatch.setattr(jsonl, "datetime", Frozen)
    path = tmp_path / "torn.jsonl"
    path.write_bytes(b'{"kind":"ev')
    stamp = "20260102T030405.000006Z"
    for attempt in range(1, 1000):
        suffix = "" if attempt == 1 else f"-{attempt}"
        (tmp_path / f"torn.jsonl.torn-{stamp}{suffix}").write_bytes(b"taken")
    with pytest.raises(FileExistsError, match="no free side file name"):
        JsonlSink(path)
    assert path.read_bytes() == b'{"kind":"ev'  # nothing cut: the bytes had nowhere to go


def test_without_o_directory_a_new_file_is_made_without_syncing_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_DIRECTORY")
    synced: list[int] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching_fsync)
    path = tmp_path / "new.jsonl"
    sink = JsonlSink(path)
    assert synced == []  # no directory to open and sync
    sink.write_event(event(i=1))
    sink.close()
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1]
