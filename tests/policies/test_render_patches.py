"""Istio patch semantics of the renderer, one operation at a time, under both JSON spellings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from policies.render.gateway import (
    EXT_PROC_FILTER,
    RenderError,
    RenderOptions,
    RouteSpec,
    SocketAddress,
    render_bootstrap,
    render_gateway,
)
from tests.policies.bootstraps import http_filters, manager_of, routes

HCM = "envoy.filters.network.http_connection_manager"
ROUTER = "envoy.filters.http.router"
EXT_PROC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
PER_ROUTE_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
OPTIONS = RenderOptions()


def make_filter(*patches: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": {"name": "f", "namespace": "ns"},
        "spec": {"configPatches": list(patches)},
    }


def http_filter_patch(
    operation: str, value: dict[str, Any] | None, sub_filter: str | None = None, *, camel: bool = True
) -> dict[str, Any]:
    network_filter: dict[str, Any] = {"name": HCM}
    if sub_filter is not None:
        network_filter["subFilter" if camel else "sub_filter"] = {"name": sub_filter}
    listener = {"filterChain" if camel else "filter_chain": {"filter": network_filter}}
    patch: dict[str, Any] = {"operation": operation}
    if value is not None:
        patch["value"] = value
    return {
        "applyTo" if camel else "apply_to": "HTTP_FILTER",
        "match": {"context": "GATEWAY", "listener": listener},
        "patch": patch,
    }


def ext_proc_value(cluster: str = "epp-cluster", *, camel: bool = False) -> dict[str, Any]:
    if camel:
        config = {
            "@type": EXT_PROC_TYPE,
            "grpcService": {"envoyGrpc": {"clusterName": cluster}},
            "processingMode": {"requestHeaderMode": "SKIP", "requestBodyMode": "NONE"},
        }
        return {"name": EXT_PROC_FILTER, "typedConfig": config}
    config = {
        "@type": EXT_PROC_TYPE,
        "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
        "processing_mode": {"request_header_mode": "SKIP", "request_body_mode": "NONE"},
    }
    return {"name": EXT_PROC_FILTER, "typed_config": config}


def filter_names(bootstrap: dict[str, Any]) -> list[str]:
    return [item["name"] for item in http_filters(bootstrap)]


def clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


def grpc_cluster(http_filter: dict[str, Any]) -> str:
    config = http_filter.get("typed_config") or http_filter["typedConfig"]
    service = config.get("grpc_service") or config["grpcService"]
    envoy_grpc = service.get("envoy_grpc") or service["envoyGrpc"]
    name: str = envoy_grpc.get("cluster_name") or envoy_grpc["clusterName"]
    return name


class TestReferenceGateway:
    def test_an_empty_filter_renders_ext_proc_placeholder_then_router(self) -> None:
        bootstrap = render_bootstrap(make_filter(), options=OPTIONS)
        assert filter_names(bootstrap) == [EXT_PROC_FILTER, ROUTER]
        mode = http_filters(bootstrap)[0]["typed_config"]["processing_mode"]
        assert set(mode.values()) == {"SKIP", "NONE"}

    def test_the_pool_cluster_routes_by_the_destination_header(self) -> None:
        pool = clusters(render_bootstrap(make_filter(), options=OPTIONS))["inference-pool"]
        assert pool["type"] == "ORIGINAL_DST"
        assert pool["lb_policy"] == "CLUSTER_PROVIDED"
        assert pool["original_dst_lb_config"] == {
            "use_http_header": True,
            "http_header_name": "x-gateway-destination-endpoint",
        }

    def test_options_set_ports_stat_prefix_and_names(self) -> None:
        options = RenderOptions(
            listen_address="127.0.0.1",
            listen_port=18080,
            admin_port=19000,
            stat_prefix="ingress_http",
            pool_cluster="pool",
            epp_cluster="outbound|9002||epp.ns.svc.cluster.local",
        )
        bootstrap = render_bootstrap(make_filter(), options=options)
        listener = bootstrap["static_resources"]["listeners"][0]
        assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18080}
        assert bootstrap["admin"]["address"]["socket_address"]["port_value"] == 19000
        assert listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] == "ingress_http"
        assert set(clusters(bootstrap)) == {"pool"}
        assert grpc_cluster(http_filters(bootstrap)[0]) == "outbound|9002||epp.ns.svc.cluster.local"

    def test_routes_are_ordered_longest_prefix_first(self) -> None:
        options = RenderOptions(routes=(RouteSpec("all", "/"), RouteSpec("base", "/baseline")))
        assert [r["name"] for r in routes(render_bootstrap(make_filter(), options=options))] == [
            "base",
            "all",
        ]

    def test_rendering_does_not_modify_the_input(self) -> None:
        document = make_filter(http_filter_patch("INSERT_FIRST", ext_proc_value()))
        before = copy.deepcopy(document)
        bootstrap = render_bootstrap(document, options=OPTIONS)
        http_filters(bootstrap)[0]["name"] = "changed"
        assert document == before


class TestHttpFilterOperations:
    @pytest.mark.parametrize("camel", [True, False], ids=["camelCase", "snake_case"])
    def test_replace_swaps_the_gateway_ext_proc_filter(self, camel: bool) -> None:
        patch = http_filter_patch(
            "REPLACE", ext_proc_value("mine", camel=camel), EXT_PROC_FILTER, camel=camel
        )
        rendering = render_gateway(make_filter(patch), options=OPTIONS)
        assert filter_names(rendering.bootstrap) == [EXT_PROC_FILTER, ROUTER]
        assert grpc_cluster(http_filters(rendering.bootstrap)[0]) == "mine"
        assert rendering.skipped == ()

    def test_replace_of_a_filter_the_gateway_lacks_does_nothing_and_says_so(self) -> None:
        patch = http_filter_patch("REPLACE", ext_proc_value(), "envoy.filters.http.lua")
        rendering = render_gateway(make_filter(patch), options=OPTIONS)
        assert filter_names(rendering.bootstrap) == [EXT_PROC_FILTER, ROUTER]
        assert len(rendering.skipped) == 1
        assert "no http filter named envoy.filters.http.lua" in str(rendering.skipped[0])

    @pytest.mark.parametrize(
        ("operation", "sub_filter", "expected"),
        [
            ("INSERT_BEFORE", ROUTER, [EXT_PROC_FILTER, "new", ROUTER]),
            ("INSERT_AFTER", EXT_PROC_FILTER, [EXT_PROC_FILTER, "new", ROUTER]),
            ("INSERT_BEFORE", EXT_PROC_FILTER, ["new", EXT_PROC_FILTER, ROUTER]),
            ("INSERT_FIRST", None, ["new", EXT_PROC_FILTER, ROUTER]),
            ("INSERT_BEFORE", None, ["new", EXT_PROC_FILTER, ROUTER]),
            ("INSERT_AFTER", None, [EXT_PROC_FILTER, ROUTER, "new"]),
            ("ADD", None, [EXT_PROC_FILTER, ROUTER, "new"]),
        ],
        ids=[
            "insert-before-router",
            "insert-after-ext-proc",
            "insert-before-ext-proc",
            "insert-first",
            "insert-before-without-subfilter-goes-first",
            "insert-after-without-subfilter-goes-last",
            "add-appends",
        ],
    )
    def test_insert_operations_place_the_filter(
        self, operation: str, sub_filter: str | None, expected: list[str]
    ) -> None:
        value = {"name": "new", "typed_config": {"@type": EXT_PROC_TYPE}}
        bootstrap = render_bootstrap(
            make_filter(http_filter_patch(operation, value, sub_filter)), options=OPTIONS
        )
        assert filter_names(bootstrap) == expected

    def test_insert_before_a_missing_filter_does_nothing_and_says_so(self) -> None:
        patch = http_filter_patch("INSERT_BEFORE", ext_proc_value(), "envoy.filters.http.lua")
        rendering = render_gateway(make_filter(patch), options=OPTIONS)
        assert filter_names(rendering.bootstrap) == [EXT_PROC_FILTER, ROUTER]
        assert [s.operation for s in rendering.skipped] == ["INSERT_BEFORE"]

    @pytest.mark.parametrize("camel", [True, False], ids=["camelCase", "snake_case"])
    def test_merge_changes_one_field_of_the_named_filter(self, camel: bool) -> None:
        mode_key, header_key = (
            ("processingMode", "requestHeaderMode") if camel else ("processing_mode", "request_header_mode")
        )
        config_key = "typedConfig" if camel else "typed_config"
        value = {config_key: {"@type": EXT_PROC_TYPE, mode_key: {header_key: "SEND"}}}
        patch = http_filter_patch("MERGE", value, EXT_PROC_FILTER, camel=camel)
        merged = http_filters(render_bootstrap(make_filter(patch), options=OPTIONS))[0]
        config = merged["typed_config"]
        assert "typedConfig" not in merged
        assert {"grpc_service", "processing_mode"} <= set(config)
        assert "processingMode" not in config  # merged into the existing spelling, not added beside it
        assert config["processing_mode"]["request_header_mode"] == "SEND"
        assert config["processing_mode"]["response_header_mode"] == "SKIP"
        assert grpc_cluster(merged) == "epp-cluster"

    def test_remove_drops_the_named_filter(self) -> None:
        patch = http_filter_patch("REMOVE", None, EXT_PROC_FILTER)
        assert filter_names(render_bootstrap(make_filter(patch), options=OPTIONS)) == [ROUTER]

    def test_a_patch_for_another_network_filter_does_not_apply(self) -> None:
        patch = http_filter_patch("INSERT_FIRST", ext_proc_value())
        patch["match"]["listener"]["filterChain"]["filter"]["name"] = "envoy.filters.network.tcp_proxy"
        rendering = render_gateway(make_filter(patch), options=OPTIONS)
        assert filter_names(rendering.bootstrap) == [EXT_PROC_FILTER, ROUTER]
        assert len(rendering.skipped) == 1

    @pytest.mark.parametrize(
        ("port", "applies"), [(80, True), (8080, False)], ids=["gateway-port", "other-port"]
    )
    def test_listener_port_number_must_be_the_gateway_port(self, port: int, applies: bool) -> None:
        patch = http_filter_patch("INSERT_FIRST", {"name": "new"})
        patch["match"]["listener"]["portNumber"] = port
        names = filter_names(render_bootstrap(make_filter(patch), options=RenderOptions(listen_port=0)))
        assert (names[0] == "new") is applies


class TestContext:
    @pytest.mark.parametrize(
        ("context", "applies"),
        [
            ("GATEWAY", True),
            ("ANY", True),
            (None, True),
            ("SIDECAR_OUTBOUND", False),
            ("SIDECAR_INBOUND", False),
        ],
        ids=["gateway", "any", "unset", "sidecar-outbound", "sidecar-inbound"],
    )
    def test_only_gateway_contexts_apply(self, context: str | None, applies: bool) -> None:
        patch = http_filter_patch("INSERT_FIRST", {"name": "new"})
        if context is None:
            del patch["match"]["context"]
        else:
            patch["match"]["context"] = context
        rendering = render_gateway(make_filter(patch), options=OPTIONS)
        assert (filter_names(rendering.bootstrap)[0] == "new") is applies
        assert (rendering.skipped == ()) is applies


class TestClusterOperations:
    def test_add_appends_a_cluster(self) -> None:
        patch = {
            "applyTo": "CLUSTER",
            "patch": {"operation": "ADD", "value": {"name": "epp", "type": "STATIC"}},
        }
        assert set(clusters(render_bootstrap(make_filter(patch), options=OPTIONS))) == {
            "inference-pool",
            "epp",
        }

    def test_merge_into_a_named_cluster_keeps_its_other_fields(self) -> None:
        add = {
            "applyTo": "CLUSTER",
            "patch": {"operation": "ADD", "value": {"name": "epp", "type": "STRICT_DNS"}},
        }
        merge = {
            "applyTo": "CLUSTER",
            "match": {"cluster": {"name": "epp"}},
            "patch": {"operation": "MERGE", "value": {"connectTimeout": "1s", "type": "STATIC"}},
        }
        epp = clusters(render_bootstrap(make_filter(add, merge), options=OPTIONS))["epp"]
        assert epp == {"name": "epp", "type": "STATIC", "connectTimeout": "1s"}

    def test_remove_drops_a_named_cluster(self) -> None:
        patch = {
            "applyTo": "CLUSTER",
            "match": {"cluster": {"name": "inference-pool"}},
            "patch": {"operation": "REMOVE"},
        }
        assert clusters(render_bootstrap(make_filter(patch), options=OPTIONS)) == {}

    def test_istio_cluster_names_match_by_port_and_service(self) -> None:
        name = "outbound|9002||epp.ns.svc.cluster.local"
        add = {"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": {"name": name}}}
        merge = {
            "applyTo": "CLUSTER",
            "match": {"cluster": {"portNumber": 9002, "service": "epp.ns.svc.cluster.local"}},
            "patch": {"operation": "MERGE", "value": {"type": "STATIC"}},
        }
        assert clusters(render_bootstrap(make_filter(add, merge), options=OPTIONS))[name]["type"] == "STATIC"

    def test_merge_on_a_missing_cluster_is_reported(self) -> None:
        merge = {
            "applyTo": "CLUSTER",
            "match": {"cluster": {"name": "nope"}},
            "patch": {"operation": "MERGE", "value": {"type": "STATIC"}},
        }
        rendering = render_gateway(make_filter(merge), options=OPTIONS)
        assert [s.reason for s in rendering.skipped] == ["no cluster matches"]


def per_route_patch(apply_to: str, *, camel: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    key = "typedPerFilterConfig" if camel else "typed_per_filter_config"
    return {
        "applyTo": apply_to,
        "match": {"context": "GATEWAY"},
        "patch": {
            "operation": "MERGE",
            "value": {key: {EXT_PROC_FILTER: {"@type": PER_ROUTE_TYPE, "overrides": overrides}}},
        },
    }


class TestRouteAndVirtualHostMerge:
    @pytest.mark.parametrize("camel", [True, False], ids=["camelCase", "snake_case"])
    def test_http_route_merge_adds_a_per_route_override_to_every_route(self, camel: bool) -> None:
        overrides = {"processing_mode": {"request_header_mode": "SEND"}}
        options = RenderOptions(routes=(RouteSpec("a", "/a"), RouteSpec("b", "/")))
        bootstrap = render_bootstrap(
            make_filter(per_route_patch("HTTP_ROUTE", camel=camel, overrides=overrides)), options=options
        )
        for route in routes(bootstrap):
            per_filter = route.get("typed_per_filter_config") or route["typedPerFilterConfig"]
            assert per_filter[EXT_PROC_FILTER]["overrides"] == overrides
            assert route["route"]["cluster"] == "inference-pool"  # the rest of the route is kept

    def test_two_route_merges_merge_the_map_entry_and_keep_one_spelling(self) -> None:
        first = per_route_patch(
            "HTTP_ROUTE", camel=False, overrides={"processing_mode": {"request_header_mode": "SEND"}}
        )
        second = per_route_patch(
            "HTTP_ROUTE", camel=True, overrides={"processingMode": {"requestBodyMode": "NONE"}}
        )
        route = routes(render_bootstrap(make_filter(first, second), options=OPTIONS))[0]
        assert "typedPerFilterConfig" not in route
        mode = route["typed_per_filter_config"][EXT_PROC_FILTER]["overrides"]["processing_mode"]
        assert mode == {"request_header_mode": "SEND", "requestBodyMode": "NONE"}

    def test_setting_one_member_of_a_oneof_clears_the_other(self) -> None:
        disable = {
            "applyTo": "HTTP_ROUTE",
            "patch": {
                "operation": "MERGE",
                "value": {
                    "typed_per_filter_config": {EXT_PROC_FILTER: {"@type": PER_ROUTE_TYPE, "disabled": True}}
                },
            },
        }
        enable = per_route_patch("HTTP_ROUTE", camel=False, overrides={"processing_mode": {}})
        entry = routes(render_bootstrap(make_filter(disable, enable), options=OPTIONS))[0][
            "typed_per_filter_config"
        ]
        assert entry[EXT_PROC_FILTER] == {"@type": PER_ROUTE_TYPE, "overrides": {"processing_mode": {}}}

    def test_a_value_of_another_type_replaces_the_map_entry(self) -> None:
        first = per_route_patch("HTTP_ROUTE", camel=False, overrides={"processing_mode": {}})
        other = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
        second = {
            "applyTo": "HTTP_ROUTE",
            "patch": {"operation": "MERGE", "value": {"typed_per_filter_config": {EXT_PROC_FILTER: other}}},
        }
        entry = routes(render_bootstrap(make_filter(first, second), options=OPTIONS))[0][
            "typed_per_filter_config"
        ]
        assert entry[EXT_PROC_FILTER] == other

    def test_repeated_fields_append(self) -> None:
        header = {"header": {"key": "x-a", "value": "1"}}
        patch = {
            "applyTo": "HTTP_ROUTE",
            "patch": {"operation": "MERGE", "value": {"requestHeadersToAdd": [header]}},
        }
        route = routes(render_bootstrap(make_filter(patch, patch), options=OPTIONS))[0]
        assert route["requestHeadersToAdd"] == [header, header]

    def test_route_merge_matches_by_route_name(self) -> None:
        options = RenderOptions(routes=(RouteSpec("a", "/a"), RouteSpec("b", "/")))
        patch = per_route_patch("HTTP_ROUTE", camel=False, overrides={})
        patch["match"]["routeConfiguration"] = {"vhost": {"route": {"name": "b"}}}
        by_name = {r["name"]: r for r in routes(render_bootstrap(make_filter(patch), options=options))}
        assert "typed_per_filter_config" in by_name["b"]
        assert "typed_per_filter_config" not in by_name["a"]

    def test_route_merge_on_a_missing_route_name_is_reported(self) -> None:
        patch = per_route_patch("HTTP_ROUTE", camel=False, overrides={})
        patch["match"]["routeConfiguration"] = {"vhost": {"route": {"name": "nope"}}}
        rendering = render_gateway(make_filter(patch), options=OPTIONS)
        assert [s.reason for s in rendering.skipped] == ["no route matches"]

    @pytest.mark.parametrize("camel", [True, False], ids=["camelCase", "snake_case"])
    def test_virtual_host_merge_sets_the_override_on_the_virtual_host(self, camel: bool) -> None:
        patch = per_route_patch("VIRTUAL_HOST", camel=camel, overrides={"processing_mode": {}})
        manager = manager_of(render_bootstrap(make_filter(patch), options=OPTIONS))
        host = manager["route_config"]["virtual_hosts"][0]
        per_filter = host.get("typed_per_filter_config") or host["typedPerFilterConfig"]
        assert per_filter[EXT_PROC_FILTER]["overrides"] == {"processing_mode": {}}
        assert host["domains"] == ["*"]

    def test_a_baseline_route_keeps_ext_proc_disabled_after_route_merges(self) -> None:
        options = RenderOptions(
            routes=(RouteSpec("inference", "/"), RouteSpec("baseline", "/baseline", ext_proc_disabled=True))
        )
        patch = per_route_patch(
            "HTTP_ROUTE", camel=True, overrides={"processingMode": {"requestHeaderMode": "SEND"}}
        )
        by_name = {r["name"]: r for r in routes(render_bootstrap(make_filter(patch), options=options))}
        baseline = (
            by_name["baseline"].get("typedPerFilterConfig") or by_name["baseline"]["typed_per_filter_config"]
        )
        assert baseline[EXT_PROC_FILTER] == {"@type": PER_ROUTE_TYPE, "disabled": True}
        assert by_name["inference"]["typedPerFilterConfig"][EXT_PROC_FILTER]["overrides"]


class TestEndpointOverrides:
    def test_an_override_repoints_a_patched_cluster_and_keeps_its_protocol_options(self) -> None:
        value = {
            "name": "epp-cluster",
            "type": "STATIC",
            "typed_extension_protocol_options": {"x": {"@type": "t"}},
            "load_assignment": {"cluster_name": "epp-cluster", "endpoints": []},
        }
        patch = {"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": value}}
        options = RenderOptions(endpoint_overrides={"epp-cluster": (SocketAddress("127.0.0.1", 9002),)})
        epp = clusters(render_bootstrap(make_filter(patch), options=options))["epp-cluster"]
        assert epp["typed_extension_protocol_options"] == {"x": {"@type": "t"}}
        endpoint = epp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 9002}

    def test_an_override_for_a_missing_cluster_is_an_error(self) -> None:
        options = RenderOptions(endpoint_overrides={"nope": (SocketAddress("127.0.0.1", 1),)})
        with pytest.raises(RenderError, match="no such cluster"):
            render_bootstrap(make_filter(), options=options)


class TestSkippedAndErrors:
    @pytest.mark.parametrize(
        ("patch", "reason"),
        [
            (
                {"applyTo": "LISTENER", "patch": {"operation": "MERGE", "value": {}}},
                "applyTo LISTENER is not rendered",
            ),
            (
                {"applyTo": "BOOTSTRAP", "patch": {"operation": "MERGE", "value": {}}},
                "applyTo BOOTSTRAP is not rendered",
            ),
            (
                {"applyTo": "WHATEVER", "patch": {"operation": "ADD", "value": {}}},
                "applyTo WHATEVER is not rendered",
            ),
            (
                {"applyTo": "HTTP_ROUTE", "patch": {"operation": "ADD", "value": {}}},
                "operation ADD is not rendered for HTTP_ROUTE",
            ),
            (
                {"applyTo": "CLUSTER", "patch": {"operation": "FROB", "value": {}}},
                "operation FROB is not rendered for CLUSTER",
            ),
        ],
        ids=["listener", "bootstrap", "unknown-apply-to", "route-add", "unknown-operation"],
    )
    def test_patches_that_are_not_rendered_are_reported_not_raised(
        self, patch: dict[str, Any], reason: str
    ) -> None:
        rendering = render_gateway(make_filter(patch), options=OPTIONS)
        assert [s.reason for s in rendering.skipped] == [reason]
        assert rendering.bootstrap == render_bootstrap(make_filter(), options=OPTIONS)

    @pytest.mark.parametrize(
        ("document", "message"),
        [
            ([], "an EnvoyFilter must be a mapping, got list"),
            ({"kind": "Service"}, "expected kind EnvoyFilter, got 'Service'"),
            ({"kind": "EnvoyFilter", "spec": "x"}, "spec must be a mapping, got str"),
            (
                {"kind": "EnvoyFilter", "spec": {"configPatches": {}}},
                "spec.configPatches must be a list, got dict",
            ),
            (
                {"kind": "EnvoyFilter", "spec": {"configPatches": ["x"]}},
                r"spec.configPatches\[0\] must be a mapping, got str",
            ),
            (
                make_filter({"applyTo": "CLUSTER", "patch": None}),
                r"spec.configPatches\[0\].patch must be a mapping, got null",
            ),
            (
                make_filter({"applyTo": "CLUSTER", "patch": {"operation": "ADD", "value": "epp"}}),
                r"spec.configPatches\[0\].patch.value must be a mapping, got str",
            ),
            (
                make_filter({"applyTo": "CLUSTER", "match": [], "patch": {"operation": "ADD", "value": {}}}),
                r"spec.configPatches\[0\].match must be a mapping, got list",
            ),
        ],
        ids=[
            "not-a-mapping",
            "other-kind",
            "spec-string",
            "patches-mapping",
            "patch-entry-string",
            "patch-null",
            "value-string",
            "match-list",
        ],
    )
    def test_shapes_that_cannot_be_patches_raise_a_render_error(self, document: Any, message: str) -> None:
        with pytest.raises(RenderError, match=message):
            render_bootstrap(document, options=OPTIONS)

    @pytest.mark.parametrize(
        "spec", [None, {}, {"configPatches": None}], ids=["no-spec", "empty-spec", "null-patches"]
    )
    def test_a_filter_without_patches_renders_the_reference_gateway(self, spec: Any) -> None:
        document = {"kind": "EnvoyFilter", "spec": spec}
        assert render_bootstrap(document, options=OPTIONS) == render_bootstrap(make_filter(), options=OPTIONS)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"listen_port": 70000},
            {"routes": ()},
            {"routes": (RouteSpec("a"), RouteSpec("a", "/x"))},
            {"stat_prefix": ""},
        ],
        ids=["port-out-of-range", "no-routes", "duplicate-route-names", "empty-stat-prefix"],
    )
    def test_bad_options_raise_a_render_error(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(RenderError):
            RenderOptions(**kwargs)
