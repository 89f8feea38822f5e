from __future__ import annotations

import orjson
import pytest

from mooltiproxy.sse import DONE, SSEDecoder, encode_data

# a TGI-like stream: CRLF and LF line ends, "data:" with and without the space, a keep-alive comment,
# a multi-line event, an "event:" field, and multi-byte UTF-8 (2, 3 and 4 bytes)
STREAM = (
    b'data: {"token":{"text":"caf\xc3\xa9"}}\r\n\r\n'
    b":\n\n"
    b'data:{"token":{"text":"\xe2\x82\xac \xf0\x9f\x98\x80"}}\n\n'
    b"event: message\nid: 7\nretry: 10\ndata: line one\ndata:line two\r\n\r\n"
    b"data: \r\rdata: last\n\n"
)
EVENTS = [
    '{"token":{"text":"café"}}',
    '{"token":{"text":"€ 😀"}}',
    "line one\nline two",
    "",
    "last",
]


def decode(pieces: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    events: list[str] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    events.extend(decoder.flush())
    return events


def test_whole_stream() -> None:
    assert decode([STREAM]) == EVENTS


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_in_two_at_every_offset(cut: int) -> None:
    assert decode([STREAM[:cut], STREAM[cut:]]) == EVENTS


def test_byte_by_byte() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EVENTS


def test_events_are_returned_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == ["a"]
    assert decoder.feed(b"data: b\r") == []
    assert decoder.feed(b"\r") == ["b"]  # CR CR: two line ends
    assert decoder.feed(b"data: c\r") == []
    assert decoder.feed(b"\n") == []  # the LF of a CRLF split across reads: not an empty line
    assert decoder.feed(b"\n") == ["c"]


def test_cr_lf_split_then_empty_chunk() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == ["x"]


def test_comments_and_other_fields_are_ignored() -> None:
    assert decode([b": keep-alive\n\n:\n\nevent: ping\n\nid: 1\nretry: 5\n\n"]) == []


def test_field_without_colon() -> None:
    assert decode([b"data\n\n"]) == [""]
    assert decode([b"data\ndata: x\n\n"]) == ["\nx"]


def test_only_one_leading_space_is_dropped() -> None:
    assert decode([b"data:   x \n\n"]) == ["  x "]


def test_flush_returns_an_unterminated_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}') == []
    assert decoder.flush() == ['{"a":1}']
    assert decoder.flush() == []


def test_flush_of_a_complete_line_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.flush() == ["a"]


def test_invalid_utf8_does_not_raise() -> None:
    assert decode([b"data: \xff\xfe\n\n"]) == ["\ufffd\ufffd"]


def test_decoder_is_reusable_after_flush() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\r")
    decoder.flush()
    assert decoder.feed(b"\ndata: b\n\n") == ["b"]


def test_encoder() -> None:
    assert encode_data(orjson.dumps({"a": "é", "b": None})) == b'data: {"a":"\xc3\xa9","b":null}\n\n'
    assert encode_data(b"[1]") == b"data: [1]\n\n"
    assert DONE == b"data: [DONE]\n\n"


def test_encoder_round_trip() -> None:
    payloads = [{"x": "a\nb"}, {"y": [1, 2]}, {"z": "😀"}]
    stream = b"".join(encode_data(orjson.dumps(p)) for p in payloads) + DONE
    assert [orjson.loads(e) if e != "[DONE]" else e for e in decode([stream])] == [*payloads, "[DONE]"]
