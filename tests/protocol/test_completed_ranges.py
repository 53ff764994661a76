"""The commit-metadata encoding of finished ranges beyond the committed offset (issue 14):
round trips, the smallest encoding winning, the worst-case bound the scheduler relies on, and
a decoder that turns anything unusable into "nothing known" with a reason instead of raising."""

from __future__ import annotations

import base64
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capgroup.protocol._wire import Writer
from capgroup.protocol.completed_ranges import (
    MAX_DECOMPRESSED_BYTES,
    PREFIX,
    CompletedRanges,
    decode_completed,
    encode_completed,
    normalize_ranges,
    worst_case_chars,
)

BASE = 10_000_000


@st.composite
def completed_ranges(draw: st.DrawFn, max_ranges: int = 60) -> CompletedRanges:
    base = draw(st.integers(0, 2**40))
    n = draw(st.integers(0, max_ranges))
    ranges = []
    previous = base
    for _ in range(n):
        gap = draw(st.one_of(st.integers(1, 3), st.integers(1, 10**6)))
        length = draw(st.one_of(st.integers(1, 3), st.integers(1, 10**5)))
        ranges.append((previous + gap, previous + gap + length))
        previous += gap + length
    return CompletedRanges(base, tuple(ranges))


@given(completed_ranges())
def test_round_trip(completed: CompletedRanges) -> None:
    text = encode_completed(completed)
    assert text.isascii()
    decoded = decode_completed(text, completed.base)
    assert decoded.reason is None, decoded.detail
    assert decoded.ranges == completed


def _free_offsets(completed: CompletedRanges, limit: int, span: int) -> list[int]:
    """Up to ``limit`` offsets not done, spread over the gaps below ``base + span``, each
    isolated (a range of its own: the worst case for the encoding)."""
    found: list[int] = []
    previous = completed.base
    for start, _end in [*completed.ranges, (completed.base + span, 0)]:
        found.extend(range(previous + 1, min(start - 1, previous + 1 + 2 * limit), 2))
        previous = _end
        if len(found) >= limit:
            break
    return found[:limit]


@settings(deadline=None)
@given(completed_ranges(), st.integers(0, 40), st.integers(1, 10**7), st.randoms())
def test_the_worst_case_bound_holds_whatever_finishes(
    completed: CompletedRanges, more: int, span: int, rng: random.Random
) -> None:
    # ``more`` ranges appear anywhere below base + span, in the worst (unmerged) places.
    end = completed.ranges[-1][1] if completed.ranges else completed.base
    span = max(span, end - completed.base + 2 * more + 2)
    bound = worst_case_chars(completed, more, span)
    free = _free_offsets(completed, 4 * more + 4, span)
    extra = rng.sample(free, min(more, len(free)))
    grown = CompletedRanges(
        completed.base,
        normalize_ranges(completed.base, [*completed.ranges, *((o, o + 1) for o in extra)]),
    )
    assert len(encode_completed(grown)) <= bound
    assert len(encode_completed(completed)) <= bound


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_decoding_arbitrary_text_never_raises(text: str) -> None:
    decoded = decode_completed(text, 5)
    assert decoded.ranges.base == 5
    if decoded.reason is not None:
        assert decoded.ranges.ranges == ()


@settings(max_examples=300)
@given(st.sampled_from("RBZ"), st.binary(max_size=300))
def test_decoding_arbitrary_bodies_never_raises(kind: str, body: bytes) -> None:
    text = PREFIX + kind + base64.urlsafe_b64encode(body).rstrip(b"=").decode()
    decoded = decode_completed(text, 0)
    # Whatever it accepted is a valid set of ranges beyond the committed offset.
    assert all(start > 0 for start, _ in decoded.ranges.ranges)


@given(completed_ranges(max_ranges=20), st.data())
def test_truncated_metadata_is_nothing_known(
    completed: CompletedRanges, data: st.DataObject
) -> None:
    text = encode_completed(completed)
    if len(text) <= len(PREFIX) + 2:
        return
    cut = data.draw(st.integers(len(PREFIX) + 1, len(text) - 1))
    decoded = decode_completed(text[:cut], completed.base)
    # Either refused, or (a prefix that happens to parse) a subset of what was encoded.
    assert decoded.reason is not None or all(
        completed.contains(s) and completed.contains(e - 1) for s, e in decoded.ranges.ranges
    )


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ("", None),
        ('{"owner": "some-tool"}', "foreign"),
        ("cgr2RAAAA", "future_version"),
        ("cgr1Q", "malformed"),
        ("cgr1R", "truncated"),
        ("cgr1R!!!", "malformed"),
        ("cgr1Zabc", "malformed"),
    ],
)
def test_foreign_future_and_broken_metadata_decode_to_nothing(
    metadata: str, reason: str | None
) -> None:
    decoded = decode_completed(metadata, 42)
    assert decoded.reason == reason
    assert decoded.ranges == CompletedRanges(42)


def test_metadata_of_another_committed_offset_is_stale() -> None:
    text = encode_completed(CompletedRanges(100, ((150, 200),)))
    assert decode_completed(text, 100).ranges.ranges == ((150, 200),)
    decoded = decode_completed(text, 120)  # someone committed 120 without metadata
    assert decoded.reason == "stale"
    assert decoded.ranges == CompletedRanges(120)
    assert decode_completed(text, None).reason == "stale"


def test_a_zlib_bomb_is_too_large() -> None:
    w = Writer()
    w.uvarint(0)
    body = bytes(w.buf) + b"\x00" * (MAX_DECOMPRESSED_BYTES + 10)
    text = PREFIX + "Z" + base64.urlsafe_b64encode(zlib.compress(body, 9)).decode().rstrip("=")
    assert len(text) < 4096
    assert decode_completed(text, 0).reason == "too_large"


