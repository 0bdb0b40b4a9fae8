"""What a request header block means to the EPP's HTTP/2 server, and the HPACK blocks of its answers.

A request is first checked as HTTP/2 (RFC 9113 section 8.2 and 8.3: a malformed one is a stream error),
then as a call: a gRPC call to a method this server runs, a gRPC call it refuses with a trailers-only
answer, or a request that is not gRPC at all (not POST, or not application/grpc), which gets an HTTP
status with a plain-text explanation as the body. Pure: no I/O and no connection state; `Decoded`
is computed once per distinct header block.
"""

from __future__ import annotations

import re

from epp.processor import METHOD_NAME, SERVICE_NAME

PROCESS_PATH = f"/{SERVICE_NAME}/{METHOD_NAME}"
HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"

# gRPC status codes
GRPC_OK, GRPC_CANCELLED, GRPC_DEADLINE_EXCEEDED = 0, 1, 4
GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED, GRPC_INTERNAL = 8, 12, 13

# HPACK: ":status: 200" (static index 8); "content-type: application/grpc" (literal, static name 31)
RESPONSE_HEADERS = b"\x88\x0f\x10\x10application/grpc"
_GRPC_STATUS = b"\x00\x0bgrpc-status"
_GRPC_MESSAGE = b"\x00\x0cgrpc-message"
_ACCEPT_IDENTITY = b"\x00\x14grpc-accept-encoding\x08identity"
_TEXT_PLAIN = b"\x0f\x10\x19text/plain; charset=utf-8"  # content-type (static name 31)

_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":path", ":authority"})
_CONNECTION_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
# RFC 9113 section 8.2.1 (names and values decoded as latin-1, one character per octet)
_BAD_NAME = re.compile(r"[\x00-\x20\x41-\x5a\x7f-\xff:]")
_BAD_VALUE = re.compile(r"[\x00\n\r]|^[ \t]|[ \t]$")


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(text: str) -> bytes:
    data = text.encode()
    return hpack_int(len(data), 7, 0) + data


def _percent_encode(message: str) -> str:
    """grpc-message is percent-encoded UTF-8 (printable ASCII other than % passes as is)."""
    return "".join(
        chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in message.encode("utf-8")
    )


def trailers(status: int, message: str = "") -> bytes:
    block = _GRPC_STATUS + hpack_string(str(status))
    if message:
        block += _GRPC_MESSAGE + hpack_string(_percent_encode(message))
    return block


def http_status(code: int) -> bytes:
    """`:status` as a literal with the static name index 8 (never indexed in a dynamic table)."""
    return b"\x08" + hpack_string(str(code))


OK_TRAILERS = trailers(GRPC_OK)


def parse_timeout(value: str) -> float | None:
    match = _TIMEOUT.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]


def _field_problem(name: str, value: str) -> str | None:
    """Why a regular (not pseudo) field is not allowed in HTTP/2 (RFC 9113 section 8.2), None if it is."""
    if name != name.lower():
        return f"header name {name!r} has upper-case letters"
    if not name or _BAD_NAME.search(name):
        return f"header name {name!r} has characters HTTP/2 does not allow"
    if _BAD_VALUE.search(value):
        return f"header {name} has a value with NUL, CR, LF or surrounding whitespace"
    if name in _CONNECTION_HEADERS:
        return f"connection-specific header {name}"
    if name == "te" and value != "trailers":
        return f"te: {value!r} (only 'trailers' is allowed)"
    return None


