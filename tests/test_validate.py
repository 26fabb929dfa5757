"""The argument checks every module shares (``_validate``)."""

from __future__ import annotations

from enum import IntEnum, StrEnum

import pytest

from techrevati.runtime._validate import (
    MAX_SECONDS,
    callable_or_none,
    enum_member,
    instance_or_none,
    int_at_least,
    non_empty_str,
    non_negative_number,
    optional_int_at_least,
    required_callable,
    seconds_or_none,
    strict_bool,
)
from techrevati.runtime.errors import InvalidValueError


class Colour(StrEnum):
    DARK_RED = "dark_red"
    BLUE = "blue"


class Size(IntEnum):
    SMALL = 1
    LARGE = 2


@pytest.mark.parametrize(
    ("kind", "value", "member"),
    [
        (Colour, Colour.BLUE, Colour.BLUE),
        (Colour, " Dark-Red ", Colour.DARK_RED),
        (Colour, "DARK_RED", Colour.DARK_RED),
        (Colour, "blue", Colour.BLUE),
        (Size, "large", Size.LARGE),
        (Size, 1, Size.SMALL),
    ],
)
def test_enum_member_reads_members_names_and_values(
    kind: type[Colour] | type[Size], value: object, member: object
) -> None:
    assert enum_member(kind, value, "thing") is member


@pytest.mark.parametrize("value", ["green", "", 3, True, 1.0, None, "1"])
def test_enum_member_names_the_value_and_every_valid_name(value: object) -> None:
    with pytest.raises(InvalidValueError) as caught:
        enum_member(Size, value, "size", field="shirt")
    assert str(caught.value) == f"shirt: unknown size {value!r}; expected one of SMALL, LARGE"


def test_enum_member_lists_a_str_enums_values() -> None:
    with pytest.raises(
        InvalidValueError, match=r"^unknown colour 'x'; expected one of dark_red, blue$"
    ):
        enum_member(Colour, "x", "colour")


def test_int_checks_refuse_bools_and_values_below_the_minimum() -> None:
    assert int_at_least("n", 3, 3) == 3
    assert optional_int_at_least("n", None, 3) is None
    for bad in (2, True, 3.0, "3"):
        with pytest.raises(InvalidValueError, match=r"^n must be an int >= 3, got "):
            int_at_least("n", bad, 3)
        with pytest.raises(InvalidValueError, match=r"^n must be None or an int >= 3, got "):
            optional_int_at_least("n", bad, 3)


def test_seconds_must_be_finite_positive_and_waitable() -> None:
    assert seconds_or_none("t", None) is None
    assert seconds_or_none("t", 2) == 2.0
    assert seconds_or_none("t", MAX_SECONDS) == MAX_SECONDS
    for bad in (0, -1, float("nan"), float("inf"), True, "1", MAX_SECONDS * 2):
        with pytest.raises(InvalidValueError, match=r"^t must be None or a number of seconds"):
            seconds_or_none("t", bad)


def test_str_bool_callable_and_instance_checks() -> None:
    assert non_empty_str("s", "a") == "a"
    for bad in ("", "  ", None, 1):
        with pytest.raises(InvalidValueError, match=r"^s must be a non-empty str"):
            non_empty_str("s", bad)
    assert strict_bool("b", False) is False
    with pytest.raises(InvalidValueError, match=r"^b must be a bool, got 0$"):
        strict_bool("b", 0)
    assert required_callable("f", len) is len
    with pytest.raises(InvalidValueError, match=r"^f must be callable, got None$"):
        required_callable("f", None)
    assert callable_or_none("f", None) is None
    assert callable_or_none("f", len) is len
    with pytest.raises(InvalidValueError, match=r"^f must be callable or None, got 1$"):
        callable_or_none("f", 1)
    assert instance_or_none("i", 1, (int, str)) == 1
    with pytest.raises(InvalidValueError, match=r"^i must be a int or str or None, got 1.5$"):
        instance_or_none("i", 1.5, (int, str))


def test_non_negative_number_bounds() -> None:
    assert non_negative_number("x", 0) == 0.0
    assert non_negative_number("x", 2) == 2.0
    assert non_negative_number("x", float("inf"), finite=False) == float("inf")
    for bad, kwargs, message in [
        (0, {"above_zero": True}, "x must be a finite number > 0, got 0"),
        (-0.5, {}, "x must be a finite number >= 0, got -0.5"),
        (float("inf"), {}, "x must be a finite number >= 0, got inf"),
        (float("nan"), {"finite": False}, "x must be a number >= 0 (inf allowed), got nan"),
        (True, {}, "x must be a finite number >= 0, got True"),
        ("1", {}, "x must be a finite number >= 0, got '1'"),
    ]:
        with pytest.raises(InvalidValueError) as caught:
            non_negative_number("x", bad, **kwargs)
        assert str(caught.value) == message
