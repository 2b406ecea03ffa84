"""HTTP wire details of the Open Inference Protocol: compressed bodies (Content-Encoding,
Accept-Encoding) and the binary tensor extension (Inference-Header-Content-Length: a JSON header,
then the tensors' bytes in order).

    request:  Content-Encoding: gzip | deflate     the body is decompressed, at most --max-body-mb of it
              Inference-Header-Content-Length: H   body[:H] is the JSON; each input with
                                                   parameters.binary_data_size takes its bytes from
                                                   the rest, in input order
    response: an output with parameters.binary_data (or the request's binary_data_output) comes
              after the JSON header in binary (parameters.binary_data_size says how many bytes);
              Accept-Encoding: gzip | deflate compresses the answer
"""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from qdkit.serve.errors import ApiError

ENCODINGS = ("gzip", "deflate")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """`body` as sent with Content-Encoding `encoding`; a 413 once it decompresses past `limit` bytes
    (never more than limit + 1 bytes are produced: a gzip bomb costs nothing)."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in _WBITS:
        raise ApiError(415, f"Content-Encoding: {enc!r} is not supported (gzip, deflate or identity)")
    wbits = _WBITS[enc]
    if enc == "deflate" and not _zlib_header(body):
        wbits = -zlib.MAX_WBITS  # a raw deflate stream, as some clients send
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise ApiError(400, f"body: not valid {enc} data ({e})") from None
    if len(out) > limit:
        raise ApiError(413, f"body: larger than the limit of {limit:,} bytes once decompressed (--max-body-mb)")
    if not inflater.eof:
        raise ApiError(400, f"body: truncated {enc} data")
    return out


def _zlib_header(body: bytes) -> bool:
    return len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed per its Content-Encoding (BodyLimit has capped the bytes sent)."""
    return decompress(await request.body(), request.headers.get("content-encoding"), limit)


def split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary rest) of a request; (body, b"") without Inference-Header-Content-Length."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise ApiError(
            400,
            f"Inference-Header-Content-Length: {header_length!r} is not a length from 1 to the body's "
            f"{len(body):,} bytes",
        )
    return body[:n], body[n:]


def accepted_encoding(accept: str | None) -> str | None:
    """gzip or deflate if the client's Accept-Encoding asks for one (gzip first), else None."""
    if not accept:
        return None
    offered = {}
    for part in accept.lower().split(","):
        token, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        offered[token.strip()] = q
    for enc in ENCODINGS:
        if offered.get(enc, 0) > 0:
            return enc
    return None


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    else:
        c = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def infer_response(header: bytes, binary: list[bytes], accept_encoding: str | None) -> Response:
    """The answer of an infer request: JSON alone, or JSON then binary tensors; compressed if asked."""
    headers: dict[str, str] = {}
    if binary:
        body = header + b"".join(binary)
        headers["Inference-Header-Content-Length"] = str(len(header))
        media_type = "application/octet-stream"
    else:
        body, media_type = header, "application/json"
    encoding = accepted_encoding(accept_encoding)
    if encoding is not None:
        body = compress(body, encoding)
        headers["Content-Encoding"] = encoding
    headers["Vary"] = "Accept-Encoding"
    return Response(body, media_type=media_type, headers=headers)


def binary_size(parameters: Any, where: str) -> int | None:
    """An input's parameters.binary_data_size (None when it sends JSON data)."""
    if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
        return None
    from qdkit.serve.oip import whole

    size = whole(parameters["binary_data_size"])
    if size is None or size < 0:
        raise ApiError(
            400, f"{where}.parameters.binary_data_size: {parameters['binary_data_size']!r} is not a byte count"
        )
    return size