def test_non_canonical_bitsets_are_refused() -> None:
    def bitset(nbits: int, bits: bytes) -> str:
        w = Writer()
        w.uvarint(7)
        w.uvarint(nbits - 1)
        return PREFIX + "B" + base64.urlsafe_b64encode(bytes(w.buf) + bits).decode().rstrip("=")

    assert decode_completed(bitset(3, b"\x05"), 7).ranges.ranges == ((8, 9), (10, 11))
    assert decode_completed(bitset(3, b"\x01"), 7).reason == "malformed"  # last bit clear
    assert decode_completed(bitset(3, b"\x0d"), 7).reason == "malformed"  # bit past the count
    assert decode_completed(bitset(9, b"\x01"), 7).reason == "truncated"


def test_encoder_refuses_ranges_that_are_not_normalized() -> None:
    with pytest.raises(ValueError, match="not after"):
        CompletedRanges(10, ((10, 12),))  # the committed offset itself is never done
    with pytest.raises(ValueError, match="not after"):
        CompletedRanges(10, ((12, 14), (14, 16)))  # adjacent: must be merged
    assert normalize_ranges(10, [(14, 16), (5, 12), (12, 14), (20, 20)]) == ((11, 16),)


def test_the_smallest_encoding_wins() -> None:
    # Dense alternation: a bitset (or zlib) beats a range per offset.
    alternating = CompletedRanges(BASE, tuple((BASE + i, BASE + i + 1) for i in range(1, 400, 2)))
    text = encode_completed(alternating)
    assert text[len(PREFIX)] in "BZ"
    assert len(text) < len(PREFIX) + 1 + 4 * 2 * 200 // 3
    # A single huge gap: run-length, a few bytes.
    far = CompletedRanges(BASE, ((BASE + 10**12, BASE + 10**12 + 5),))
    assert encode_completed(far)[len(PREFIX)] == "R"
    assert len(encode_completed(far)) < 24
    # Single-record jobs, half of them done at random: nothing to compress, the bitset wins.
    rng = random.Random(14)
    dense = [(BASE + i, BASE + i + 1) for i in range(1, 2000) if rng.random() < 0.5]
    text = encode_completed(CompletedRanges(BASE, normalize_ranges(BASE, dense)))
    assert text[len(PREFIX)] == "B"


# ------------------------------------------------------------------ realistic sizes ------
def _jobs(n: int, size: int, unfinished: set[int], straggler: bool = False) -> CompletedRanges:
    """``n`` jobs of ``size`` records after BASE; the ones in ``unfinished`` are not done.
    With ``straggler``, job 0 is unfinished (the frontier waits at BASE)."""
    base = BASE
    ranges = [
        (base + i * size, base + (i + 1) * size)
        for i in range(n)
        if i not in unfinished and not (straggler and i == 0)
    ]
    if not straggler:
        # The frontier is the start of the first unfinished job.
        first = min(unfinished)
        base = BASE + first * size
        ranges = [(s, e) for s, e in ranges if s > base]
    return CompletedRanges(base, normalize_ranges(base, ranges))


REALISTIC = {
    "100 jobs of 1,000 records, 10 unfinished scattered": _jobs(100, 1000, set(range(3, 100, 10))),
    "100 jobs of 1,000 records, 10 % unfinished at random (seed 14)": _jobs(
        100, 1000, set(random.Random(14).sample(range(100), 10))
    ),
    "1 straggler, then 500 finished jobs of 1,000 records after it": _jobs(
        501, 1000, set(), straggler=True
    ),
    "1 straggler, then 500 finished jobs, every 2nd one unfinished": _jobs(
        1001, 1000, set(range(2, 1001, 2)), straggler=True
    ),
    "1 straggler, then 2,000 jobs of 100 records, 10 % unfinished at random": _jobs(
        2001, 100, set(random.Random(14).sample(range(1, 2001), 200)), straggler=True
    ),
    "alternating done/undone single offsets, 4,000 offsets": CompletedRanges(
        BASE, tuple((BASE + i, BASE + i + 1) for i in range(1, 4000, 2))
    ),
    "2,000 single-record jobs, half of them done at random (seed 14)": CompletedRanges(
        BASE,
        normalize_ranges(
            BASE,
            [(BASE + i, BASE + i + 1) for i in range(1, 2000) if random.Random(i).random() < 0.5],
        ),
    ),
}

#: Measured; the module docstring's table quotes these.
EXPECTED_CHARS = {
    "100 jobs of 1,000 records, 10 unfinished scattered": (33, "Z"),
    "100 jobs of 1,000 records, 10 % unfinished at random (seed 14)": (63, "R"),
    "1 straggler, then 500 finished jobs of 1,000 records after it": (19, "R"),
    "1 straggler, then 500 finished jobs, every 2nd one unfinished": (45, "Z"),
    "1 straggler, then 2,000 jobs of 100 records, 10 % unfinished at random": (428, "Z"),
    "alternating done/undone single offsets, 4,000 offsets": (55, "Z"),
    "2,000 single-record jobs, half of them done at random (seed 14)": (347, "B"),
}


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_realistic_sizes(name: str) -> None:
    completed = REALISTIC[name]
    text = encode_completed(completed)
    assert decode_completed(text, completed.base).ranges == completed
    print(f"{name}: {len(text)} chars, kind {text[len(PREFIX)]}")
    assert (len(text), text[len(PREFIX)]) == EXPECTED_CHARS[name]
    assert len(text) <= 0.75 * 4096
