"""Profiles: what a correct ext_proc path looks like for one kind of EPP."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

MODE_FIELDS: Final = (
    "request_header_mode",
    "request_body_mode",
    "response_header_mode",
    "response_body_mode",
    "request_trailer_mode",
    "response_trailer_mode",
)
"""The six ProcessingMode fields, in the order fixes write them."""

BODY_FIELDS: Final = ("request_body_mode", "response_body_mode")

BODY_MODES: Final = ("NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED", "GRPC")

ENVOY_MODE_DEFAULTS: Final = MappingProxyType(
    {
        "request_header_mode": "SEND",
        "request_body_mode": "NONE",
        "response_header_mode": "SEND",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
)
"""What Envoy does for a mode field left unset (or `DEFAULT`)."""


class ProfileName(StrEnum):
    HEADERS_EPP = "headers-epp"
    GIE_EPP = "gie-epp"


@dataclass(frozen=True, slots=True)
class Profile:
    """The processing modes and transport one EPP kind needs.

    `global_mode` is the filter's own processing_mode (a pass-through: nothing goes to the EPP),
    `route_mode` the per-route override that makes ext_proc run, `pinned` the fields EPX013 holds to
    the profile's values wherever a processing_mode appears, `tls` whether the EPP serves TLS.
    """

    name: ProfileName
    global_mode: MappingProxyType[str, str]
    route_mode: MappingProxyType[str, str]
    pinned: MappingProxyType[str, str]
    tls: bool
    summary: str


def _modes(*values: str) -> MappingProxyType[str, str]:
    return MappingProxyType(dict(zip(MODE_FIELDS, values, strict=True)))


HEADERS_EPP: Final = Profile(
    name=ProfileName.HEADERS_EPP,
    global_mode=_modes("SKIP", "NONE", "SKIP", "NONE", "SKIP", "SKIP"),
    route_mode=_modes("SEND", "NONE", "SKIP", "NONE", "SKIP", "SKIP"),
    pinned=MappingProxyType({"request_body_mode": "NONE", "response_body_mode": "NONE"}),
    tls=False,
    summary="an EPP that picks on request headers alone, reached over plaintext HTTP/2",
)

GIE_EPP: Final = Profile(
    name=ProfileName.GIE_EPP,
    global_mode=_modes("SKIP", "NONE", "SKIP", "NONE", "SKIP", "SKIP"),
    route_mode=_modes("SEND", "FULL_DUPLEX_STREAMED", "SEND", "FULL_DUPLEX_STREAMED", "SEND", "SEND"),
    pinned=MappingProxyType(
        {
            "request_body_mode": "FULL_DUPLEX_STREAMED",
            "response_body_mode": "FULL_DUPLEX_STREAMED",
            "request_trailer_mode": "SEND",
            "response_trailer_mode": "SEND",
        }
    ),
    tls=True,
    summary="the Gateway API Inference Extension EPP, which answers after the request body and serves TLS",
)

PROFILES: Final = MappingProxyType({p.name: p for p in (HEADERS_EPP, GIE_EPP)})
