"""One definition of a dollar amount: parse it, scale it to integer units, format it.

Money is kept as an integer count of femto-dollars (1e-15 USD) inside the
library, so sums never drift and never depend on the caller's decimal
context, and shown as a :class:`decimal.Decimal` or a string outside.
Private: pricing, budgets, the tracker and the orchestrator share it.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Final

from techrevati.runtime.errors import InvalidValueError

__all__ = ["MoneyInput", "usd_text"]

MoneyInput = Decimal | int | float | str
"""What a dollar amount or a rate may be given as (a ``float`` is read by its shortest repr)."""


_USD_POWER: Final = 15
"""Money is kept as integer femto-dollars: USD * 10**15."""
_RATE_POWER: Final = 9
"""A rate per million * 10**9 is femto-dollars per token, so 9 decimal places are exact."""
_MAX_ADJUSTED: Final = 15
"""Rates and limits must be below 10**15 USD: a guard against absurd exponents."""
_FORMAT_STEP: Final = 10**11
"""Femto-dollars in $0.0001, the resolution of :meth:`UsageTracker.format_cost`."""


def _to_decimal(value: object, name: str) -> Decimal:
    """Return ``value`` as a finite Decimal >= 0, or raise naming ``name`` and the value.

    A Decimal subclass comes back as a plain Decimal (equal, same digits).
    """
    if isinstance(value, bool):
        raise InvalidValueError(f"{name} must be a number, not a bool, got {value!r}")
    if isinstance(value, Decimal):
        number = value if type(value) is Decimal else Decimal(value)
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except (InvalidOperation, ValueError):
            raise InvalidValueError(f"{name} must be a decimal number, got {value!r}") from None
    else:
        raise InvalidValueError(
            f"{name} must be a Decimal, int, float or str, got {type(value).__name__} {value!r}"
        )
    if not number.is_finite() or (number.is_signed() and number != 0):
        raise InvalidValueError(f"{name} must be finite and >= 0, got {value!r}")
    if number.is_zero():
        return Decimal(0)
    if number.adjusted() >= _MAX_ADJUSTED:
        raise InvalidValueError(f"{name} is unreasonably large (>= 1e15), got {value!r}")
    return number


def _scaled(number: Decimal, power: int, name: str, unit: str) -> int:
    """Return ``number * 10**power`` as an exact int, or raise if it is not whole.

    Works on the digits and the exponent, never on ``10**-exponent``: an absurd
    exponent (``1e-999999999``) is refused at once instead of building a
    billion-digit integer.
    """
    digits, shift = _digits_and_shift(number, power, name)
    if shift < 0:
        raise InvalidValueError(
            f"{name} has more precision than {unit} can hold exactly, got {_shown(number)} "
            "(refusing to round it)"
        )
    return int(digits) * 10**shift if digits else 0


def _rounded(number: Decimal, power: int) -> Decimal:
    """Return ``number`` rounded half-even to a multiple of ``10**-power``, trailing zeros dropped.

    ``number`` is finite, >= 0 and below 1e15 (what :func:`_to_decimal` returns).
    The rounding runs in a private context, never the caller's.
    """
    quantum = Decimal((0, (1,), -power))
    rounded = number.quantize(quantum, rounding=ROUND_HALF_EVEN, context=_WIDE)
    digits, shift = _digits_and_shift(rounded, 0, "rate")
    if shift >= 0:
        return Decimal(int(digits or "0") * 10**shift)
    return Decimal(f"{digits}E{shift}")


def _digits_and_shift(number: Decimal, power: int, name: str) -> tuple[str, int]:
    """Split ``number * 10**power`` into significant digits (no trailing zeros) and a power of 10.

    ``("", 0)`` for zero. Refuses a non-finite number and one of 1e15 or more,
    so a positive shift never builds a huge integer either.
    """
    _sign, digit_tuple, exponent = number.as_tuple()
    if not isinstance(exponent, int):
        raise InvalidValueError(f"{name} must be finite, got {number}")
    if number.is_zero():
        return "", 0
    if number.adjusted() >= _MAX_ADJUSTED:
        raise InvalidValueError(f"{name} is unreasonably large (>= 1e15), got {number}")
    text = "".join(map(str, digit_tuple))
    digits = text.rstrip("0")
    return digits, exponent + len(text) - len(digits) + power


def _shown(number: Decimal) -> str:
    """Show ``number`` in plain notation, or in scientific when plain would be absurdly long."""
    exponent = number.as_tuple().exponent
    return f"{number:f}" if isinstance(exponent, int) and exponent >= -60 else str(number)


_WIDE: Final = Context(prec=60, rounding=ROUND_HALF_EVEN)
"""A private context wide enough for any amount below 1e15 to 1e-15 (30 digits)."""


def _usd(femto: int) -> Decimal:
    """Return ``femto`` femto-dollars as an exact Decimal, trailing zeros dropped.

    Built from a string, so the caller's decimal context plays no part.
    """
    if not femto:
        return Decimal(0)
    exponent = -_USD_POWER
    while exponent < 0 and not femto % 10:
        femto //= 10
        exponent += 1
    return Decimal(f"{femto}E{exponent}")


def _money(femto: int) -> str:
    return f"${_usd(femto)}"


def _format_usd(femto: int) -> str:
    """``$`` and four decimals, half up; ``<$0.0001`` for tiny non-zero amounts."""
    steps = (femto + _FORMAT_STEP // 2) // _FORMAT_STEP
    if steps == 0 and femto > 0:
        return "<$0.0001"
    return f"${steps // 10_000}.{steps % 10_000:04d}"


def usd_text(femto: int) -> str:
    """Format an exact amount of 1e-15 USD as a plain decimal string, fast (no ``$``)."""
    whole, fraction = divmod(femto, _FEMTO_PER_USD)
    if not fraction:
        return str(whole)
    return f"{whole}.{fraction:015d}".rstrip("0")


_FEMTO_PER_USD: Final = 10**_USD_POWER
