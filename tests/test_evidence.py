"""The evidence gate: records, requirements per level, staleness, the outcome and its condition."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati import runtime
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.evidence import (
    CHANGED_AT_KEY,
    DEFAULT_REQUIREMENTS,
    EVIDENCE_KEY,
    MAX_REQUIREMENT_LENGTH,
    REVISION_KEY,
    Evidence,
    EvidenceGate,
    EvidenceLog,
    EvidenceOutcome,
    EvidenceRequirements,
    EvidenceSatisfied,
)
from techrevati.runtime.policy_engine import (
    PhaseCompleted,
    PhaseContext,
    PolicyAction,
    PolicyActionData,
    PolicyEngine,
    PolicyEvaluationError,
    PolicyRule,
    Verdict,
)
from techrevati.runtime.quality_gate import QualityLevel
from tests.conftest import examples

L = QualityLevel
HYPOTHESIS = settings(max_examples=examples(150))
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REV = "a1b2c3"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(
    requirement: str,
    exit_code: int = 0,
    *,
    seconds: float = 0,
    revision: str = REV,
) -> Evidence:
    return Evidence(requirement, exit_code=exit_code, ran_at=at(seconds), revision=revision)


def passing(*names: str, revision: str = REV, seconds: float = 0) -> list[Evidence]:
    return [ev(name, 0, seconds=seconds, revision=revision) for name in names]


STRICT_NAMES = ("tests.targeted", "tests.package", "lint")


# -- requirements per level --------------------------------------------------------


def test_default_requirements_are_cumulative_as_the_issue_lists_them() -> None:
    assert DEFAULT_REQUIREMENTS.required(L.MINIMAL) == ()
    assert DEFAULT_REQUIREMENTS.required(L.STANDARD) == ("tests.targeted",)
    assert DEFAULT_REQUIREMENTS.required(L.STRICT) == STRICT_NAMES
    assert DEFAULT_REQUIREMENTS.required(L.RELEASE) == (
        *STRICT_NAMES,
        "tests.full",
        "review.approved",
        "changelog.updated",
    )
    assert EvidenceGate(L.STRICT).requirements is DEFAULT_REQUIREMENTS
    assert EvidenceGate("release").required == DEFAULT_REQUIREMENTS.required(L.RELEASE)


@HYPOTHESIS
@given(low=st.sampled_from(list(L)), high=st.sampled_from(list(L)))
def test_a_higher_level_needs_everything_a_lower_one_does(
    low: QualityLevel, high: QualityLevel
) -> None:
    lower, higher = sorted((low, high))
    below = set(DEFAULT_REQUIREMENTS.required(lower))
    above = set(DEFAULT_REQUIREMENTS.required(higher))
    assert below <= above
    assert (below == above) == (lower == higher)


def test_custom_requirements_add_per_level_and_accumulate() -> None:
    custom = EvidenceRequirements({2: ["unit"], 4: ("e2e", "sign-off_1")})
    assert custom.required(L.MINIMAL) == ()
    assert custom.required("STANDARD") == ("unit",)
    assert custom.required(L.STRICT) == ("unit",)
    assert custom.required(L.RELEASE) == ("unit", "e2e", "sign-off_1")
    assert custom.added[L.STRICT] == ()
    assert EvidenceGate(L.RELEASE, custom).requirements is custom
    assert custom == EvidenceRequirements({"standard": ["unit"], " Release": ["e2e", "sign-off_1"]})
    gate = EvidenceGate(L.STRICT, {L.MINIMAL: ["smoke"], L.STRICT: ["types"]})
    assert gate.required == ("smoke", "types")
    assert gate.evaluate(passing("smoke", "types"), revision=REV).satisfied
    assert not gate.evaluate(passing("smoke", "tests.targeted"), revision=REV).satisfied


@pytest.mark.parametrize(
    ("added", "match"),
    [
        ({L.STRICT: ["lint"], L.RELEASE: ["lint"]}, "'lint' is listed at STRICT and RELEASE"),
        ({L.STRICT: ["lint", "lint"]}, "'lint' is listed at STRICT and STRICT"),
        ({"strict": ["a"], "STRICT": ["b"]}, "level STRICT twice"),
        ({"perfect": ["a"]}, "unknown quality level 'perfect'"),
        ({L.STRICT: "lint"}, "requirements of STRICT must be a list of names, got 'lint'"),
        ({L.STRICT: ["no spaces"]}, "'no spaces'"),
        ({L.STRICT: [3]}, "got 3"),
        ([("STRICT", ["lint"])], "must be a mapping"),
    ],
)
def test_malformed_requirements_are_refused_naming_the_value(added: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        EvidenceRequirements(added)  # type: ignore[arg-type]


def test_gate_refuses_an_unknown_level_or_requirements_of_the_wrong_kind() -> None:
    with pytest.raises(InvalidValueError, match="'great'"):
        EvidenceGate("great")
    with pytest.raises(InvalidValueError, match="got 'lint'"):
        EvidenceGate(L.STRICT, "lint")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="'perfect'"):
        DEFAULT_REQUIREMENTS.required("perfect")


def test_requirements_round_trip_through_a_dict() -> None:
    data = DEFAULT_REQUIREMENTS.to_dict()
    assert data == {
        "MINIMAL": [],
        "STANDARD": ["tests.targeted"],
        "STRICT": ["tests.package", "lint"],
        "RELEASE": ["tests.full", "review.approved", "changelog.updated"],
    }
    again = EvidenceRequirements.from_dict(json.loads(json.dumps(data)))
    assert again == DEFAULT_REQUIREMENTS
    assert again.required(L.RELEASE) == DEFAULT_REQUIREMENTS.required(L.RELEASE)
    with pytest.raises(InvalidValueError, match="level STRICT twice"):
        EvidenceRequirements.from_dict({"STRICT": ["a"], "strict": ["b"]})
    with pytest.raises(InvalidValueError, match="must be a list of names"):
        EvidenceRequirements.from_dict({"STRICT": "lint"})
    with pytest.raises(InvalidValueError, match="must be a mapping"):
        EvidenceRequirements.from_dict(["STRICT"])  # type: ignore[arg-type]


# -- the outcome -----------------------------------------------------------------


def test_no_evidence_leaves_every_requirement_missing() -> None:
    outcome = EvidenceGate(L.STRICT).evaluate([], revision=REV)
    assert outcome == EvidenceOutcome(
        satisfied=False,
        level=L.STRICT,
        revision=REV,
        changed_at=None,
        required=STRICT_NAMES,
        missing=STRICT_NAMES,
        stale=(),
        failed=(),
        records={},
    )
    assert outcome.reason == (
        "STRICT not satisfied at revision 'a1b2c3': missing tests.targeted, tests.package, lint"
    )


def test_fresh_passing_evidence_for_every_requirement_satisfies() -> None:
    records = passing(*STRICT_NAMES)
    outcome = EvidenceGate(L.STRICT).evaluate(records, revision=REV)
    assert outcome.satisfied
    assert (outcome.missing, outcome.stale, outcome.failed) == ((), (), ())
    assert dict(outcome.records) == {record.requirement: record for record in records}
    assert outcome.reason == (
        "STRICT satisfied at revision 'a1b2c3': tests.targeted, tests.package, lint passed"
    )


def test_minimal_needs_no_evidence() -> None:
    outcome = EvidenceGate(L.MINIMAL).evaluate([], revision=REV)
    assert outcome.satisfied
    assert outcome.required == ()
    assert outcome.reason == "MINIMAL needs no evidence"


def test_a_passing_record_against_another_revision_is_stale() -> None:
    records = [*passing("tests.targeted", "lint"), *passing("tests.package", revision="old")]
    outcome = EvidenceGate(L.STRICT).evaluate(records, revision=REV)
    assert not outcome.satisfied
    assert outcome.stale == ("tests.package",)
    assert (outcome.missing, outcome.failed) == ((), ())
    assert outcome.records["tests.package"].revision == "old"
    assert outcome.reason == (
        "STRICT not satisfied at revision 'a1b2c3':"
        " stale tests.package (ran against revision 'old')"
    )


def test_a_record_older_than_the_last_change_is_stale() -> None:
    records = [ev("tests.targeted", seconds=10), ev("tests.package", seconds=30)]
    records.append(ev("lint", seconds=20))
    gate = EvidenceGate(L.STRICT)
    assert gate.evaluate(records, revision=REV, changed_at=at(5)).satisfied
    outcome = gate.evaluate(records, revision=REV, changed_at=at(20))
    assert outcome.stale == ("tests.targeted",)
    assert outcome.changed_at == at(20)
    assert not outcome.satisfied
    assert outcome.reason.endswith(
        "stale tests.targeted (ran at 2026-03-02T09:00:10.000000+00:00, before the last change)"
    )
    late = gate.evaluate(records, revision=REV, changed_at=at(31))
    assert late.stale == STRICT_NAMES


def test_a_record_run_at_the_moment_of_the_change_counts() -> None:
    gate = EvidenceGate(L.STANDARD)
    assert gate.evaluate([ev("tests.targeted", seconds=20)], revision=REV, changed_at=at(20))
    later = gate.evaluate(
        [ev("tests.targeted", seconds=20)], revision=REV, changed_at=at(20.000001)
    )
    assert later.stale == ("tests.targeted",)


def test_changed_at_in_another_zone_is_compared_as_the_same_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    changed = datetime(2026, 3, 2, 11, 0, 15, tzinfo=plus_two)  # 09:00:15 UTC
    gate = EvidenceGate(L.STANDARD)
    assert gate.evaluate([ev("tests.targeted", seconds=15)], revision=REV, changed_at=changed)
    outcome = gate.evaluate([ev("tests.targeted", seconds=14)], revision=REV, changed_at=changed)
    assert outcome.stale == ("tests.targeted",)
    assert outcome.changed_at == changed
    assert outcome.changed_at is not None
    assert outcome.changed_at.tzinfo is UTC


def test_the_latest_fresh_record_failing_fails_the_requirement() -> None:
    records = [
        ev("tests.targeted", 0, seconds=1),
        ev("tests.targeted", 2, seconds=2),
        ev("tests.package"),
        Evidence("lint", passed=False, ran_at=T0, revision=REV),
    ]
    outcome = EvidenceGate(L.STRICT).evaluate(records, revision=REV)
    assert outcome.failed == ("tests.targeted", "lint")
    assert (outcome.missing, outcome.stale) == ((), ())
    assert outcome.records["tests.targeted"].exit_code == 2
    assert outcome.reason == (
        "STRICT not satisfied at revision 'a1b2c3': failed tests.targeted (exit code 2), lint"
    )


def test_a_later_pass_replaces_an_earlier_failure_whatever_the_order_given() -> None:
    gate = EvidenceGate(L.STANDARD)
    fail, fixed = ev("tests.targeted", 1, seconds=1), ev("tests.targeted", 0, seconds=2)
    assert gate.evaluate([fail, fixed], revision=REV).satisfied
    assert gate.evaluate([fixed, fail], revision=REV).satisfied
    broke = ev("tests.targeted", 1, seconds=3)
    assert gate.evaluate([broke, fixed, fail], revision=REV).failed == ("tests.targeted",)


def test_records_run_at_the_same_moment_go_to_the_one_given_last() -> None:
    gate = EvidenceGate(L.STANDARD)
    fail, ok = ev("tests.targeted", 1), ev("tests.targeted", 0)
    assert gate.evaluate([fail, ok], revision=REV).satisfied
    assert gate.evaluate([ok, fail], revision=REV).failed == ("tests.targeted",)
    old_fail, old_ok = ev("tests.targeted", 1, revision="old"), ev("tests.targeted", revision="x")
    assert gate.evaluate([old_fail, old_ok], revision=REV).records["tests.targeted"] is old_ok
    assert gate.evaluate([old_ok, old_fail], revision=REV).records["tests.targeted"] is old_fail


def test_fresh_evidence_is_not_displaced_by_a_newer_stale_record() -> None:
    records = [ev("tests.targeted", seconds=1), ev("tests.targeted", 1, seconds=9, revision="b")]
    outcome = EvidenceGate(L.STANDARD).evaluate(records, revision=REV)
    assert outcome.satisfied
    assert outcome.records["tests.targeted"].revision == REV


def test_a_stale_failure_is_stale_not_failed() -> None:
    outcome = EvidenceGate(L.STANDARD).evaluate(
        [ev("tests.targeted", 1, revision="old")], revision=REV
    )
    assert outcome.stale == ("tests.targeted",)
    assert outcome.failed == ()


def test_one_outcome_lists_missing_stale_and_failed_together() -> None:
    records = [
        ev("tests.targeted", 1),
        ev("tests.package", revision="old"),
        *passing("tests.full", "review.approved"),
    ]
    outcome = EvidenceGate(L.RELEASE).evaluate(records, revision=REV)
    assert outcome.missing == ("lint", "changelog.updated")
    assert outcome.stale == ("tests.package",)
    assert outcome.failed == ("tests.targeted",)
    assert outcome.reason == (
        "RELEASE not satisfied at revision 'a1b2c3': missing lint, changelog.updated;"
        " stale tests.package (ran against revision 'old'); failed tests.targeted (exit code 1)"
    )


def test_evidence_for_names_the_gate_does_not_need_is_ignored() -> None:
    records = [*passing("tests.targeted"), ev("tests.full", 1), ev("docs", 1)]
    outcome = EvidenceGate(L.STANDARD).evaluate(records, revision=REV)
    assert outcome.satisfied
    assert set(outcome.records) == {"tests.targeted"}


def test_outcome_to_dict_is_json_with_every_list_and_the_reason() -> None:
    records = [ev("tests.targeted", 1), ev("lint", revision="old")]
    outcome = EvidenceGate(L.STRICT).evaluate(records, revision=REV, changed_at=T0)
    data = outcome.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "satisfied": False,
        "level": "STRICT",
        "revision": REV,
        "changed_at": "2026-03-02T09:00:00.000000+00:00",
        "required": list(STRICT_NAMES),
        "missing": ["tests.package"],
        "stale": ["lint"],
        "failed": ["tests.targeted"],
        "records": {"tests.targeted": records[0].to_dict(), "lint": records[1].to_dict()},
        "reason": outcome.reason,
    }
    assert EvidenceGate(L.MINIMAL).evaluate([], revision=REV).to_dict()["changed_at"] is None


def test_gate_and_outcome_are_frozen_values() -> None:
    gate = EvidenceGate(L.STRICT)
    outcome = gate.evaluate([], revision=REV)
    with pytest.raises(AttributeError):
        gate.level = L.MINIMAL  # type: ignore[misc]
    with pytest.raises(AttributeError):
        outcome.satisfied = True  # type: ignore[misc]
    assert gate == EvidenceGate("strict", dict(DEFAULT_REQUIREMENTS.added))
    assert hash(gate) == hash(EvidenceGate(3))
    assert gate != EvidenceGate(L.RELEASE)
    assert hash(outcome) == hash(gate.evaluate([], revision=REV))


# -- evaluate's input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("evidence", "match"),
    [
        ("tests.targeted", "evidence must be an iterable of Evidence, got 'tests.targeted'"),
        ({"tests.targeted": 0}, "must be an iterable of Evidence"),
        (ev("lint"), "must be an iterable of Evidence"),
        (None, "got None"),
        ([{"requirement": "lint"}], "evidence must hold Evidence records, got {'requirement'"),
    ],
)
def test_evaluate_refuses_anything_but_evidence_records(evidence: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        EvidenceGate(L.STANDARD).evaluate(evidence, revision=REV)  # type: ignore[arg-type]


@pytest.mark.parametrize("revision", ["", " a1b2", "a1b2\n", None, 42])
def test_evaluate_refuses_a_bad_revision(revision: object) -> None:
    with pytest.raises(
        InvalidValueError, match="revision must be .*got " + re.escape(repr(revision))
    ):
        EvidenceGate(L.STANDARD).evaluate([], revision=revision)  # type: ignore[arg-type]


@pytest.mark.parametrize("changed_at", [datetime(2026, 3, 2, 9), "2026-03-02T09:00Z", 0])
def test_evaluate_refuses_a_naive_or_non_datetime_change_time(changed_at: object) -> None:
    with pytest.raises(InvalidValueError, match="changed_at must be a timezone-aware datetime"):
        EvidenceGate(L.MINIMAL).evaluate(
            [],
            revision=REV,
            changed_at=changed_at,  # type: ignore[arg-type]
        )


def test_evaluate_reads_a_generator_once() -> None:
    def records() -> Iterator[Evidence]:
        yield from passing("tests.targeted")

    assert EvidenceGate(L.STANDARD).evaluate(records(), revision=REV).satisfied


# -- Evidence ----------------------------------------------------------------------


def test_evidence_from_an_exit_code_or_a_verdict() -> None:
    ran = ev("tests.targeted", 0)
    assert ran.passed is True
    assert ran.exit_code == 0
    assert ev("tests.targeted", 3).passed is False
    assert ev("tests.targeted", -9).passed is False
    review = Evidence("review.approved", passed=True, ran_at=T0, revision=REV, detail="LGTM")
    assert review.exit_code is None
    assert review.detail == "LGTM"
    both = Evidence("lint", passed=False, exit_code=1, ran_at=T0, revision=REV, command="ruff")
    assert (both.passed, both.exit_code, both.command) == (False, 1, "ruff")


def test_evidence_time_is_kept_in_utc() -> None:
    local = datetime(2026, 3, 2, 4, 0, tzinfo=timezone(timedelta(hours=-5)))
    record = Evidence("lint", exit_code=0, ran_at=local, revision=REV)
    assert record.ran_at == T0
    assert record.ran_at.tzinfo is UTC


@pytest.mark.parametrize(
    "name",
    [
        "",
        " lint",
        "lint ",
        "lint\n",
        "a b",
        "lint!",
        "tests/unit",
        "-x",
        ".x",
        "_x",
        "é",
        "x" * (MAX_REQUIREMENT_LENGTH + 1),
        3,
        None,
    ],
)
def test_a_requirement_name_outside_the_grammar_is_refused(name: object) -> None:
    with pytest.raises(InvalidValueError, match="letters, digits") as caught:
        Evidence(name, exit_code=0, ran_at=T0, revision=REV)  # type: ignore[arg-type]
    assert repr(name) in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TechrevatiError)


@pytest.mark.parametrize("name", ["lint", "tests.targeted", "9a", "a-b_c.d", "x" * 128])
def test_requirement_names_in_the_grammar_are_accepted(name: str) -> None:
    assert Evidence(name, exit_code=0, ran_at=T0, revision=REV).requirement == name


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({}, "evidence for 'lint' needs passed or exit_code"),
        ({"passed": True, "exit_code": 1}, "says passed=True but exit_code=1"),
        ({"passed": False, "exit_code": 0}, "says passed=False but exit_code=0"),
        ({"exit_code": True}, "exit_code must be an int or None, got True"),
        ({"exit_code": "0"}, "exit_code must be an int or None, got '0'"),
        ({"passed": "yes"}, "passed must be a bool, got 'yes'"),
        ({"passed": 1}, "passed must be a bool, got 1"),
        ({"exit_code": 0, "ran_at": datetime(2026, 3, 2)}, "ran_at must be a timezone-aware"),
        ({"exit_code": 0, "ran_at": "2026-03-02T09:00+00:00"}, "ran_at must be a timezone"),
        ({"exit_code": 0, "revision": ""}, "revision must be a non-empty str"),
        ({"exit_code": 0, "revision": "a1 "}, "revision must be .* got 'a1 '"),
        ({"exit_code": 0, "command": ["pytest"]}, "command must be a str or None"),
        ({"exit_code": 0, "detail": 7}, "detail must be a str or None, got 7"),
    ],
)
def test_malformed_evidence_is_refused_naming_the_value(
    fields: dict[str, object], match: str
) -> None:
    given = {"ran_at": T0, "revision": REV, **fields}
    with pytest.raises(InvalidValueError, match=match):
        Evidence("lint", **given)  # type: ignore[arg-type]


def test_evidence_out_of_range_in_utc_is_refused() -> None:
    early = datetime.min.replace(tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidValueError, match="ran_at is out of range in UTC"):
        Evidence("lint", exit_code=0, ran_at=early, revision=REV)


def test_evidence_is_a_frozen_hashable_value() -> None:
    record = ev("lint")
    with pytest.raises(AttributeError):
        record.passed = False  # type: ignore[misc]
    assert record == ev("lint")
    assert hash(record) == hash(ev("lint"))
    assert record != ev("lint", 1)


def test_evidence_times_are_written_fixed_width_so_text_order_is_time_order() -> None:
    assert ev("lint").to_dict()["ran_at"] == "2026-03-02T09:00:00.000000+00:00"
    texts = [str(ev("lint", seconds=s).to_dict()["ran_at"]) for s in (0, 0.5, 1, 10)]
    assert texts == sorted(texts)


def test_evidence_round_trips_through_json() -> None:
    record = Evidence(
        "tests.package", exit_code=1, ran_at=at(1.5), revision=REV, command="pytest", detail="2"
    )
    data = record.to_dict()
    assert data == {
        "requirement": "tests.package",
        "passed": False,
        "exit_code": 1,
        "ran_at": "2026-03-02T09:00:01.500000+00:00",
        "revision": REV,
        "command": "pytest",
        "detail": "2",
    }
    assert Evidence.from_dict(json.loads(json.dumps(data))) == record
    short = {"requirement": "lint", "passed": True, "ran_at": "2026-03-02T09:00:00Z"}
    assert Evidence.from_dict({**short, "revision": REV}) == Evidence(
        "lint", passed=True, ran_at=T0, revision=REV
    )


@HYPOTHESIS
@given(
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    code=st.none() | st.integers(-255, 255),
    when=st.datetimes(timezones=st.timezones(), allow_imaginary=False),
    revision=st.text(min_size=1).filter(lambda text: text == text.strip()),
    command=st.none() | st.text(),
)
def test_any_evidence_round_trips(
    name: str, code: int | None, when: datetime, revision: str, command: str | None
) -> None:
    try:
        record = Evidence(
            name,
            passed=True if code is None else None,
            exit_code=code,
            ran_at=when,
            revision=revision,
            command=command,
        )
    except InvalidValueError:  # the few instants that leave the UTC range
        return
    # Compared in UTC: an aware datetime at an ambiguous local time (a DST fold) never
    # equals one in another zone (PEP 495), though it names one instant.
    assert record.ran_at == when.astimezone(UTC)
    assert Evidence.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (["lint"], "evidence must be a mapping"),
        ({"requirement": "lint", "ran_at": "2026-03-02T09:00Z"}, "evidence has no 'revision'"),
        ({"ran_at": "2026-03-02T09:00Z", "revision": REV}, "evidence has no 'requirement'"),
        ({"requirement": "lint", "revision": REV}, "evidence has no 'ran_at'"),
        (
            {
                "requirement": "lint",
                "passed": True,
                "ran_at": "2026-03-02T09:00Z",
                "revision": REV,
                "score": 9,
            },
            "unknown field.* score",
        ),
        (
            {"requirement": "lint", "passed": True, "ran_at": "yesterday", "revision": REV},
            "ran_at must be an ISO 8601 string, got 'yesterday'",
        ),
        (
            {"requirement": "lint", "passed": True, "ran_at": 1700000000, "revision": REV},
            "ran_at must be an ISO 8601 string, got 1700000000",
        ),
        (
            {"requirement": "lint", "passed": True, "ran_at": "2026-03-02T09:00", "revision": REV},
            "ran_at must be a timezone-aware datetime",
        ),
        (
            {"requirement": "lint", "ran_at": "2026-03-02T09:00Z", "revision": REV},
            "needs passed or exit_code",
        ),
        (
            {
                "requirement": "lint",
                "passed": "true",
                "ran_at": "2026-03-02T09:00Z",
                "revision": REV,
            },
            "passed must be a bool",
        ),
        (
            {
                "requirement": "lint",
                "exit_code": 0.0,
                "ran_at": "2026-03-02T09:00Z",
                "revision": REV,
            },
            "exit_code must be an int",
        ),
        (
            {
                "requirement": "lint!",
                "exit_code": 0,
                "ran_at": "2026-03-02T09:00Z",
                "revision": REV,
            },
            "'lint!'",
        ),
        (
            {"requirement": "lint", "exit_code": 0, "ran_at": "2026-03-02T09:00Z", "revision": 5},
            "revision must be",
        ),
        (
            {
                "requirement": "lint",
                "exit_code": 0,
                "ran_at": "2026-03-02T09:00Z",
                "revision": REV,
                "command": 1,
            },
            "command must be a str",
        ),
    ],
)
def test_from_dict_refuses_malformed_records(data: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        Evidence.from_dict(data)  # type: ignore[arg-type]


# -- EvidenceLog -------------------------------------------------------------------


class StepClock:
    """An aware UTC clock that moves one second per reading."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> datetime:
        self.readings += 1
        return at(self.readings)


