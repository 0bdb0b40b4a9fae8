"""Processing-mode rules: EPX002 body-mode-streamed, EPX004 header-mode-global,
EPX011 processing-mode-partial, EPX013 body-mode-profile."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from policies.findings import Level
from policies.patch import PatchOp
from policies.pieces import BODY_FULL_DUPLEX, PER_ROUTE_TYPE, FilterPiece, ModeSite, RoutePiece
from policies.profile import BODY_FIELDS, BODY_MODES, ENVOY_MODE_DEFAULTS, MODE_FIELDS
from policies.rules.base import Rule, Violation, for_role, set_field, spell_tree
from policies.spelling import find_key, get_field
from policies.subject import Subject

TRAILER_OF: dict[str, str] = {
    "request_body_mode": "request_trailer_mode",
    "response_body_mode": "response_trailer_mode",
}

KNOWN_MODES = frozenset(BODY_MODES) | {"SEND", "SKIP"}
"""Mode values the rules reason about; anything else is EPX008's."""


def mode_value(site: ModeSite, field: str) -> Any:
    """The field as written (None when unset or `DEFAULT`)."""
    if site.mode is None:
        return None
    value = get_field(site.mode, field)
    return None if value == "DEFAULT" else value


def effective_mode(site: ModeSite, field: str) -> Any:
    """What Envoy does for the field: the written value, else Envoy's default."""
    value = mode_value(site, field)
    return ENVOY_MODE_DEFAULTS[field] if value is None else value


def field_path(site: ModeSite, field: str) -> str:
    if site.mode is None:
        return site.path
    return f"{site.path}/{find_key(site.mode, field) or field}"


def set_mode_fields(subject: Subject, site: ModeSite, fields: Mapping[str, str]) -> Iterator[PatchOp]:
    """Ops that give a processing_mode these field values (creating processing_mode when absent)."""
    spelling = subject.spelling
    if site.mode is None:
        yield set_field(
            site.parent_path, site.parent, "processing_mode", spell_tree(dict(fields), spelling), spelling
        )
        return
    for field, value in fields.items():
        yield set_field(site.path, site.mode, field, value, spelling)


def sites_with_pieces(subject: Subject) -> Iterator[tuple[ModeSite, FilterPiece | RoutePiece]]:
    """Every processing_mode of the document (filters' global ones, enabled overrides') and its piece."""
    for piece in subject.pieces.filters:
        if piece.mode_site is not None:
            yield piece.mode_site, piece
    for route in subject.pieces.routes:
        if route.mode_site is not None and not route.disabled:
            yield route.mode_site, route


def profile_note(subject: Subject) -> str:
    choice = subject.profile_choice
    return f"profile {choice.profile.name}: {choice.why}"


def _where(site: ModeSite) -> str:
    return "the filter's processing_mode" if site.is_global else "a per-route override's processing_mode"


# EPX002 -----------------------------------------------------------------------------------------------


def _disallowed_bodies(subject: Subject, site: ModeSite) -> Iterator[tuple[str, str]]:
    allowed = subject.policy.body_modes
    for field in BODY_FIELDS:
        value = mode_value(site, field)
        if value in BODY_MODES and value not in allowed:
            yield field, value


def _body_replacement(subject: Subject, site: ModeSite, field: str) -> str:
    """The profile's body mode for this site (the route override's, or the pass-through global's)."""
    profile = subject.profile
    wanted = (profile.global_mode if site.is_global else profile.route_mode)[field]
    return wanted if wanted in subject.policy.body_modes else "NONE"


def check_body_streamed(subject: Subject) -> Iterator[Violation]:
    for site, piece in sites_with_pieces(subject):
        epp = subject.is_epp(piece)
        for field, value in _disallowed_bodies(subject, site):
            if epp:
                replacement = _body_replacement(subject, site, field)
                remedy = f"use {replacement} ({profile_note(subject)})"
                fix = f"set {field} {replacement}"
            else:
                remedy = "if this is the EPP's filter, mark it so the fix can choose the EPP's body mode"
                fix = f"set {field} to a mode its ext_proc server supports"
            violation = Violation(
                path=field_path(site, field),
                message=(
                    f"{_where(site)} sets {field} {value}, which the policy does not allow: the filter holds "
                    f"the request waiting on body chunks the EPP does not answer, so requests stall; "
                    f"{remedy}"
                ),
                fix=fix,
                fixable=True,
            )
            yield for_role(subject, piece, violation, envoy_rejects=False)


