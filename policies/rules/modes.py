"""Processing-mode rules: EPX002 body-mode-streamed, EPX004 header-mode-global,
EPX011 processing-mode-partial, EPX013 body-mode-profile."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from policies.findings import Level
from policies.patch import PatchOp
from policies.pieces import PER_ROUTE_TYPE, ModeSite, RoutePiece
from policies.profile import BODY_FIELDS, BODY_MODES, ENVOY_MODE_DEFAULTS, MODE_FIELDS
from policies.rules.base import Rule, Violation, set_field, spell_tree
from policies.spelling import find_key, get_field
from policies.subject import Subject

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
    for site in subject.pieces.mode_sites:
        for field, value in _disallowed_bodies(subject, site):
            replacement = _body_replacement(subject, site, field)
            yield Violation(
                path=field_path(site, field),
                message=(
                    f"{_where(site)} sets {field} {value}, which the policy does not allow: the filter holds "
                    f"the request waiting on body chunks the EPP does not answer, so requests stall; "
                    f"use {replacement}"
                ),
                fix=f"set {field} {replacement}",
                fixable=True,
            )


def fix_body_streamed(subject: Subject) -> Iterator[PatchOp]:
    for site in subject.pieces.mode_sites:
        fields = {
            field: _body_replacement(subject, site, field) for field, _ in _disallowed_bodies(subject, site)
        }
        if fields:
            yield from set_mode_fields(subject, site, fields)


# EPX004 -----------------------------------------------------------------------------------------------


def _sends_globally(site: ModeSite) -> bool:
    return bool(effective_mode(site, "request_header_mode") != "SKIP")


def _has_send_override(subject: Subject) -> bool:
    for route in subject.pieces.routes:
        site = route.mode_site
        if not route.disabled and site is not None and mode_value(site, "request_header_mode") == "SEND":
            return True
    return False


def check_header_mode(subject: Subject) -> Iterator[Violation]:
    for piece in subject.pieces.filters:
        site = piece.mode_site
        if site is None or not _sends_globally(site):
            continue
        written = mode_value(site, "request_header_mode")
        state = f"is {written}" if written is not None else "is unset (Envoy's default is SEND)"
        yield Violation(
            path=field_path(site, "request_header_mode"),
            message=(
                f"the filter's global request_header_mode {state}: every request on the gateway goes to the "
                f"EPP, not only the routes that need a pick; set it to SKIP and send headers from a "
                f"per-route ExtProcPerRoute override"
            ),
            fix="set the global request_header_mode SKIP",
            fixable=True,
        )
    if subject.pieces.filters and not _has_send_override(subject):
        routes = subject.pieces.routes
        yield Violation(
            path=routes[0].path if routes else "/spec/configPatches",
            message=(
                "no per-route ExtProcPerRoute override sets request_header_mode SEND: with the global mode "
                "SKIP ext_proc never runs and no endpoint is picked; add an HTTP_ROUTE MERGE patch whose "
                "override sends request headers"
            ),
            fix="add an HTTP_ROUTE MERGE patch with ExtProcPerRoute overrides.processing_mode "
            "request_header_mode SEND",
            fixable=True,
        )


def _route_override_ops(subject: Subject, route: RoutePiece) -> Iterator[PatchOp]:
    spelling = subject.spelling
    full_mode = dict(subject.profile.route_mode)
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
    policy = subject.policy
    value = {
        "typed_per_filter_config": {
            policy.filter_name: {
                "@type": PER_ROUTE_TYPE,
                "overrides": {"processing_mode": dict(subject.profile.route_mode)},
            }
        }
    }
    patch: dict[str, Any] = {"applyTo": "HTTP_ROUTE"}
    context = subject.pieces.filters[0].patch.context
    if context is not None:
        patch["match"] = {"context": context}
    patch["patch"] = {"operation": "MERGE", "value": spell_tree(value, subject.spelling)}
    return patch


def fix_header_mode(subject: Subject) -> Iterator[PatchOp]:
    for piece in subject.pieces.filters:
        site = piece.mode_site
        if site is not None and _sends_globally(site):
            yield from set_mode_fields(subject, site, {"request_header_mode": "SKIP"})
    if not subject.pieces.filters or _has_send_override(subject):
        return
    routes = [route for route in subject.pieces.routes if not route.disabled]
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
    for site in subject.pieces.mode_sites:
        unset = _unset_fields(site)
        if not unset:
            continue
        yield Violation(
            path=site.path,
            message=(
                f"{_where(site)} leaves {', '.join(unset)} unset, so Envoy's defaults apply (headers SEND): "
                f"a per-route override replaces the whole mode and the EPP gets messages it does not "
                f"expect; write all six mode fields"
            ),
            fix="write every processing_mode field explicitly",
            fixable=True,
        )


def fix_partial_mode(subject: Subject) -> Iterator[PatchOp]:
    profile = subject.profile
    for site in subject.pieces.mode_sites:
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
    for site in subject.pieces.mode_sites:
        for field, value in _profile_mismatches(subject, site).items():
            wanted = profile.pinned[field]
            yield Violation(
                path=field_path(site, field),
                message=(
                    f"{_where(site)} has {field} {value}, but the {profile.name} profile ({profile.summary}) "
                    f"needs {wanted}: otherwise the EPP waits for what never comes and requests time out; "
                    f"set {field} {wanted}"
                ),
                fix=f"set {field} {wanted}",
                fixable=True,
            )


def fix_body_profile(subject: Subject) -> Iterator[PatchOp]:
    profile = subject.profile
    for site in subject.pieces.mode_sites:
        wrong = _profile_mismatches(subject, site)
        if wrong:
            yield from set_mode_fields(subject, site, {field: profile.pinned[field] for field in wrong})


EPX002 = Rule("EPX002", "body-mode-streamed", check_body_streamed, fix_body_streamed)
EPX004 = Rule("EPX004", "header-mode-global", check_header_mode, fix_header_mode)
EPX011 = Rule("EPX011", "processing-mode-partial", check_partial_mode, fix_partial_mode)
EPX013 = Rule("EPX013", "body-mode-profile", check_body_profile, fix_body_profile)
