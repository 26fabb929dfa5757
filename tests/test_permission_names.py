"""The name index: the first entry in list order that a name matches, found by prefix or suffix.

Checked against the plain reading (try every entry in order) for generated lists,
so the index can never find another entry, or miss one, whatever it files where.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime._permission_names import Glob, NameIndex, grammar_violation, is_glob
from tests.conftest import examples

SEGMENT = st.text(alphabet="ab_-", min_size=0, max_size=3)
PIECE = st.one_of(SEGMENT, st.sampled_from(["*", "**", "?", ".", ":", "[ab]", "[!a]", "[--0]"]))
ENTRY = st.lists(PIECE, min_size=1, max_size=5).map("".join).filter(bool)
NAME = st.lists(st.one_of(SEGMENT, st.sampled_from([".", ":"])), min_size=1, max_size=5).map(
    "".join
)


def first_match(entries: list[str], name: str) -> str | None:
    for entry in entries:
        if Glob(entry).matches(name) if is_glob(entry) else entry == name:
            return entry
    return None


@pytest.mark.hypothesis
@settings(max_examples=examples(400))
@given(entries=st.lists(ENTRY, min_size=1, max_size=12), names=st.lists(NAME, max_size=8))
def test_the_index_finds_what_trying_every_entry_in_order_finds(
    entries: list[str], names: list[str]
) -> None:
    index = NameIndex(entries)
    for name in [*names, *entries]:
        if grammar_violation(name) is None:
            assert index.match(name) == first_match(entries, name), (entries, name)


def test_globs_are_filed_by_their_literal_start_or_end() -> None:
    index = NameIndex(["*_admin", "tool_*", "*", "exact"])
    assert index.match("x_admin") == "*_admin"
    assert index.match("tool_a") == "tool_*"
    assert index.match("exact") == "*"  # "*" comes first in the list
    assert NameIndex(["exact", "*"]).match("exact") == "exact"
    assert index.match("a.b") is None  # "*" stays within one segment
    assert Glob("*_admin").suffix == "_admin"
    assert Glob("tool_*").prefix == "tool_"
    assert Glob("a[bc]").suffix == ""
    assert len(index) == 4
    assert index.entries() == ["*_admin", "tool_*", "*", "exact"]


def test_a_class_never_matches_a_separator() -> None:
    assert not Glob("fs[--0]read").matches("fs.read")
    assert not Glob("fs[!x]read").matches("fs:read")
    assert Glob("fs[--0]read").matches("fs-read")
