"""Feed positions (:mod:`web.position`): every position decodes to the marks
it was made of, ``0`` and ``0-0`` are the start, anything else that is not a
position the feed gave out is a :class:`PositionError` (never another
exception), and a position stays compact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from web.position import (
    PositionError,
    _check,
    decode_position,
    encode_position,
    mark_text,
)

U64 = st.integers(0, 2**64 - 1)
marks_lists = st.lists(st.tuples(U64, U64), min_size=1, max_size=8).map(tuple)
NOW_MS = 1_764_633_600_000  # 2025-12-02
EXAMPLE = ((NOW_MS + 12_345, 7), (NOW_MS, 0), (0, 0), (NOW_MS + 99, 35))


def _signed(body: str) -> str:
    """``body`` with the check the feed would put after it: a text that gets
    past the check, so what follows tests the parts themselves."""
    return f"{body}.{_check(body)}"


@given(marks_lists)
def test_round_trip(marks: tuple[tuple[int, int], ...]) -> None:
    text = encode_position(marks)
    assert decode_position(text) == marks
    assert text.isascii() and text == text.lower() and " " not in text


@pytest.mark.parametrize("text", ["0", "0-0"])
def test_zero_is_the_start(text: str) -> None:
    assert decode_position(text) == ((0, 0),)


def test_the_start_of_every_shard_encodes_and_decodes() -> None:
    start = ((0, 0),) * 4
    assert decode_position(encode_position(start)) == start


def test_mark_text_is_a_stream_entry_id() -> None:
    assert mark_text((NOW_MS, 3)) == f"{NOW_MS}-3"
    assert mark_text((0, 0)) == "0-0"


def _changed_digit(text: str) -> str:
    """``text`` with its first base-36 digit changed to another one."""
    i = next(i for i, c in enumerate(text) if c.isalnum())
    return text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1 :]


GOOD = encode_position(EXAMPLE)
GARBAGE = [
    "",
    ".",
    "..",
    "yesterday",
    "1_000-0",
    "1000-0",  # a stream entry id is not a position
    "-1",
    "+1",
    " 0",
    "0 ",
    "00",
    "0-0-0",
    "\u0661\u0662\u0663",  # Arabic-Indic digits
    _signed("\u0661\u0662\u0663"),
    _signed("1_000-0"),
    _signed("+1"),
    _signed(" 1"),
    _signed("1..2"),
    _signed("1-2-3"),
    _signed("-5"),
    GOOD.upper(),
    _changed_digit(GOOD),
    GOOD[:-1],
    GOOD + "0",
    GOOD.replace(".", ",", 1),
    "." + GOOD,
    _signed("1" * 14),  # overlong part
    _signed("0-" + "1" * 14),  # overlong sequence
    _signed("zzzzzzzzzzzzz"),  # thirteen digits, past 2**64 - 1
    _signed("1-zzzzzzzzzzzzz"),
    _signed(".".join(["1"] * 2100)),  # too long a text
]


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_and_tampered_texts_are_refused(text: str) -> None:
    with pytest.raises(PositionError):
        decode_position(text)


def test_the_examples_are_what_they_claim() -> None:
    """Guards the garbage list: the uppercase and changed-digit texts differ
    from the good one, and the largest marks still decode."""
    assert GOOD.upper() != GOOD and _changed_digit(GOOD) != GOOD
    top = 2**64 - 1
    assert decode_position(encode_position(((top, top),))) == ((top, top),)
    assert decode_position(_signed("0-0")) == ((0, 0),)


@given(st.text(max_size=60))
def test_any_text_is_a_position_or_a_position_error(text: str) -> None:
    try:
        marks = decode_position(text)
    except PositionError:
        return
    assert marks and all(0 <= n < 2**64 for mark in marks for n in mark)


@given(marks_lists, st.data())
def test_a_changed_character_is_refused_or_decodes_to_valid_marks(
    marks: tuple[tuple[int, int], ...], data: st.DataObject
) -> None:
    text = encode_position(marks)
    i = data.draw(st.integers(0, len(text) - 1))
    c = data.draw(st.sampled_from("0123456789abcdefghijklmnopqrstuvwxyzA.-_ "))
    tampered = text[:i] + c + text[i + 1 :]
    try:
        decoded = decode_position(tampered)
    except PositionError:
        return
    # A two-digit check lets about one change in 1296 through: still marks.
    assert all(0 <= n < 2**64 for mark in decoded for n in mark)


@given(
    st.lists(
        st.tuples(st.integers(NOW_MS - 10**11, NOW_MS + 10**12), st.integers(0, 35)),
        min_size=1,
        max_size=9,
    )
)
def test_positions_are_compact(marks: list[tuple[int, int]]) -> None:
    """Current times (2022 to 2057) and small sequence numbers: at most 11
    characters a shard (8 digits of time, a dash and a digit, a dot between
    shards) and 3 for the dot and the check."""
    text = encode_position(tuple(marks))
    assert len(text) <= 11 * len(marks) + 2


def test_a_lone_surrogate_is_refused_like_any_other_garbage() -> None:
    with pytest.raises(PositionError):
        decode_position("ab\udc80.zz")