def test_log_records_with_its_clock_and_keeps_the_order() -> None:
    log = EvidenceLog(clock=StepClock())
    first = log.record("tests.targeted", revision=REV, exit_code=1, command="pytest -k x")
    second = log.record("tests.targeted", revision=REV, exit_code=0)
    review = log.record("review.approved", revision=REV, passed=True, detail="ok")
    assert first.ran_at == at(1)
    assert second.ran_at == at(2)
    assert first.command == "pytest -k x"
    assert review.detail == "ok"
    assert log.records() == (first, second, review)
    assert log.records("tests.targeted") == (first, second)
    assert list(log) == [first, second, review]
    assert len(log) == 3
    assert repr(log) == "EvidenceLog(3 record(s))"
    assert EvidenceGate(L.STANDARD).evaluate(log, revision=REV).satisfied


def test_log_add_keeps_records_and_refuses_anything_else() -> None:
    log = EvidenceLog([ev("lint")])
    record = ev("tests.targeted")
    assert log.add(record) is record
    assert log.records() == (ev("lint"), record)
    with pytest.raises(InvalidValueError, match="evidence must be an Evidence, got 'lint'"):
        log.add("lint")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="records must hold Evidence records"):
        EvidenceLog(["lint"])  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match="clock must be callable"):
        EvidenceLog(clock=T0)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="'no such'"):
        log.records("no such")


