from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.quality_gate import QualityGate, QualityGateOutcome, QualityLevel
from tests.conftest import examples

L = QualityLevel
HYPOTHESIS = settings(max_examples=examples(100))


# -- QualityLevel ------------------------------------------------------------------


def test_levels_are_ordered_minimal_to_release() -> None:
    assert L.MINIMAL < L.STANDARD < L.STRICT < L.RELEASE
    assert [int(level) for level in L] == [1, 2, 3, 4]
    assert max(L.STANDARD, L.STRICT) is L.STRICT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("strict", L.STRICT),
        ("STRICT", L.STRICT),
        ("  Release\n", L.RELEASE),
        ("minimal", L.MINIMAL),
        (2, L.STANDARD),
        (4, L.RELEASE),
        (L.STANDARD, L.STANDARD),
    ],
)
def test_parse_accepts_members_names_in_any_case_and_numbers(
    value: QualityLevel | str | int, expected: QualityLevel
) -> None:
    assert QualityLevel.parse(value) is expected


@pytest.mark.parametrize("bad", ["great", "", "3", 0, 5, -1, True, 2.0, None])
def test_parse_rejects_bad_values_naming_them(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="unknown quality level") as caught:
        QualityLevel.parse(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(caught.value)
    assert "MINIMAL, STANDARD, STRICT, RELEASE" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TechrevatiError)


# -- QualityGate -------------------------------------------------------------------


def test_seed_example_satisfied_at_and_above_the_bar() -> None:
    advanced: list[QualityLevel] = []
    reworked: list[QualityGateOutcome] = []

    def advance() -> None:
        advanced.append(observed_level)

    def request_rework(outcome: QualityGateOutcome) -> None:
        reworked.append(outcome)

    for observed_level in (L.STANDARD, L.STRICT, L.RELEASE):
        gate = QualityGate(QualityLevel.STRICT)
        outcome = gate.evaluate(observed_level)
        if outcome.satisfied:
            advance()
        else:
            request_rework(outcome)

    assert advanced == [L.STRICT, L.RELEASE]
    assert reworked == [QualityGateOutcome(False, L.STRICT, L.STANDARD, 1)]


@pytest.mark.parametrize(
    ("required", "observed", "satisfied", "gap"),
    [
        (L.STRICT, L.MINIMAL, False, 2),
        (L.STRICT, L.STANDARD, False, 1),
        (L.STRICT, L.STRICT, True, 0),
        (L.STRICT, L.RELEASE, True, 0),
        (L.RELEASE, L.MINIMAL, False, 3),
        (L.MINIMAL, L.MINIMAL, True, 0),
    ],
)
def test_evaluate_reports_satisfied_and_gap(
    required: QualityLevel, observed: QualityLevel, satisfied: bool, gap: int
) -> None:
    outcome = QualityGate(required).evaluate(observed)
    assert outcome == QualityGateOutcome(
        satisfied=satisfied, required=required, observed=observed, gap=gap
    )


def test_evaluate_parses_names_and_numbers() -> None:
    gate = QualityGate(L.STANDARD)
    assert gate.evaluate("strict").observed is L.STRICT
    assert gate.evaluate(" minimal ").gap == 1
    assert gate.evaluate(4).satisfied


def test_gate_parses_its_requirement_and_rejects_bad_ones() -> None:
    assert QualityGate("release").required is L.RELEASE  # type: ignore[arg-type]
    assert QualityGate(2).required is L.STANDARD  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="'perfect'"):
        QualityGate("perfect")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="'awful'"):
        QualityGate(L.STRICT).evaluate("awful")


def test_gate_and_outcome_are_frozen() -> None:
    gate = QualityGate(L.STRICT)
    outcome = gate.evaluate(L.MINIMAL)
    with pytest.raises(AttributeError):
        gate.required = L.MINIMAL  # type: ignore[misc]
    with pytest.raises(AttributeError):
        outcome.satisfied = True  # type: ignore[misc]
    assert gate == QualityGate(L.STRICT)
    assert hash(gate) == hash(QualityGate("strict"))  # type: ignore[arg-type]


def test_outcome_to_dict_is_json_with_level_names() -> None:
    data = QualityGate(L.RELEASE).evaluate(L.STANDARD).to_dict()
    assert data == {"satisfied": False, "required": "RELEASE", "observed": "STANDARD", "gap": 2}
    assert json.loads(json.dumps(data)) == data


@HYPOTHESIS
@given(required=st.sampled_from(list(L)), observed=st.sampled_from(list(L)))
def test_gap_is_the_shortfall_and_satisfied_means_no_gap(
    required: QualityLevel, observed: QualityLevel
) -> None:
    outcome = QualityGate(required).evaluate(observed)
    assert outcome.gap == max(0, required - observed)
    assert outcome.satisfied == (observed >= required) == (outcome.gap == 0)
    assert QualityLevel.parse(int(observed) + outcome.gap) >= required


@HYPOTHESIS
@given(level=st.sampled_from(list(L)), pad=st.text(alphabet=" \t\n", max_size=3))
def test_every_name_spelling_round_trips(level: QualityLevel, pad: str) -> None:
    for spelling in (level.name, level.name.lower(), level.name.title()):
        assert QualityLevel.parse(pad + spelling + pad) is level
    assert QualityLevel.parse(int(level)) is level
