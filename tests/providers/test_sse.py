"""SSEDecoder: the WHATWG event-stream rules, over reads split anywhere."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers import ServerSentEvent, SSEDecoder
from providers._sse import EventStreamError

BOM = b"\xef\xbb\xbf"


def decode(*reads: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events = []
    for read in reads:
        events.extend(decoder.feed(read))
    events.extend(decoder.close())
    return events


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


def reference_decode(raw: bytes) -> list[ServerSentEvent]:
    """The standard's algorithm, character by character, on the whole input at once.

    Deliberately naive, so that it is obviously right. Like `SSEDecoder` (and unlike the
    standard) it dispatches a final event that lacks its blank line.
    """
    if raw.startswith(BOM):
        raw = raw[3:]
    text = raw.decode("utf-8", "replace")
    lines: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\r":
            lines.append(current)
            current = ""
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif char == "\n":
            lines.append(current)
            current = ""
        else:
            current += char
        i += 1
    if current:
        lines.append(current)
    lines.append("")

    events = []
    data, event_type, last_id, retry = "", "", "", None
    for line in lines:
        if line == "":
            if data:
                events.append(ServerSentEvent(data[:-1], event_type or "message", last_id, retry))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            event_type = value
        elif field == "data":
            data += value + "\n"
        elif field == "id" and "\0" not in value:
            last_id = value
        elif field == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events


# -- edge cases ----------------------------------------------------------------------------


def test_lf_cr_and_crlf_line_ends_are_equivalent() -> None:
    expected = [ServerSentEvent("a"), ServerSentEvent("b")]
    for end in (b"\n", b"\r", b"\r\n"):
        raw = b"data: a" + end + end + b"data: b" + end + end
        assert decode(raw) == expected


def test_cr_at_the_end_of_a_read_and_lf_at_the_start_of_the_next_are_one_line_end() -> None:
    # Seen as two line ends, the LF would be a blank line dispatching "a" alone.
    assert decode(b"data: a\r", b"\ndata: b\n\n") == [ServerSentEvent("a\nb")]
    assert decode(b"data: a\r", b"", b"\n", b"\n") == [ServerSentEvent("a")]


def test_a_lone_cr_at_the_end_of_a_read_still_ends_the_line() -> None:
    assert decode(b"data: a\r", b"\r") == [ServerSentEvent("a")]
    assert decode(b"data: a\r", b"data: b\r\r") == [ServerSentEvent("a\nb")]


def test_multi_line_data_is_joined_with_lf() -> None:
    assert decode(b"data: one\ndata: two\ndata:\ndata: three\n\n") == [
        ServerSentEvent("one\ntwo\n\nthree")
    ]


def test_comments_are_ignored() -> None:
    assert decode(b": keep-alive\n\n:\ndata: x\n: more\n\n") == [ServerSentEvent("x")]


def test_event_sets_the_type_of_one_event_only() -> None:
    assert decode(b"event: delta\ndata: 1\n\ndata: 2\n\n") == [
        ServerSentEvent("1", "delta"),
        ServerSentEvent("2", "message"),
    ]


def test_an_event_without_data_is_not_dispatched() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: ping\n\nid: 7\n\nretry: 10\n\n") == []
    # The id and retry still count for later events; the type does not.
    assert decoder.feed(b"data: x\n\n") == [ServerSentEvent("x", id="7", retry=10)]


def test_id_persists_and_ids_with_nul_are_ignored() -> None:
    assert decode(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x00x\ndata: c\n\nid\ndata: d\n\n") == [
        ServerSentEvent("a", id="1"),
        ServerSentEvent("b", id="1"),
        ServerSentEvent("c", id="1"),
        ServerSentEvent("d", id=""),
    ]


def test_retry_takes_ascii_digits_only() -> None:
    decoder = SSEDecoder()
    for value in (b"1500", b"12a", b"-1", b" 5", b"", b"\xc2\xb2", b"3.5"):
        decoder.feed(b"retry: " + value + b"\n")
    assert decoder.retry == 1500
    assert decode(b"retry:250\ndata: x\n\n") == [ServerSentEvent("x", retry=250)]


def test_a_leading_bom_is_dropped_even_when_split_but_only_once() -> None:
    assert decode(BOM + b"data: x\n\n") == [ServerSentEvent("x")]
    assert decode(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [ServerSentEvent("x")]
    # A second BOM is part of the next field's name, which is then unknown.
    assert decode(BOM + BOM + b"data: x\n\n") == []
    assert decode(b"data: x\n\n" + BOM + b"data: y\n\n") == [ServerSentEvent("x")]


def test_a_utf8_character_split_across_reads_is_decoded_whole() -> None:
    raw = "data: héllo → 世界 🎉\n\n".encode()
    for cut in range(1, len(raw)):
        assert decode(raw[:cut], raw[cut:]) == [ServerSentEvent("héllo → 世界 🎉")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode(b"data: a\xffb\xe4\n\n") == [ServerSentEvent("a\ufffdb\ufffd")]


def test_a_final_event_without_a_blank_line_is_dispatched_at_the_end() -> None:
    # The standard discards it; LLM servers end streams this way, so we keep it.
    assert decode(b"data: a\n\ndata: last") == [ServerSentEvent("a"), ServerSentEvent("last")]
    assert decode(b"data: a\n\ndata: last\n") == [ServerSentEvent("a"), ServerSentEvent("last")]


def test_a_field_without_colon_has_an_empty_value() -> None:
    assert decode(b"data\n\n") == [ServerSentEvent("")]
    assert decode(b"event\ndata: x\n\n") == [ServerSentEvent("x", "message")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert decode(b"data:  two\n\ndata:none\n\ndata:\tx\n\n") == [
        ServerSentEvent(" two"),
        ServerSentEvent("none"),
        ServerSentEvent("\tx"),
    ]


def test_unknown_fields_are_ignored() -> None:
    assert decode(b"foo: bar\ndata: x\nDATA: y\n\n") == [ServerSentEvent("x")]


def test_done_is_an_ordinary_event() -> None:
    assert decode(b"data: {}\n\ndata: [DONE]\n\n") == [
        ServerSentEvent("{}"),
        ServerSentEvent("[DONE]"),
    ]


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\nda") == [ServerSentEvent("a"), ServerSentEvent("b")]
    assert decoder.feed(b"ta: c\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent("c")]
    assert decoder.close() == []


# -- properties ----------------------------------------------------------------------------

line_text = st.text(
    alphabet=st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=12
)
digits = st.text(alphabet="0123456789", min_size=1, max_size=6)
field_line = st.one_of(
    st.builds(lambda t: "data:" + t, line_text),
    st.builds(lambda t: "data: " + t, line_text),
    st.builds(lambda t: "event: " + t, st.sampled_from(["", "delta", "message", "é"])),
    st.builds(lambda t: "id: " + t, st.sampled_from(["", "1", "abc", "a\0b"])),
    st.builds(lambda t: "retry: " + t, st.one_of(digits, line_text)),
    st.builds(lambda t: ":" + t, line_text),
    st.sampled_from(["", "", "", "data", "event", "id", "retry", "data:[DONE]"]),
    line_text,
)
line_end = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    """A stream of plausible lines with mixed line ends, maybe a BOM, maybe no final end."""
    lines = draw(st.lists(st.tuples(field_line, line_end), max_size=30))
    text = "".join(line + end for line, end in lines)
    if draw(st.booleans()):
        text += draw(field_line)
    raw = text.encode()
    return BOM + raw if draw(st.booleans()) else raw


@st.composite
def streams_and_cuts(draw: st.DrawFn, streams: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    raw = draw(streams)
    cuts = draw(st.lists(st.integers(0, len(raw)), max_size=12)) if raw else []
    return raw, cuts


@given(streams_and_cuts(event_streams()))
def test_any_split_into_reads_decodes_like_the_reference(case: tuple[bytes, list[int]]) -> None:
    raw, cuts = case
    expected = reference_decode(raw)
    assert decode(raw) == expected
    assert decode(*split(raw, cuts)) == expected


@given(streams_and_cuts(st.binary(max_size=80)))
def test_arbitrary_bytes_decode_like_the_reference(case: tuple[bytes, list[int]]) -> None:
    raw, cuts = case
    assert decode(*split(raw, cuts)) == reference_decode(raw)


@given(streams_and_cuts(event_streams()))
def test_one_byte_reads_decode_like_one_read(case: tuple[bytes, list[int]]) -> None:
    raw, _ = case
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == decode(raw)


def test_a_line_longer_than_the_limit_is_refused_however_it_is_split() -> None:
    # Without a bound, an upstream that never ends a line fills the proxy's memory.
    decoder = SSEDecoder(max_line=1000)
    decoder.feed(b"data: " + b"x" * 500)
    with pytest.raises(EventStreamError, match="longer than 1000 bytes"):
        decoder.feed(b"x" * 600)

    whole = SSEDecoder(max_line=1000)
    with pytest.raises(EventStreamError, match="longer than 1000 bytes"):
        whole.feed(b"data: " + b"x" * 2000)


def test_lines_up_to_the_limit_are_fine() -> None:
    decoder = SSEDecoder(max_line=1000)
    assert decoder.feed(b"data: " + b"x" * 500) == []
    assert decoder.feed(b"x" * 494 + b"\n\n") == [ServerSentEvent("x" * 994)]
    assert SSEDecoder().max_line == 1024 * 1024