def test_log_refuses_a_naive_clock() -> None:
    log = EvidenceLog(clock=lambda: datetime(2026, 3, 2))
    with pytest.raises(InvalidValueError, match="ran_at must be a timezone-aware datetime"):
        log.record("lint", revision=REV, exit_code=0)
    assert len(log) == 0


def test_log_round_trips_through_json() -> None:
    log = EvidenceLog(clock=StepClock())
    log.record("tests.targeted", revision=REV, exit_code=0, command="pytest")
    log.record("review.approved", revision="old", passed=False)
    data = json.loads(json.dumps(log.to_dict()))
    again = EvidenceLog.from_dict(data)
    assert again.records() == log.records()
    assert again.to_dict() == log.to_dict()
    assert EvidenceLog.from_dict({"records": []}).records() == ()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([], "an evidence log must be"),
        ({}, "an evidence log must be"),
        ({"records": [], "more": 1}, "an evidence log must be"),
        ({"records": "x"}, "records must be a list, got 'x'"),
        ({"records": [{"requirement": "lint"}]}, "evidence has no 'ran_at'"),
    ],
)
def test_log_from_dict_refuses_malformed_data(data: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        EvidenceLog.from_dict(data)  # type: ignore[arg-type]


def test_log_loses_nothing_when_threads_record_at_once() -> None:
    log = EvidenceLog()
    threads_n, each = 8, 250
    barrier = threading.Barrier(threads_n)

    def report(index: int) -> None:
        barrier.wait()
        for n in range(each):
            log.record(f"check-{index}", revision=REV, exit_code=n % 2)
            assert len(log.records()) <= threads_n * each

    threads = [threading.Thread(target=report, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(log) == threads_n * each
    for index in range(threads_n):
        codes = [record.exit_code for record in log.records(f"check-{index}")]
        assert codes == [n % 2 for n in range(each)]


# -- the policy condition ----------------------------------------------------------


def evidence_ctx(**extra: object) -> PhaseContext:
    return PhaseContext("build", phase_completed=True, extra=extra)


def engine_for(condition: EvidenceSatisfied) -> PolicyEngine:
    return PolicyEngine(
        [
            PolicyRule(
                "advance",
                PhaseCompleted() & condition,
                [PolicyActionData(PolicyAction.ADVANCE_PHASE)],
            ),
            PolicyRule("rework", ~condition, [PolicyActionData(PolicyAction.REWORK)]),
        ]
    )


def test_condition_through_the_engine_advances_only_on_fresh_passing_evidence() -> None:
    engine = engine_for(EvidenceSatisfied(L.STRICT))
    good = evidence_ctx(evidence=passing(*STRICT_NAMES), revision=REV)
    assert [a.action for a in engine.evaluate(good)] == [PolicyAction.ADVANCE_PHASE]
    short = evidence_ctx(evidence=passing("tests.targeted", "lint"), revision=REV)
    assert [a.action for a in engine.evaluate(short)] == [PolicyAction.REWORK]
    moved = evidence_ctx(evidence=passing(*STRICT_NAMES), revision="d4e5f6")
    assert [a.action for a in engine.evaluate(moved)] == [PolicyAction.REWORK]


def test_condition_reason_names_what_is_missing_stale_and_failed() -> None:
    records = [ev("tests.targeted", 1), ev("lint", revision="old")]
    explained = engine_for(EvidenceSatisfied("strict")).explain(
        evidence_ctx(evidence=records, revision=REV)
    )
    assert [e.matched for e in explained] == [False, True]
    assert explained[1].reason == (
        "STRICT not satisfied at revision 'a1b2c3': missing tests.package;"
        " stale lint (ran against revision 'old'); failed tests.targeted (exit code 1)"
    )
    assert explained[0].reason.startswith("EvidenceSatisfied(STRICT) did not match: STRICT not")


def test_condition_reads_a_log_and_the_change_time_from_the_context() -> None:
    log = EvidenceLog(clock=StepClock())
    log.record("tests.targeted", revision=REV, exit_code=0)  # at(1)
    condition = EvidenceSatisfied(L.STANDARD)
    assert condition.check(evidence_ctx(evidence=log, revision=REV)).matched
    ctx = evidence_ctx(evidence=log, revision=REV, changed_at=at(2))
    verdict = condition.check(ctx)
    assert not verdict.matched
    assert "stale tests.targeted" in verdict.reason
    outcome = condition.outcome(ctx)
    assert outcome is not None
    assert outcome.stale == ("tests.targeted",)
    assert condition.check(evidence_ctx(evidence=log, revision=REV, changed_at=None)).matched


def test_condition_without_evidence_finds_everything_missing() -> None:
    verdict = EvidenceSatisfied(L.STANDARD).check(evidence_ctx(revision=REV))
    assert not verdict.matched
    assert verdict.reason.endswith("missing tests.targeted")
    assert EvidenceSatisfied(L.MINIMAL).check(evidence_ctx(revision=REV)).matched


def test_condition_without_a_revision_denies() -> None:
    condition = EvidenceSatisfied(L.MINIMAL)
    for ctx in (evidence_ctx(evidence=passing(*STRICT_NAMES)), evidence_ctx(revision=None)):
        verdict = condition.check(ctx)
        assert not verdict.matched
        assert (
            verdict.reason == "no revision to check evidence against: ctx.extra has no 'revision'"
        )
        assert condition.outcome(ctx) is None
    assert engine_for(condition).matching_rules(evidence_ctx())[0].name == "rework"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({REVISION_KEY: 42}, r"ctx.extra\['revision'\] must be a non-empty str"),
        ({REVISION_KEY: REV, EVIDENCE_KEY: "lint"}, r"ctx.extra\['evidence'\] must be an iterable"),
        ({REVISION_KEY: REV, EVIDENCE_KEY: [1]}, r"ctx.extra\['evidence'\] must hold Evidence"),
        ({REVISION_KEY: REV, CHANGED_AT_KEY: "now"}, r"ctx.extra\['changed_at'\] must be a time"),
    ],
)
def test_malformed_context_facts_raise_naming_the_rule(
    extra: dict[str, object], match: str
) -> None:
    condition = EvidenceSatisfied(L.STANDARD)
    with pytest.raises(InvalidValueError, match=match):
        condition.check(evidence_ctx(**extra))
    with pytest.raises(PolicyEvaluationError, match="advance") as caught:
        engine_for(condition).evaluate(evidence_ctx(**extra))
    assert "InvalidValueError" in str(caught.value)


def test_condition_takes_custom_requirements_and_has_a_readable_repr() -> None:
    condition = EvidenceSatisfied(L.STRICT, {L.STRICT: ["types"]})
    assert condition.gate.required == ("types",)
    assert condition.check(evidence_ctx(evidence=passing("types"), revision=REV)).matched
    assert repr(condition) == "EvidenceSatisfied(STRICT)"
    assert repr(~condition) == "Not(EvidenceSatisfied(STRICT))"
    assert condition == EvidenceSatisfied("strict", {"STRICT": ("types",)})
    with pytest.raises(InvalidValueError, match="'great'"):
        EvidenceSatisfied("great")


def test_the_new_names_are_exported_from_the_package() -> None:
    for cls in (
        Evidence,
        EvidenceGate,
        EvidenceLog,
        EvidenceOutcome,
        EvidenceRequirements,
        EvidenceSatisfied,
    ):
        assert getattr(runtime, cls.__name__) is cls
        assert cls.__name__ in runtime.__all__


# -- properties against a reference model -----------------------------------------

NAMES = ("tests.targeted", "tests.package", "lint", "extra")
REVISIONS = (REV, "old")

records_strategy = st.lists(
    st.builds(
        ev,
        st.sampled_from(NAMES),
        st.sampled_from([0, 0, 1]),
        seconds=st.integers(0, 5),
        revision=st.sampled_from(REVISIONS),
    ),
    max_size=12,
)


def reference(
    records: list[Evidence], required: tuple[str, ...], changed_at: datetime | None
) -> dict[str, str]:
    """What each requirement is, by the rules written out the slow way."""
    result = {}
    for name in required:
        mine = [(r.ran_at, i, r) for i, r in enumerate(records) if r.requirement == name]
        fresh = [
            item
            for item in mine
            if item[2].revision == REV and (changed_at is None or item[0] >= changed_at)
        ]
        if fresh:
            result[name] = "ok" if max(fresh, key=lambda item: item[:2])[2].passed else "failed"
        else:
            result[name] = "stale" if mine else "missing"
    return result


@HYPOTHESIS
@given(
    records=records_strategy,
    level=st.sampled_from(list(L)),
    changed=st.none() | st.integers(0, 6),
)
def test_outcome_agrees_with_the_reference_and_the_engine(
    records: list[Evidence], level: QualityLevel, changed: int | None
) -> None:
    changed_at = None if changed is None else at(changed)
    outcome = EvidenceGate(level).evaluate(records, revision=REV, changed_at=changed_at)
    expected = reference(records, outcome.required, changed_at)
    for state, names in (
        ("missing", outcome.missing),
        ("stale", outcome.stale),
        ("failed", outcome.failed),
    ):
        assert names == tuple(n for n in outcome.required if expected[n] == state)
    assert outcome.satisfied == (not (outcome.missing or outcome.stale or outcome.failed))
    assert outcome.satisfied == all(state == "ok" for state in expected.values())
    assert set(outcome.records) == {n for n, s in expected.items() if s != "missing"}
    assert (level is L.MINIMAL) <= outcome.satisfied

    extra: dict[str, object] = {EVIDENCE_KEY: records, REVISION_KEY: REV}
    if changed_at is not None:
        extra[CHANGED_AT_KEY] = changed_at
    ctx = evidence_ctx(**extra)
    condition = EvidenceSatisfied(level)
    assert condition.check(ctx) == Verdict(outcome.satisfied, outcome.reason)
    matched = [r.name for r in engine_for(condition).matching_rules(ctx)]
    assert matched == (["advance"] if outcome.satisfied else ["rework"])