def fix_body_streamed(subject: Subject) -> Iterator[PatchOp]:
    for site in subject.epp.mode_sites:
        fields = {
            field: _body_replacement(subject, site, field) for field, _ in _disallowed_bodies(subject, site)
        }
        if fields:
            yield from set_mode_fields(subject, site, fields)


# EPX004 -----------------------------------------------------------------------------------------------


def _sends_globally(site: ModeSite) -> bool:
    return bool(effective_mode(site, "request_header_mode") != "SKIP")


def _sends_headers(route: RoutePiece) -> bool:
    site = route.mode_site
    return not route.disabled and site is not None and mode_value(site, "request_header_mode") == "SEND"


def _has_send_override(subject: Subject) -> bool:
    """An enabled override sends request headers to the EPP: in this document or another of the workload."""
    if any(_sends_headers(route) for route in subject.epp.routes):
        return True
    names = {subject.filter_name_of(piece) for piece in subject.epp.filters}
    return any(subject.workload.has_route(name, _sends_headers) for name in names)


def check_header_mode(subject: Subject) -> Iterator[Violation]:
    epp = subject.epp
    for piece in epp.filters:
        site = piece.mode_site
        if site is None or not _sends_globally(site):
            continue
        written = mode_value(site, "request_header_mode")
        state = f"is {written}" if written is not None else "is unset (Envoy's default is SEND)"
        violation = Violation(
            path=field_path(site, "request_header_mode"),
            message=(
                f"the filter's global request_header_mode {state}: every request on the gateway goes to the "
                f"EPP, not only the routes that need a pick; set it to SKIP and send headers from a "
                f"per-route ExtProcPerRoute override"
            ),
            fix="set the global request_header_mode SKIP",
            fixable=True,
        )
        yield for_role(subject, piece, violation, envoy_rejects=False)
    if epp.filters and not _has_send_override(subject):
        routes = epp.routes
        violation = Violation(
            path=routes[0].path if routes else "/spec/configPatches",
            message=(
                "no per-route ExtProcPerRoute override sets request_header_mode SEND: once the global mode "
                "is SKIP, ext_proc never runs and no endpoint is picked; add an HTTP_ROUTE MERGE patch for "
                "the gateway's routes whose override sends request headers"
            ),
            fix="add an HTTP_ROUTE MERGE patch (context GATEWAY) with ExtProcPerRoute "
            "overrides.processing_mode request_header_mode SEND",
            fixable=True,
        )
        yield for_role(subject, epp.filters[0], violation, envoy_rejects=False)


def override_mode(subject: Subject, filter_piece: FilterPiece | None) -> dict[str, str]:
    """The processing_mode an added override gets: request headers SEND, the profile's request body mode,
    and the filter's own response and trailer modes (a trailer mode SEND where its body is FULL_DUPLEX)."""
    profile = subject.profile
    site = filter_piece.mode_site if filter_piece is not None else None
    mode: dict[str, str] = {}
    for field in MODE_FIELDS:
        if field == "request_header_mode":
            mode[field] = "SEND"
        elif field == "request_body_mode":
            mode[field] = profile.route_mode[field]
        elif site is not None and mode_value(site, field) is not None:
            mode[field] = str(effective_mode(site, field))
        else:
            mode[field] = profile.route_mode[field]
    for body, trailer in TRAILER_OF.items():
        if mode[body] == BODY_FULL_DUPLEX:
            mode[trailer] = "SEND"
    if mode["response_body_mode"] not in subject.policy.body_modes:
        mode["response_body_mode"] = profile.route_mode["response_body_mode"]
    return mode


