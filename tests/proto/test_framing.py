"""Tests for sidedoor.proto.framing: length-prefixed frames on a byte stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidedoor.errors import FrameTooLarge, MessageError
from sidedoor.proto.framing import MAX_FRAME_LEN, FrameDecoder, encode_frame, frame_header

BODIES = [b"a", b"hello", bytes(range(256)) * 3, b"\x00" * 1000, b"z" * MAX_FRAME_LEN]


def _decode_all(
    stream: bytes, pieces: list[int] | None = None, limit: int = MAX_FRAME_LEN
) -> list[bytes]:
    """Feed ``stream`` to a fresh decoder, cut at ``pieces`` (sorted offsets); return the frames."""
    decoder = FrameDecoder(limit)
    cuts = [0, *(pieces or []), len(stream)]
    frames: list[bytes] = []
    for start, end in itertools.pairwise(cuts):
        frames.extend(bytes(f) for f in decoder.feed(stream[start:end]))
    assert decoder.buffered == 0
    return frames


def test_golden_bytes() -> None:
    assert encode_frame(b"abc") == bytes.fromhex("0003616263")
    assert frame_header(65535) == b"\xff\xff"


def test_round_trip() -> None:
    stream = b"".join(encode_frame(b) for b in BODIES)
    assert _decode_all(stream) == BODIES


def test_whole_and_byte_at_a_time_agree() -> None:
    stream = b"".join(encode_frame(b) for b in BODIES[:4])
    whole = _decode_all(stream)
    decoder = FrameDecoder()
    one_by_one: list[bytes] = []
    for i in range(len(stream)):
        one_by_one.extend(bytes(f) for f in decoder.feed(stream[i : i + 1]))
    assert one_by_one == whole == BODIES[:4]
    assert decoder.buffered == 0


def test_incomplete_frame_waits() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    assert decoder.feed(frame[:4]) == []
    assert decoder.buffered == 4
    assert [bytes(f) for f in decoder.feed(frame[4:])] == [b"hello"]


def test_frames_survive_later_feeds() -> None:
    """A frame handed out stays valid after the decoder is fed again."""
    decoder = FrameDecoder()
    first = decoder.feed(encode_frame(b"one") + encode_frame(b"two")[:3])
    second = decoder.feed(encode_frame(b"two")[3:] + encode_frame(b"three"))
    assert [bytes(f) for f in first] == [b"one"]
    assert [bytes(f) for f in second] == [b"two", b"three"]


def test_over_the_limit_fails_on_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame_len=100)
    with pytest.raises(FrameTooLarge, match="101 bytes"):
        decoder.feed(frame_header(101))


def test_over_the_limit_fails_on_the_header_after_a_good_frame() -> None:
    decoder = FrameDecoder(max_frame_len=100)
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_frame(b"ok") + frame_header(5000))


def test_over_the_limit_fails_when_the_header_is_split() -> None:
    decoder = FrameDecoder(max_frame_len=100)
    assert decoder.feed(b"\x10") == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"\x00")


def test_at_the_limit_is_fine() -> None:
    assert _decode_all(encode_frame(b"x" * 100), limit=100) == [b"x" * 100]


def test_zero_length_frame_is_a_message_error() -> None:
    with pytest.raises(MessageError):
        FrameDecoder().feed(b"\x00\x00")
    with pytest.raises(MessageError):
        FrameDecoder().feed(encode_frame(b"ok") + b"\x00\x00" + encode_frame(b"ok"))


@pytest.mark.parametrize("body", [b"", b"x" * (MAX_FRAME_LEN + 1)])
def test_encode_refuses_bad_sizes(body: bytes) -> None:
    with pytest.raises(ValueError):
        encode_frame(body)


@st.composite
def _split_stream(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int]]:
    bodies = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=12))
    stream = b"".join(encode_frame(b) for b in bodies)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=20))
    return bodies, stream, sorted(set(cuts))


@settings(max_examples=200, deadline=None)
@given(_split_stream())
def test_any_split_decodes_the_same(case: tuple[list[bytes], bytes, list[int]]) -> None:
    bodies, stream, cuts = case
    assert _decode_all(stream, cuts) == bodies


def test_a_small_buffer_grows_for_a_big_frame_and_shrinks_after() -> None:
    decoder = FrameDecoder(buffer_size=4096)
    body = bytes(range(256)) * 200  # 51,200 bytes: more than the buffer
    wire = encode_frame(body)
    got: list[bytes] = []
    view = memoryview(wire)
    while view:
        room = decoder.get_buffer()
        n = min(len(room), len(view), 3000)
        room[:n] = view[:n]
        got.extend(bytes(f) for f in decoder.buffer_updated(n))
        view = view[n:]
    assert got == [body]
    decoder.get_buffer()
    assert len(decoder._buf) == 4096
