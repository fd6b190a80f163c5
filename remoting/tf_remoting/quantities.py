"""Quantities: the one place where memory sizes and percentages are parsed and printed.

Used by the CLI, configuration and API on both sides, so that ``"4Gi"`` means the same thing
everywhere and every message prints sizes the same way.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation

__all__ = ["QuantityError", "parse_bytes", "parse_percent", "format_bytes", "format_percent", "utilization_text"]

MAX_BYTES = 2**63 - 1
MAX_PERCENT = 100
MAX_PERCENT_OVER = 10000

_BINARY = {"": 1, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_MULTIPLIERS = {**_BINARY, **_DECIMAL}

# A number, an optional unit (Ki/K ...), an optional trailing "B" ("4 GiB", "4GB", "4096B").
_BYTES_RE = re.compile(r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgtp]i?)?\s*b?", re.IGNORECASE)
_PERCENT_RE = re.compile(r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*%?")

_BYTES_HINT = "use a number with an optional unit (Ki, Mi, Gi, Ti, K, M, G, T), e.g. 4Gi or 512Mi"
_BINARY_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]


class QuantityError(ValueError):
    """A quantity that cannot be understood; the message says what to write instead."""


def _number_type_check(value: object, what: str) -> None:
    # bool is an int subclass: True would silently mean "1 byte" / "1 %".
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise QuantityError(
            f"invalid {what} {value!r}: expected a number or a string such as "
            + ("'4Gi'" if what == "memory quantity" else "'25%'")
        )


def parse_bytes(value: str | int | float) -> int:
    """Parse a memory quantity into bytes.

    ``"4Gi"`` (binary), ``"4G"`` (decimal, 10**9), ``"1.5Gi"``, ``"4 GiB"``, ``"4GB"``, ``"4096"``,
    ``4096``. Fractions of a byte round up, as Kubernetes does.
    """
    _number_type_check(value, "memory quantity")
    if isinstance(value, str):
        text = value.strip()
        match = _BYTES_RE.fullmatch(text)
        if not text or match is None:
            if text.startswith("-"):
                raise QuantityError(f"invalid memory quantity {value!r}: it must not be negative")
            raise QuantityError(f"invalid memory quantity {value!r}: {_BYTES_HINT}")
        try:
            number = Decimal(match["num"])
        except InvalidOperation:  # pragma: no cover - the regex only lets digits through
            raise QuantityError(f"invalid memory quantity {value!r}: {_BYTES_HINT}") from None
        multiplier = _MULTIPLIERS[(match["unit"] or "").lower()]
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise QuantityError(f"invalid memory quantity {value!r}: it must be a finite number")
        if value < 0:
            raise QuantityError(f"invalid memory quantity {value!r}: it must not be negative")
        number = Decimal(value)
        multiplier = 1
    total = (number * multiplier).to_integral_value(rounding=ROUND_CEILING)
    if total > MAX_BYTES:
        raise QuantityError(
            f"memory quantity {value!r} is absurdly large (more than {format_bytes(MAX_BYTES)}); "
            "check the unit: Gi is gibibytes, Ti tebibytes"
        )
    return int(total)


def parse_percent(value: str | int | float, *, allow_over: bool = False) -> int:
    """Parse a whole percentage: ``"25%"``, ``"25"``, ``25`` -> 25.

    It must be more than 0 and at most 100, or at most 10000 with ``allow_over`` (oversubscription).
    """
    _number_type_check(value, "percentage")
    if isinstance(value, str):
        match = _PERCENT_RE.fullmatch(value.strip())
        if match is None:
            if value.strip().startswith("-"):
                raise QuantityError(f"invalid percentage {value!r}: it must be more than 0")
            raise QuantityError(
                f"invalid percentage {value!r}: use a whole number with an optional %, e.g. 25%"
            )
        number = Decimal(match["num"])
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise QuantityError(f"invalid percentage {value!r}: it must be a finite number")
        number = Decimal(value)
    if number != number.to_integral_value():
        raise QuantityError(f"invalid percentage {value!r}: use a whole percent, e.g. 12% or 13%")
    limit = MAX_PERCENT_OVER if allow_over else MAX_PERCENT
    if number <= 0:
        raise QuantityError(f"invalid percentage {value!r}: it must be more than 0")
    if number > limit:
        raise QuantityError(f"invalid percentage {value!r}: it must be at most {limit} %")
    return int(number)


def _tenths_text(tenths: int) -> str:
    """A whole number of tenths as text with at most one decimal: 13 -> "1.3", 40 -> "4"."""
    sign = "-" if tenths < 0 else ""
    whole, tenth = divmod(abs(tenths), 10)
    return f"{sign}{whole}.{tenth}" if tenth else f"{sign}{whole}"


def _round_tenths(numerator: int, denominator: int) -> int:
    """numerator / denominator in whole tenths, a tie rounded half away from zero (1.25 -> 13).

    Integer arithmetic, so that the result does not depend on how a float happens to hold the
    value; ``labextension/src/format.ts`` does the same (shared cases: tests/fixtures/size_cases.json).
    """
    sign = -1 if (numerator < 0) != (denominator < 0) else 1
    numerator, denominator = abs(numerator), abs(denominator)
    return sign * ((20 * numerator + denominator) // (2 * denominator))


def format_bytes(n: int) -> str:
    """Print bytes in binary units with at most one decimal: 5905580032 -> ``"5.5 GiB"``.

    A tie rounds half away from zero: 1.25 GiB prints as ``"1.3 GiB"``.
    """
    if n < 0:
        return "-" + format_bytes(-n)
    if n < 1024:
        return f"{n} B"
    exponent = 0
    while exponent < len(_BINARY_UNITS) - 1 and n >= 1024 ** (exponent + 1):
        exponent += 1
    tenths = _round_tenths(n, 1024**exponent)
    if tenths >= 10240 and exponent < len(_BINARY_UNITS) - 1:  # 1023.96 KiB prints as 1 MiB
        exponent += 1
        tenths = _round_tenths(n, 1024**exponent)
    return f"{_tenths_text(tenths)} {_BINARY_UNITS[exponent]}"


def format_percent(p: int | float) -> str:
    """Print a percentage with at most one decimal: 25 -> ``"25 %"``, 12.25 -> ``"12.3 %"``.

    The number is rounded as written (its shortest decimal form, so 12.35 -> ``"12.4 %"``), a
    tie half away from zero, as ``formatPercent`` in the lab extension does.
    """
    if isinstance(p, float) and not math.isfinite(p):
        return f"{p} %"
    value = Decimal(p) if isinstance(p, int) else Decimal(repr(float(p)))
    tenths = int((value * 10).to_integral_value(rounding=ROUND_HALF_UP))
    return f"{_tenths_text(tenths)} %"


def utilization_text(utilization: float, compute_limit: int | None = None, host: bool = False) -> str:
    """Utilization said one way everywhere (%vgpu, `tf-jupyter pool`, the panel and status bar): percent
    of the whole device, the slice's compute next to it as its limit: ``"12 % of the GPU · slice 25 %"``."""
    text = f"{utilization:.0f} % of the {'host' if host else 'GPU'}"
    return text if compute_limit is None else f"{text} · slice {compute_limit} %"