def _route_override_ops(subject: Subject, route: RoutePiece) -> Iterator[PatchOp]:
    spelling = subject.spelling
    filter_piece = next(
        (f for f in subject.epp.filters if subject.filter_name_of(f) == route.filter_name), None
    )
    if filter_piece is None and subject.epp.filters:
        filter_piece = subject.epp.filters[0]
    full_mode = override_mode(subject, filter_piece)
    if route.overrides is None:
        value = spell_tree({"processing_mode": full_mode}, spelling)
        yield set_field(route.path, route.entry, "overrides", value, spelling)
        return
    site = route.mode_site
    if site is None or site.mode is None:
        processing_mode = spell_tree(full_mode, spelling)
        yield set_field(route.overrides_path, route.overrides, "processing_mode", processing_mode, spelling)
        return
    yield set_field(site.path, site.mode, "request_header_mode", "SEND", spelling)


def _new_route_patch(subject: Subject) -> dict[str, Any]:
    filter_piece = subject.epp.filters[0]
    name = subject.filter_name_of(filter_piece)
    value = {
        "typed_per_filter_config": {
            name: {
                "@type": PER_ROUTE_TYPE,
                "overrides": {"processing_mode": override_mode(subject, filter_piece)},
            }
        }
    }
    return {
        "applyTo": "HTTP_ROUTE",
        "match": {"context": "GATEWAY"},
        "patch": {"operation": "MERGE", "value": spell_tree(value, subject.spelling)},
    }


def fix_header_mode(subject: Subject) -> Iterator[PatchOp]:
    epp = subject.epp
    for piece in epp.filters:
        site = piece.mode_site
        if site is not None and _sends_globally(site):
            yield from set_mode_fields(subject, site, {"request_header_mode": "SKIP"})
    if not epp.filters or _has_send_override(subject):
        return
    routes = [route for route in epp.routes if not route.disabled]
    if routes:
        for route in routes:
            yield from _route_override_ops(subject, route)
        return
    index = subject.envoy_filter.patch_count
    yield PatchOp("add", f"/spec/configPatches/{index}", _new_route_patch(subject))


# EPX011 -----------------------------------------------------------------------------------------------


def _unset_fields(site: ModeSite) -> list[str]:
    return [field for field in MODE_FIELDS if mode_value(site, field) is None]


def check_partial_mode(subject: Subject) -> Iterator[Violation]:
    for site, piece in sites_with_pieces(subject):
        unset = _unset_fields(site)
        if not unset or not subject.is_epp(piece):
            continue
        yield for_role(
            subject,
            piece,
            Violation(
                path=site.path,
                message=(
                    f"{_where(site)} leaves {', '.join(unset)} unset, so Envoy's defaults apply (headers "
                    f"SEND): a per-route override replaces the whole mode and the EPP gets messages it does "
                    f"not expect; write all six mode fields"
                ),
                fix="write every processing_mode field explicitly",
                fixable=True,
            ),
            envoy_rejects=False,
        )


def fix_partial_mode(subject: Subject) -> Iterator[PatchOp]:
    profile = subject.profile
    for site in subject.epp.mode_sites:
        target = profile.global_mode if site.is_global else profile.route_mode
        unset = _unset_fields(site)
        if unset:
            yield from set_mode_fields(subject, site, {field: target[field] for field in unset})


# EPX013 -----------------------------------------------------------------------------------------------


def _profile_mismatches(subject: Subject, site: ModeSite) -> dict[str, Any]:
    if effective_mode(site, "request_header_mode") != "SEND":
        return {}
    skip_disallowed = subject.policy.level("EPX002") is not Level.OFF
    allowed = subject.policy.body_modes
    wrong: dict[str, Any] = {}
    for field, wanted in subject.profile.pinned.items():
        value = effective_mode(site, field)
        if value == wanted or not isinstance(value, str) or value not in KNOWN_MODES:
            continue
        if skip_disallowed and field in BODY_FIELDS and value not in allowed:
            continue
        wrong[field] = value
    return wrong


