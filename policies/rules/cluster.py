"""EPP cluster rules: EPX003 epp-cluster-dns, EPX005 epp-cluster-http2, EPX006 epp-clusterip-stale,
EPX007 grpc-cluster-ref, EPX010 epp-cluster-tls."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from policies.findings import Level
from policies.patch import PatchOp, escape_token
from policies.pieces import ClusterPiece, FilterPiece, RoutePiece, is_ip_address, type_name
from policies.resolver import ServiceAddress, ServiceNotFound, ServiceRef, ServiceWithoutClusterIP
from policies.rules.base import Rule, Violation, for_role, set_field, set_key, spell_tree
from policies.rules.modes import effective_mode
from policies.spelling import find_key, get_field, get_mapping
from policies.subject import EPP_SERVICE_ANNOTATION, Subject

DNS_TYPES: Final = frozenset({"STRICT_DNS", "LOGICAL_DNS"})
HTTP_OPTIONS: Final = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE: Final = f"type.googleapis.com/{HTTP_OPTIONS}"
TLS_SOCKET: Final = "envoy.transport_sockets.tls"
UPSTREAM_TLS: Final = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _epp(subject: Subject, cluster: ClusterPiece, violation: Violation) -> Violation:
    return for_role(subject, cluster, violation, envoy_rejects=False)


def annotate_service(subject: Subject, ref: ServiceRef) -> Iterator[PatchOp]:
    """Record where a pinned ClusterIP came from, so the reconciler can follow the Service."""
    document = subject.document
    metadata = document.get("metadata")
    value = str(ref)
    if not isinstance(metadata, Mapping):
        yield set_key("", document, "metadata", {"annotations": {EPP_SERVICE_ANNOTATION: value}})
        return
    annotations = metadata.get("annotations")
    if not isinstance(annotations, Mapping):
        yield set_key("/metadata", metadata, "annotations", {EPP_SERVICE_ANNOTATION: value})
        return
    if annotations.get(EPP_SERVICE_ANNOTATION) != value:
        yield set_key("/metadata/annotations", annotations, EPP_SERVICE_ANNOTATION, value)


# EPX003 -----------------------------------------------------------------------------------------------


def _dns_problem(cluster: ClusterPiece) -> tuple[str, str] | None:
    """(path, what) when the cluster resolves DNS: a DNS type or a host-name endpoint."""
    if cluster.cluster_type in DNS_TYPES:
        return cluster.path + "/type", f"is {cluster.cluster_type}"
    for endpoint in cluster.endpoints:
        if not is_ip_address(endpoint.address):
            return endpoint.address_path, f"has the endpoint address {endpoint.address!r}"
    return None


def _pin_port(subject: Subject, cluster: ClusterPiece) -> int | None:
    target = subject.service_target(cluster)
    if target.address is None or not target.address.ports:
        return None
    return target.address.ports[0]


def _dns_fixable(subject: Subject, cluster: ClusterPiece) -> bool:
    target = subject.service_target(cluster)
    if target.address is None or not is_ip_address(target.address.cluster_ip):
        return False
    return bool(cluster.endpoints) or _pin_port(subject, cluster) is not None


def check_cluster_dns(subject: Subject) -> Iterator[Violation]:
    for cluster in subject.epp.epp_clusters:
        problem = _dns_problem(cluster)
        if problem is None:
            continue
        path, what = problem
        target = subject.service_target(cluster)
        fixable = _dns_fixable(subject, cluster)
        if fixable and target.address is not None:
            remedy = f"pin it as STATIC to {target.ref}'s ClusterIP {target.address.cluster_ip}"
        elif target.problem is not None:
            remedy = f"cannot pin it: {target.problem}"
        else:
            remedy = f"cannot pin it: Service {target.ref} has no usable ClusterIP or port"
        violation = Violation(
            path=path,
            message=(
                f"EPP cluster {cluster.name!r} {what}: the gateway must resolve the EPP's name itself and "
                f"ext_proc fails whenever that lookup does; {remedy}"
            ),
            fix="type STATIC with the Service's ClusterIP and port",
            fixable=fixable,
        )
        yield for_role(subject, cluster, violation, envoy_rejects=False)


def _pin_ops(subject: Subject, cluster: ClusterPiece, ip: str) -> Iterator[PatchOp]:
    """Ops that point every endpoint of the cluster at `ip` (adding an endpoint when there is none)."""
    spelling = subject.spelling
    endpoints = cluster.endpoints
    if not endpoints:
        port = _pin_port(subject, cluster)
        assignment = {
            "cluster_name": cluster.name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
                    ]
                }
            ],
        }
        yield set_field(
            cluster.path, cluster.value, "load_assignment", spell_tree(assignment, spelling), spelling
        )
        return
    for endpoint in endpoints:
        if endpoint.address != ip:
            yield set_key(endpoint.path, endpoint.socket, "address", ip)
        if get_field(endpoint.socket, "port_value") is None:
            port = _pin_port(subject, cluster)
            if port is not None:
                yield set_field(endpoint.path, endpoint.socket, "port_value", port, spelling)


def fix_cluster_dns(subject: Subject) -> Iterator[PatchOp]:
    for cluster in subject.epp.epp_clusters:
        if _dns_problem(cluster) is None or not _dns_fixable(subject, cluster):
            continue
        target = subject.service_target(cluster)
        assert target.address is not None
        assert target.ref is not None
        yield set_key(cluster.path, cluster.value, "type", "STATIC")
        yield from _pin_ops(subject, cluster, target.address.cluster_ip)
        yield from annotate_service(subject, target.ref)


# EPX006 -----------------------------------------------------------------------------------------------


def _static_endpoints(cluster: ClusterPiece) -> bool:
    endpoints = cluster.endpoints
    return (
        cluster.cluster_type == "STATIC"
        and bool(endpoints)
        and all(is_ip_address(endpoint.address) for endpoint in endpoints)
    )


def check_cluster_stale(subject: Subject) -> Iterator[Violation]:
    for cluster in subject.epp.epp_clusters:
        if not _static_endpoints(cluster):
            continue
        target = subject.service_target(cluster)
        first = cluster.endpoints[0]
        if target.address is None:
            yield _epp(
                subject,
                cluster,
                Violation(
                    path=first.address_path,
                    message=(
                        f"EPP cluster {cluster.name!r} pins {first.address}, which cannot be checked against "
                        f"the Service's live ClusterIP: {target.problem}"
                    ),
                    fix=f"annotate {EPP_SERVICE_ANNOTATION}: NAMESPACE/NAME and make the Service resolvable",
                    fixable=False,
                ),
            )
            continue
        live = target.address.cluster_ip
        for endpoint in cluster.endpoints:
            if endpoint.address != live:
                yield _epp(
                    subject,
                    cluster,
                    Violation(
                        path=endpoint.address_path,
                        message=(
                            f"EPP cluster {cluster.name!r} pins {endpoint.address}, but Service {target.ref} "
                            f"now has ClusterIP {live}: ext_proc connects to an address nobody serves; "
                            f"rewrite it to {live}"
                        ),
                        fix=f"set the address to {live}",
                        fixable=is_ip_address(live),
                    ),
                )


def fix_cluster_stale(subject: Subject) -> Iterator[PatchOp]:
    for cluster in subject.epp.epp_clusters:
        if not _static_endpoints(cluster):
            continue
        target = subject.service_target(cluster)
        if target.address is None or target.ref is None or not is_ip_address(target.address.cluster_ip):
            continue
        live = target.address.cluster_ip
        if any(endpoint.address != live for endpoint in cluster.endpoints):
            yield from _pin_ops(subject, cluster, live)
            yield from annotate_service(subject, target.ref)


# EPX007 -----------------------------------------------------------------------------------------------


def _calls_out(piece: FilterPiece) -> bool:
    """Whether the filter's own processing_mode ever opens a stream (a placeholder that sends nothing and
    is switched on per route never uses its global cluster)."""
    site = piece.mode_site
    if site is None:
        return True
    sends = [effective_mode(site, field) for field in ("request_header_mode", "response_header_mode")]
    sends += [effective_mode(site, field) for field in ("request_trailer_mode", "response_trailer_mode")]
    bodies = [effective_mode(site, field) for field in ("request_body_mode", "response_body_mode")]
    return "SEND" in sends or any(body != "NONE" for body in bodies)


def _cluster_used(subject: Subject, piece: FilterPiece) -> bool:
    """Whether the filter's own cluster is ever called: its global mode sends something, or an enabled
    per-route override (here or in the workload) switches it on without naming a cluster of its own."""
    if _calls_out(piece):
        return True
    name = piece.name or subject.policy.filter_name
    own = any(_switches_on(route) for route in subject.pieces.routes if route.filter_name == name)
    return own or subject.workload.has_route(name, _switches_on)


def _switches_on(route: RoutePiece) -> bool:
    """An enabled override that names no cluster of its own (it calls the filter's)."""
    return not route.disabled and route.target is None


def _fails_open(piece: FilterPiece | RoutePiece) -> bool:
    if not isinstance(piece, FilterPiece) or piece.config is None:
        return False
    key = find_key(piece.config, "failure_mode_allow")
    return key is not None and piece.config[key] is True


def _references(subject: Subject) -> Iterator[tuple[FilterPiece | RoutePiece, str | None, str]]:
    """(piece, cluster name, path of the name) for every envoy_grpc reference that must resolve."""
    for piece in subject.pieces.filters:
        if piece.config is None or piece.uses_google_grpc or not _cluster_used(subject, piece):
            continue
        yield piece, piece.cluster_name, piece.cluster_name_path
    for route in subject.pieces.routes:
        target = route.target
        if route.disabled or target is None or target.uses_google_grpc:
            continue
        yield route, target.cluster_name, target.cluster_name_path


def _istio_port_problem(subject: Subject, name: str) -> tuple[str, bool] | None:
    """(what is wrong, whether the Service is missing) for Istio's cluster of a Service port."""
    istio = subject.istio_cluster(name)
    if istio is None or istio.service is None:
        return None
    answer = subject.lookup(istio.service)
    if isinstance(answer, ServiceWithoutClusterIP):
        return None  # headless or ExternalName: Istio builds the cluster all the same
    if isinstance(answer, ServiceNotFound):
        return f"names Istio's cluster {name!r}, but Service {istio.service} {answer.reason}", True
    if isinstance(answer, ServiceAddress) and answer.ports and istio.port not in answer.ports:
        ports = ", ".join(map(str, answer.ports))
        what = (
            f"names Istio's cluster {name!r}, but Service {istio.service} has no port {istio.port} ({ports})"
        )
        return what, False
    return None


def check_cluster_ref(subject: Subject) -> Iterator[Violation]:
    for piece, name, path in _references(subject):
        istio = subject.istio_cluster(name)
        if name and istio is not None:
            problem = _istio_port_problem(subject, name)
            if problem is None:
                continue
            what, dangling = problem
        elif name and subject.find_cluster(name) is not None:
            continue
        elif name:
            what, dangling = (
                f"names cluster {name!r}, which no CLUSTER ADD patch of the workload defines",
                True,
            )
        else:
            what = f"names no cluster (the policy's EPP cluster is {subject.policy.epp_cluster!r})"
            dangling = False
        if dangling and not subject.context.settled:
            later = (
                "another EnvoyFilter of the same apply defines it"
                if istio is None
                else "the same apply creates the Service"
            )
            remedy = (
                f"if {later}, this resolves once it is stored "
                "(the reconciler checks again); otherwise define the cluster or name the one that exists"
            )
        else:
            remedy = "define the cluster (CLUSTER ADD) or name the one that exists"
        violation = Violation(
            path=path,
            message=(
                f"ext_proc's grpc_service.envoy_grpc {what}: every ext_proc call fails with no healthy "
                f"upstream; {remedy}"
            ),
            fix="define the cluster (CLUSTER ADD) or correct cluster_name",
            fixable=False,
            cap=Level.WARN if dangling and not subject.context.settled else None,
        )
        # A fail-open placeholder of another ext_proc user (its routes name their own clusters) still runs.
        envoy_rejects = not (_fails_open(piece) and not subject.is_epp(piece))
        yield for_role(subject, piece, violation, envoy_rejects=envoy_rejects)
    for cluster in subject.pieces.epp_clusters:
        target = subject.service_target(cluster)
        if target.address is None or not target.address.ports or not subject.is_epp(cluster):
            continue
        ports = target.address.ports
        for endpoint in cluster.endpoints:
            if endpoint.port is not None and endpoint.port not in ports:
                violation = Violation(
                    path=endpoint.path + "/" + (find_key(endpoint.socket, "port_value") or "port_value"),
                    message=(
                        f"EPP cluster {cluster.name!r} uses port {endpoint.port}, which is not a port of "
                        f"Service {target.ref} ({', '.join(map(str, ports))}): connections go nowhere; "
                        f"use the Service's gRPC port"
                    ),
                    fix="set port_value to the Service's gRPC port",
                    fixable=False,
                )
                yield for_role(subject, cluster, violation, envoy_rejects=True)


# EPX005 -----------------------------------------------------------------------------------------------


def _protocol_options(cluster: ClusterPiece) -> tuple[str | None, Any, Any]:
    """(key, map, entry) of the HttpProtocolOptions under typed_extension_protocol_options."""
    key = find_key(cluster.value, "typed_extension_protocol_options")
    options = cluster.value.get(key) if key else None
    if not isinstance(options, Mapping):
        return key, options, None
    for name, entry in options.items():
        if name == HTTP_OPTIONS or (isinstance(entry, Mapping) and entry.get("@type") == HTTP_OPTIONS_TYPE):
            return key, options, (name, entry)
    return key, options, None


def speaks_http2(cluster: ClusterPiece) -> bool:
    if isinstance(get_field(cluster.value, "http2_protocol_options"), Mapping):
        return True
    _, _, found = _protocol_options(cluster)
    if found is None or not isinstance(found[1], Mapping):
        return False
    explicit = get_mapping(found[1], "explicit_http_config")
    return explicit is not None and isinstance(get_field(explicit, "http2_protocol_options"), Mapping)


def check_cluster_http2(subject: Subject) -> Iterator[Violation]:
    for cluster in subject.pieces.epp_clusters:
        if speaks_http2(cluster):
            continue
        violation = Violation(
            path=cluster.path,
            message=(
                f"ext_proc cluster {cluster.name!r} does not speak HTTP/2: Envoy's gRPC client then talks "
                f"HTTP/1.1 to the ext_proc server, every call fails with upstream_cx_protocol_error while "
                f"rq_total still grows and the server logs nothing; add HttpProtocolOptions with "
                f"explicit_http_config.http2_protocol_options"
            ),
            fix="add typed_extension_protocol_options HttpProtocolOptions explicit_http_config "
            "http2_protocol_options {}",
            fixable=True,
        )
        yield for_role(subject, cluster, violation, envoy_rejects=True)
    yield from _check_istio_http2(subject)


def _check_istio_http2(subject: Subject) -> Iterator[Violation]:
    """An Istio Service cluster speaks HTTP/2 when the Service port says so (appProtocol or port name)."""
    seen: set[str] = set()
    for piece, name, path in _references(subject):
        istio = subject.istio_cluster(name)
        if istio is None or istio.service is None or name in seen:
            continue
        seen.add(str(name))
        answer = subject.lookup(istio.service)
        spec = answer.port_spec(istio.port) if isinstance(answer, ServiceAddress) else None
        if spec is None or spec.speaks_http2 is not False:
            continue
        declared = f"appProtocol {spec.app_protocol!r}" if spec.app_protocol else f"name {spec.name!r}"
        violation = Violation(
            path=path,
            message=(
                f"Istio's cluster {name!r} speaks what Service {istio.service} port {istio.port} declares "
                f"({declared}), which is not HTTP/2: every gRPC call to the ext_proc server fails with a "
                f"protocol error; set the port's appProtocol kubernetes.io/h2c (or grpc), or name it grpc-..."
            ),
            fix=f"set appProtocol kubernetes.io/h2c on Service {istio.service} port {istio.port}",
            fixable=False,
        )
        yield for_role(subject, piece, violation, envoy_rejects=True)


def fix_cluster_http2(subject: Subject) -> Iterator[PatchOp]:
    spelling = subject.spelling
    explicit = spell_tree({"http2_protocol_options": {}}, spelling)
    for cluster in subject.epp.epp_clusters:
        if speaks_http2(cluster):
            continue
        key, options, found = _protocol_options(cluster)
        entry = {"@type": HTTP_OPTIONS_TYPE, spelling.key("explicit_http_config"): explicit}
        if not isinstance(options, Mapping):
            value = {HTTP_OPTIONS: entry}
            yield set_field(cluster.path, cluster.value, "typed_extension_protocol_options", value, spelling)
            continue
        options_path = f"{cluster.path}/{key}"
        if found is None or not isinstance(found[1], Mapping):
            yield set_key(options_path, options, HTTP_OPTIONS if found is None else found[0], entry)
            continue
        name, current = found
        entry_path = f"{options_path}/{escape_token(name)}"
        for rival in ("auto_config", "use_downstream_protocol_config"):
            rival_key = find_key(current, rival)
            if rival_key is not None:
                yield PatchOp("remove", f"{entry_path}/{escape_token(rival_key)}")
        yield set_field(entry_path, current, "explicit_http_config", explicit, spelling)


# EPX010 -----------------------------------------------------------------------------------------------


def uses_tls(cluster: ClusterPiece) -> bool:
    socket = get_mapping(cluster.value, "transport_socket")
    if socket is None:
        return False
    config = get_mapping(socket, "typed_config")
    return socket.get("name") == TLS_SOCKET or (config is not None and type_name(config) == UPSTREAM_TLS)


def check_cluster_tls(subject: Subject) -> Iterator[Violation]:
    profile = subject.profile
    for cluster in subject.epp.epp_clusters:
        tls = uses_tls(cluster)
        if tls == profile.tls:
            continue
        if profile.tls:
            message = (
                f"EPP cluster {cluster.name!r} is plaintext, but the {profile.name} profile's EPP serves "
                f"TLS: the handshake fails, ext_proc calls end in 503 and the EPP logs nothing useful; "
                f"add an UpstreamTlsContext transport_socket"
            )
            fix = "add transport_socket envoy.transport_sockets.tls (UpstreamTlsContext)"
        else:
            message = (
                f"EPP cluster {cluster.name!r} uses TLS, but the {profile.name} profile's EPP serves "
                f"plaintext HTTP/2: the handshake never completes and every ext_proc call fails; remove "
                f"the transport_socket"
            )
            fix = "remove transport_socket"
        key = find_key(cluster.value, "transport_socket")
        path = f"{cluster.path}/{key}" if key else cluster.path
        message += f" (profile {profile.name}: {subject.profile_choice.why})"
        yield _epp(subject, cluster, Violation(path=path, message=message, fix=fix, fixable=True))
    yield from _check_istio_tls(subject)


def _check_istio_tls(subject: Subject) -> Iterator[Violation]:
    """TLS to an Istio Service cluster comes from a DestinationRule for the Service's host."""
    profile = subject.profile
    seen: set[str] = set()
    for piece, name, path in _references(subject):
        istio = subject.istio_cluster(name)
        if istio is None or istio.service is None or name in seen or not subject.is_epp(piece):
            continue
        seen.add(str(name))
        rule = subject.destination_tls(istio.service)
        mode = rule.mode_for(istio.port) if rule is not None else ""
        tls = mode in ("SIMPLE", "MUTUAL")
        if rule is not None and tls == profile.tls:
            continue
        if rule is None and not profile.tls:
            continue
        if rule is None:
            what = f"no DestinationRule for {istio.host} is in the context"
            cap: Level | None = Level.WARN
        else:
            what = f"DestinationRule {rule.namespace}/{rule.name} sets tls.mode {mode or '(none)'}"
            cap = None
        wanted = "SIMPLE (insecureSkipVerify for a self-signed EPP)" if profile.tls else "DISABLE"
        violation = Violation(
            path=path,
            message=(
                f"the {profile.name} profile's EPP ({profile.summary}) needs tls.mode {wanted} on Istio's "
                f"cluster {name!r}, but {what}; the handshake fails and every ext_proc call ends in 503 "
                f"(profile chosen because {subject.profile_choice.why})"
            ),
            fix=f"add a DestinationRule for {istio.host} with trafficPolicy.tls.mode {wanted.split()[0]}",
            fixable=False,
            cap=cap,
        )
        yield for_role(subject, piece, violation, envoy_rejects=False)


def fix_cluster_tls(subject: Subject) -> Iterator[PatchOp]:
    spelling = subject.spelling
    for cluster in subject.epp.epp_clusters:
        if uses_tls(cluster) == subject.profile.tls:
            continue
        key = find_key(cluster.value, "transport_socket")
        if not subject.profile.tls:
            if key is not None:
                yield PatchOp("remove", f"{cluster.path}/{escape_token(key)}")
            continue
        socket = {
            "name": TLS_SOCKET,
            spelling.key("typed_config"): {"@type": f"type.googleapis.com/{UPSTREAM_TLS}"},
        }
        yield set_field(cluster.path, cluster.value, "transport_socket", socket, spelling)


EPX003 = Rule("EPX003", "epp-cluster-dns", check_cluster_dns, fix_cluster_dns)
EPX005 = Rule("EPX005", "epp-cluster-http2", check_cluster_http2, fix_cluster_http2)
EPX006 = Rule("EPX006", "epp-clusterip-stale", check_cluster_stale, fix_cluster_stale)
EPX007 = Rule("EPX007", "grpc-cluster-ref", check_cluster_ref)
EPX010 = Rule("EPX010", "epp-cluster-tls", check_cluster_tls, fix_cluster_tls)
