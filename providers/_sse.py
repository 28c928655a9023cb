"""Server-sent events: an incremental decoder over raw bytes.

`SSEDecoder` follows the WHATWG event-stream interpretation rules
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- lines end with LF, CR or CRLF, and a CR at the end of one read followed by an LF at the
  start of the next is one line end, not two;
- a leading UTF-8 byte order mark is dropped, and a UTF-8 character split across two reads
  is decoded whole (invalid UTF-8 becomes U+FFFD, as the standard's decoder does);
- `data:` lines accumulate, joined with LF; `event:` sets the type (default `message`);
  `id:` sets the last event id unless the value contains NUL; `retry:` is honoured only when
  it is all ASCII digits; lines starting with `:` are comments; a line without a colon is a
  field with an empty value; one space after the colon is removed; unknown fields are
  ignored;
- a blank line dispatches the event, unless no `data:` line was seen.

One deliberate difference: at the end of the stream the standard discards an event that
has no trailing blank line. Real LLM servers end streams like that (the last `data:` line,
then the connection closes), so `close()` dispatches it instead.

The payload `data: [DONE]` is an ordinary event here; providers decide what it means.

The decoder works on bytes and splits lines before decoding UTF-8: LF and CR never occur
inside a multi-byte UTF-8 sequence, so a line boundary is always a character boundary, and
a read that ends mid-character simply leaves those bytes in the buffer with the rest of
its incomplete line.
"""

from __future__ import annotations

import msgspec

__all__ = ["SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_CR = 0x0D


class ServerSentEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event.

    Attributes:
      data: the event's data lines joined with LF.
      event: the event type (`message` unless an `event:` field said otherwise).
      id: the last event id seen in the stream so far ("" if none).
      retry: the reconnection time in milliseconds last set by the stream, if any.
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Turns the bytes of an event stream, in reads of any size, into events.

    Feed every read to `feed()`, which returns the events the read completed, and call
    `close()` at the end of the stream for the last one. How the bytes are split into reads
    never changes the events.

    Attributes:
      last_event_id: the last event id seen.
      retry: the reconnection time (milliseconds) last set by a `retry:` field, or None.
    """

    __slots__ = ("_buffer", "_cr", "_data", "_event", "_started", "last_event_id", "retry")

    def __init__(self) -> None:
        self._buffer = b""
        self._cr = False
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one read; return the events it completed (often none or one)."""
        if self._buffer or self._cr or not self._started:
            joined = self._join(chunk)
            if joined is None:
                return []
            chunk = joined
        if chunk[-1:] == b"\n":
            # The usual read: whole events, ending with their blank line.
            text = chunk.decode("utf-8", "replace")
        else:
            end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
            if end == 0:
                self._buffer = chunk
                return []
            if end == len(chunk):
                self._cr = True  # it ends with CR: an LF next belongs to this line end
                text = chunk.decode("utf-8", "replace")
            else:
                self._buffer = chunk[end:]
                text = chunk[:end].decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        lines.pop()  # the text ends with a line end: the last piece is always empty
        return self._lines(lines)

    def _join(self, chunk: bytes) -> bytes | None:
        """Apply what the previous reads left: a CR, an incomplete line, an unread BOM.

        Returns None when there is nothing to decode yet.
        """
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if self._buffer:
            chunk = self._buffer + chunk
            self._buffer = b""
        if not self._started:
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._buffer = chunk
                return None
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        return chunk or None

    def close(self) -> list[ServerSentEvent]:
        """End of stream: dispatch what is pending, even without a final blank line."""
        lines = []
        if self._buffer:
            lines.append(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""
        lines.append("")
        return self._lines(lines)

    def _lines(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(
                        ServerSentEvent(
                            "\n".join(data),
                            self._event or "message",
                            self.last_event_id,
                            self.retry,
                        )
                    )
                    data = self._data = []
                self._event = ""
            elif line[:5] == "data:":
                # The hot path: almost every line of an LLM stream is `data: {...}`.
                data.append(line[6:] if line[5:6] == " " else line[5:])
            elif line[0] != ":":
                self._field(line)
        return events

    def _field(self, line: str) -> None:
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
