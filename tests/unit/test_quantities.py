"""Quantities: parsing and printing memory sizes and percentages."""

import json
import math
from pathlib import Path

import pytest

from tf_remoting.quantities import QuantityError, format_bytes, format_percent, parse_bytes, parse_percent

GiB = 2**30
MiB = 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4Gi", 4 * GiB),
        ("512Mi", 512 * MiB),
        ("1.5Gi", 1536 * MiB),
        ("4G", 4 * 10**9),
        ("4K", 4000),
        ("2Ki", 2048),
        ("1Ti", 2**40),
        ("4096", 4096),
        (4096, 4096),
        (4096.0, 4096),
        ("4 GiB", 4 * GiB),
        ("4GB", 4 * 10**9),
        ("  8Gi ", 8 * GiB),
        ("1000 B", 1000),
        ("0", 0),
        (".5Ki", 512),
        ("1.1Ki", 1127),  # 1126.4 bytes: fractions of a byte round up
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "4Gx",
        "",
        "   ",
        "Gi",
        "-4Gi",
        "4 Gi Gi",
        "four gigs",
        "1e9",
        "0x10",
        "4,5Gi",
        "nan",
        "inf",
        "99999999999Ti",
        str(2**63),
        -1,
        -0.5,
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        [4],
        2**63,
    ],
)
def test_parse_bytes_rejects(bad):
    with pytest.raises(QuantityError):
        parse_bytes(bad)


def test_parse_bytes_messages_say_what_to_write():
    with pytest.raises(QuantityError) as info:
        parse_bytes("4Gx")
    assert str(info.value) == (
        "invalid memory quantity '4Gx': use a number with an optional unit "
        "(Ki, Mi, Gi, Ti, K, M, G, T), e.g. 4Gi or 512Mi"
    )
    with pytest.raises(QuantityError, match="negative"):
        parse_bytes("-4Gi")
    with pytest.raises(QuantityError, match="absurdly large"):
        parse_bytes("9999999Ti")
    assert issubclass(QuantityError, ValueError)


def test_parse_bytes_largest():
    assert parse_bytes(2**63 - 1) == 2**63 - 1
    assert parse_bytes(str(2**63 - 1)) == 2**63 - 1


# One table of how sizes and percentages print, read by this test and by the lab extension's
# (labextension/src/__tests__/format.spec.ts): both sides must print the same text.
SIZE_CASES = json.loads((Path(__file__).parents[1] / "fixtures" / "size_cases.json").read_text())


@pytest.mark.parametrize("case", SIZE_CASES["bytes"], ids=lambda c: str(c["bytes"]))
def test_format_bytes(case):
    assert format_bytes(case["bytes"]) == case["text"], case.get("note", "")


@pytest.mark.parametrize("case", SIZE_CASES["percent"], ids=lambda c: str(c["percent"]))
def test_format_percent(case):
    assert format_percent(case["percent"]) == case["text"], case.get("note", "")


def test_format_ties_round_half_away_from_zero():
    # The only exact ties in whole bytes are x.25 and x.75 of a unit: each rounds up, as a person
    # expects (Python's round() sends half of them down, to the even tenth).
    for exponent, unit in enumerate(["KiB", "MiB", "GiB", "TiB"], start=1):
        for quarters in range(5, 400, 2):  # 1.25, 1.75, 2.25 ... 99.75
            tenths = (quarters * 25 + 5) // 10
            expected = f"{tenths // 10}.{tenths % 10}" if tenths % 10 else f"{tenths // 10}"
            assert format_bytes(quarters * 1024**exponent // 4) == f"{expected} {unit}"
        assert format_bytes(-5 * 1024**exponent // 4) == f"-1.3 {unit}"


def test_format_bytes_at_most_one_decimal():
    for n in range(1024, 10 * MiB, 9973):
        number = format_bytes(n).split()[0]
        assert "." not in number or len(number.split(".")[1]) == 1
        assert not number.endswith(".0")


def test_bytes_round_trip():
    for exponent in range(5):
        unit = 1024**exponent
        for k in [1, 2, 3, 7, 10, 100, 512, 1000, 1023]:
            for n in (k * unit, k * unit + unit // 2 if exponent else k):
                assert parse_bytes(format_bytes(n)) == n
    for text in ["4 GiB", "512 MiB", "5.5 GiB", "1000 B", "1 TiB", "1.5 KiB"]:
        assert format_bytes(parse_bytes(text)) == text


@pytest.mark.parametrize(
    ("value", "expected"),
    [("25%", 25), ("25", 25), (25, 25), ("25 %", 25), (25.0, 25), ("100%", 100), (1, 1)],
)
def test_parse_percent(value, expected):
    assert parse_percent(value) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "12.5%",
        12.5,
        "0",
        0,
        "0%",
        "101%",
        101,
        "-5%",
        -5,
        "",
        "%",
        "abc",
        "25%%",
        True,
        None,
        math.nan,
        math.inf,
    ],
)
def test_parse_percent_rejects(bad):
    with pytest.raises(QuantityError):
        parse_percent(bad)


def test_parse_percent_messages():
    with pytest.raises(QuantityError, match="whole percent"):
        parse_percent("12.5%")
    with pytest.raises(QuantityError, match="at most 100 %"):
        parse_percent("150%")
    with pytest.raises(QuantityError, match="more than 0"):
        parse_percent(0)


def test_parse_percent_allow_over():
    assert parse_percent("150%", allow_over=True) == 150
    assert parse_percent(10000, allow_over=True) == 10000
    with pytest.raises(QuantityError, match="at most 10000 %"):
        parse_percent(10001, allow_over=True)


def test_percent_round_trip():
    assert format_percent(25) == "25 %"
    assert format_percent(12.25) == "12.3 %"
    assert format_percent(40.0) == "40 %"
    for p in range(1, 101):
        assert parse_percent(format_percent(p)) == p
