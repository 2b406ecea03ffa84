"""uvicorn's HTTP protocol with a cap on the request head (request line and headers).

uvicorn's httptools parser has no limit of its own, and httptools joins a header that arrives in
many reads by concatenation: a 64 MiB header blocked the event loop for 7.8 s. `LimitedHttpTools`
feeds the parser in slices while a request head is incomplete and answers 431 (and closes the
connection) once MAX_HEAD_BYTES of it have been parsed without its end, so a client can spend
at most that (plus one 16 KiB slice) of the server's parsing per request. Under the h11 parser,
uvicorn's `h11_max_incomplete_event_size` is set to the same limit (server.py).
"""

from __future__ import annotations

from typing import Any

MAX_HEAD_BYTES = 64 * 1024  # request line + headers of one request
_SLICE = 16 * 1024  # bytes fed to the parser at a time while a head is incomplete

_ANSWER = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


def _answer() -> bytes:
    body = b'{"error":"headers: the request line and headers are over %d bytes"}' % MAX_HEAD_BYTES
    return _ANSWER % (len(body), body)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # no httptools: uvicorn's h11, capped by h11_max_incomplete_event_size
    HttpToolsProtocol = None  # type: ignore[misc,assignment]


def http_protocol() -> Any:
    """The protocol class for uvicorn.Config(http=...): LimitedHttpTools, or "h11" without httptools."""
    return "h11" if HttpToolsProtocol is None else LimitedHttpTools


if HttpToolsProtocol is not None:

    class LimitedHttpTools(HttpToolsProtocol):  # a module-level class: --workers pickles the config
        _head_done = False
        _head_bytes = 0

        def on_message_begin(self) -> None:
            self._head_done, self._head_bytes = False, 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_done = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._head_done, self._head_bytes = False, 0
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._head_done:  # a body: BodyLimit caps it
                super().data_received(data)
                return
            view = memoryview(data)
            for start in range(0, len(data), _SLICE):
                if self.transport.is_closing():
                    return
                if self._head_done:  # the head ended in an earlier slice: the rest at once
                    super().data_received(bytes(view[start:]))
                    return
                piece = bytes(view[start : start + _SLICE])
                if self._head_bytes >= MAX_HEAD_BYTES:  # all head, and the head not over yet
                    self.transport.write(_answer())
                    self.transport.close()
                    return
                self._head_bytes += len(piece)
                super().data_received(piece)
                if self.transport.get_protocol() is not self:  # upgraded (websocket): the rest is not HTTP
                    if start + _SLICE < len(data):
                        upgraded: Any = self.transport.get_protocol()
                        upgraded.data_received(bytes(view[start + _SLICE :]))
                    return