def request_problem(headers: list[tuple[str, str]]) -> str | None:
    """Why a request header list is malformed (RFC 9113 section 8.2, 8.3), None when it is fine."""
    pseudo: dict[str, str] = {}
    regular = False
    content_length: str | None = None
    for name, value in headers:
        if name.startswith(":"):
            if regular:
                return f"pseudo-header {name} after a regular header"
            if name not in _REQUEST_PSEUDO:
                return f"pseudo-header {name} is not a request pseudo-header"
            if name in pseudo:
                return f"pseudo-header {name} twice"
            pseudo[name] = value
            continue
        regular = True
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
        if name == "content-length":
            if not (value.isascii() and value.isdigit()):
                return f"content-length {value!r} is not a number"
            if content_length is not None and int(value) != int(content_length):
                return "two different content-length values"
            content_length = value
    method = pseudo.get(":method")
    if method == "CONNECT":  # section 8.5: only :method and :authority
        if ":authority" not in pseudo or ":scheme" in pseudo or ":path" in pseudo:
            return "CONNECT needs :authority and no :scheme or :path"
        return None
    missing = {":method", ":scheme", ":path"} - pseudo.keys()
    if missing:
        return "missing " + ", ".join(sorted(missing))
    path = pseudo[":path"]
    if not path:
        return "empty :path"
    if not path.startswith("/") and not (path == "*" and method == "OPTIONS"):
        return f":path {path[:64]!r} is neither an absolute path nor '*' for OPTIONS"
    return None


def trailer_problem(headers: list[tuple[str, str]]) -> str | None:
    """Why a trailer field list is malformed (RFC 9113 section 8.1: no pseudo-headers), None if fine."""
    for name, value in headers:
        if name.startswith(":"):
            return f"pseudo-header {name} in trailers"
        problem = _field_problem(name, value)
        if problem is not None:
            return problem
    return None


def _not_grpc(code: int, status: int, message: str, method: str) -> tuple[bytes, bytes]:
    """An HTTP error for a request that is not a gRPC call: the gRPC status for gRPC-aware proxies,
    and the reason as a plain-text body for people (none for HEAD, whose answers have no content)."""
    block = http_status(code) + _TEXT_PLAIN + trailers(status, message)
    return block, b"" if method == "HEAD" else f"{message}\n".encode()


def refusal(
    method: str, path: str, content_type: str, encoding: str, timeout: str | None
) -> tuple[bytes, bytes] | None:
    """The answer to a request this server will not run, as (header block, body), None for a call it
    serves. An empty body means a trailers-only answer (the header block ends the stream)."""
    if method != "POST":
        message = f"method {method} is not POST: this is a gRPC server"
        return _not_grpc(405, GRPC_UNIMPLEMENTED, message, method)
    if not (
        content_type == "application/grpc"
        or content_type.startswith(("application/grpc+", "application/grpc;"))
    ):
        return _not_grpc(415, GRPC_INTERNAL, f"content-type {content_type!r} is not gRPC", method)
    if path not in (PROCESS_PATH, HEALTH_CHECK_PATH):
        return RESPONSE_HEADERS + trailers(GRPC_UNIMPLEMENTED, f"method {path} is not served here"), b""
    if encoding != "identity":
        message = f"grpc-encoding {encoding} is not supported"
        return RESPONSE_HEADERS + _ACCEPT_IDENTITY + trailers(GRPC_UNIMPLEMENTED, message), b""
    if timeout is not None and parse_timeout(timeout) is None:
        return RESPONSE_HEADERS + trailers(GRPC_INTERNAL, f"malformed grpc-timeout {timeout!r}"), b""
    return None


class Decoded:
    """One decoded header block and what it means (computed once per distinct block): as a request
    (`problem`, `refusal`, ...) and, when it arrives on an open stream, as trailers (`trailer_problem`)."""

    __slots__ = ("body", "content_length", "path", "problem", "refusal", "timeout", "trailer_problem")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        values = dict(headers)
        self.problem = request_problem(headers)
        self.trailer_problem = trailer_problem(headers)
        self.path = values.get(":path", "")
        length = values.get("content-length", "")
        self.content_length = int(length) if self.problem is None and length else -1  # -1: not given
        timeout = values.get("grpc-timeout")
        answer = refusal(
            values.get(":method", ""),
            self.path,
            values.get("content-type", ""),
            values.get("grpc-encoding", "identity"),
            timeout,
        )
        self.refusal: bytes | None = answer[0] if answer is not None else None
        self.body = answer[1] if answer is not None else b""
        self.timeout = parse_timeout(timeout) if timeout is not None else None