def check_body_profile(subject: Subject) -> Iterator[Violation]:
    profile = subject.profile
    why = subject.profile_choice.why
    for site, piece in sites_with_pieces(subject):
        if not subject.is_epp(piece):
            continue
        for field, value in _profile_mismatches(subject, site).items():
            wanted = profile.pinned[field]
            violation = Violation(
                path=field_path(site, field),
                message=(
                    f"{_where(site)} has {field} {value}, but the {profile.name} profile ({profile.summary}; "
                    f"chosen because {why}) needs {wanted}: otherwise the EPP waits for what never comes and "
                    f"requests time out; set {field} {wanted}"
                ),
                fix=f"set {field} {wanted}",
                fixable=True,
            )
            yield for_role(subject, piece, violation, envoy_rejects=False)


def fix_body_profile(subject: Subject) -> Iterator[PatchOp]:
    profile = subject.profile
    for site in subject.epp.mode_sites:
        wrong = _profile_mismatches(subject, site)
        if wrong:
            yield from set_mode_fields(subject, site, {field: profile.pinned[field] for field in wrong})


# EPX014 -----------------------------------------------------------------------------------------------


def _untrailed(site: ModeSite) -> list[tuple[str, str]]:
    """(body field, trailer field) pairs where the body is FULL_DUPLEX_STREAMED and the trailer not SEND."""
    return [
        (body, trailer)
        for body, trailer in TRAILER_OF.items()
        if mode_value(site, body) == BODY_FULL_DUPLEX and effective_mode(site, trailer) != "SEND"
    ]


def check_full_duplex_trailers(subject: Subject) -> Iterator[Violation]:
    for site, piece in sites_with_pieces(subject):
        for body, trailer in _untrailed(site):
            if site.is_global:
                effect = (
                    "Envoy rejects the filter and with it the listener (the gateway keeps its old config)"
                )
            else:
                effect = (
                    "Envoy does not check overrides at load time, and the stream fails when the route runs"
                )
            violation = Violation(
                path=field_path(site, trailer),
                message=(
                    f"{_where(site)} sets {body} FULL_DUPLEX_STREAMED without {trailer} SEND: {effect}; "
                    f"set {trailer} SEND"
                ),
                fix=f"set {trailer} SEND",
                fixable=True,
            )
            yield for_role(subject, piece, violation, envoy_rejects=site.is_global)


def fix_full_duplex_trailers(subject: Subject) -> Iterator[PatchOp]:
    for site in subject.epp.mode_sites:
        fields = {trailer: "SEND" for _, trailer in _untrailed(site)}
        if fields:
            yield from set_mode_fields(subject, site, fields)


# EPX015 -----------------------------------------------------------------------------------------------


def check_mode_override_ignored(subject: Subject) -> Iterator[Violation]:
    for piece in subject.pieces.filters:
        config, site = piece.config, piece.mode_site
        if config is None or site is None:
            continue
        key = find_key(config, "allow_mode_override")
        if key is None or config[key] is not True:
            continue
        duplex = [field for field in BODY_FIELDS if mode_value(site, field) == BODY_FULL_DUPLEX]
        if not duplex:
            continue
        violation = Violation(
            path=f"{piece.config_path}/{key}",
            message=(
                f"allow_mode_override is true while {duplex[0]} is FULL_DUPLEX_STREAMED: Envoy ignores mode "
                f"overrides from the ext_proc server in that mode, so a server that relies on them never "
                f"changes the mode; drop allow_mode_override or the FULL_DUPLEX_STREAMED body mode"
            ),
            fix="remove allow_mode_override (it has no effect with FULL_DUPLEX_STREAMED)",
            fixable=False,
        )
        yield for_role(subject, piece, violation, envoy_rejects=False)


EPX002 = Rule("EPX002", "body-mode-streamed", check_body_streamed, fix_body_streamed)
EPX004 = Rule("EPX004", "header-mode-global", check_header_mode, fix_header_mode)
EPX011 = Rule("EPX011", "processing-mode-partial", check_partial_mode, fix_partial_mode)
EPX013 = Rule("EPX013", "body-mode-profile", check_body_profile, fix_body_profile)
EPX014 = Rule("EPX014", "full-duplex-trailers", check_full_duplex_trailers, fix_full_duplex_trailers)
EPX015 = Rule("EPX015", "mode-override-ignored", check_mode_override_ignored)
