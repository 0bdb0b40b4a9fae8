"""`extproc-guard doctor`: name the cause of a broken ext_proc path from Envoy's own counters."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.settings import SettingsError, add_policy_argument, load_policy_file, print_error
from policies import ProfileName

if TYPE_CHECKING:
    from policies.doctor import ClustersView, Diagnosis, DoctorSettings, EnvoyStats, Evidence, FilterFacts

DEFAULT_EPP_CLUSTER = "epp-cluster"
"""The doctor engine's default (`policies.doctor.DEFAULT_EPP_CLUSTER`), named here so listing the command
loads none of the engine; a test keeps the two equal."""

if TYPE_CHECKING:
    from cli.envoyadmin import AdminSource

logger = logging.getLogger(__name__)

EXIT_HEALTHY = 0
EXIT_CAUSE = 1
EXIT_UNREADABLE = 2
EXIT_UNKNOWN = 3

_EPILOG = """\
input: --stats FILE|- (once: counters since Envoy started; twice: the delta between two snapshots),
  or --admin URL, or --pod NAMESPACE/NAME (runs `pilot-agent request GET stats` in the proxy container);
  with --admin or --pod, --watch SECONDS reads two snapshots that far apart and diagnoses the delta.

the EPP cluster: --epp-cluster, else --filter (an EnvoyFilter, or Envoy's /config_dump JSON as
  `istioctl proxy-config all -o json` prints it), else the policy's. With --admin or --pod and neither
  flag, when the stats have no cluster of that name, the gateway's own /config_dump names it: the cluster
  of the ext_proc filter, or of the per-route override (Istio's InferencePool routes name the EPP there).

exit codes:
  0  healthy: ext_proc streams start and none fail
  1  broken: at least one cause found (the first one fits the counters best)
  2  usage error or unreadable input
  3  unknown: too little evidence (e.g. no requests in the window); send traffic and look again
"""


class _InputError(Exception):
    """Unreadable input: one line for the user, exit 2."""


@dataclass(frozen=True, slots=True)
class _Inputs:
    stats: EnvoyStats
    clusters: ClustersView | None
    source: str
    live: AdminSource | None = None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="name the cause of a broken ext_proc path from Envoy's admin counters",
        description="Name the cause of a broken ext_proc path from Envoy's own counters (/stats, /clusters).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--stats",
        action="append",
        metavar="FILE",
        help="Envoy /stats text (or ?format=json); '-' reads stdin; give twice for a delta",
    )
    source.add_argument("--admin", metavar="URL", help="Envoy's admin URL, e.g. http://127.0.0.1:15000")
    source.add_argument("--pod", metavar="NAMESPACE/NAME", help="gateway pod to read through the exec API")
    parser.add_argument("--clusters", metavar="FILE", help="Envoy /clusters text (with --stats)")
    parser.add_argument("--watch", type=float, metavar="SECONDS", help="with --admin/--pod: diagnose a delta")
    parser.add_argument("--container", default="istio-proxy", help="proxy container of --pod (istio-proxy)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig for --pod (default: in-cluster, then ~/.kube/config)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per read (10)")
    parser.add_argument(
        "--filter",
        metavar="FILE",
        help="the EnvoyFilter, or an Envoy config dump (JSON): gives the EPP cluster and profile",
    )
    parser.add_argument(
        "--epp-cluster",
        metavar="NAME",
        help=f"the EPP cluster's name (default: from --filter, else the policy's, {DEFAULT_EPP_CLUSTER})",
    )
    parser.add_argument(
        "--profile",
        choices=[p.value for p in ProfileName],
        help="EPP profile (default: the policy's, or what --filter shows)",
    )
    add_policy_argument(parser)
    parser.add_argument(
        "--stat-prefix", metavar="PREFIX", help="the gateway connection manager's stat_prefix"
    )
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from policies.doctor import Verdict, diagnose

    try:
        settings = _build_settings(args)
        inputs = _read_inputs(args)
    except _InputError as error:
        print_error(str(error))
        return EXIT_UNREADABLE
    notes: list[str] = []
    if inputs.live is not None and _may_look_up_cluster(args, settings, inputs.stats):
        settings = _settings_from_config_dump(args, settings, inputs.live, notes)
    diagnosis = diagnose(inputs.stats, settings=settings, clusters=inputs.clusters)
    if args.output == "json":
        print(json.dumps(diagnosis.to_json(), indent=2))
    else:
        text = render_text(diagnosis, source=inputs.source, settings=settings)
        print("\n".join([text, *(f"note: {note}" for note in notes)]))
    return {
        Verdict.HEALTHY: EXIT_HEALTHY,
        Verdict.BROKEN: EXIT_CAUSE,
        Verdict.UNKNOWN: EXIT_UNKNOWN,
    }[diagnosis.verdict]


def _build_settings(args: argparse.Namespace, found: FilterFacts | None = None) -> DoctorSettings:
    """Flags first, then the EnvoyFilter or config dump (`--filter`, or `found` in the gateway's own
    config_dump), then the policy (`--policy` or the built-in one)."""
    from policies.doctor import DoctorSettings

    try:
        policy = load_policy_file(args.policy)
    except SettingsError as error:
        raise _InputError(str(error)) from None
    facts = found or (_read_filter(args.filter) if args.filter else None)
    cluster = args.epp_cluster or (facts.cluster_name if facts else None) or policy.epp_cluster
    if args.profile:
        profile = ProfileName(args.profile)
    elif facts is not None and (args.policy is None or policy.profile is None):
        profile = facts.profile
    else:
        profile = policy.profile or ProfileName.HEADERS_EPP
    return DoctorSettings(epp_cluster=cluster, profile=profile, stat_prefix=args.stat_prefix)


def _read_filter(path: str) -> FilterFacts:
    """The EnvoyFilter's facts, its file read and parsed as `check` reads it."""
    from cli.sources import STDIN_ARG, STDIN_NAME, InputError, Source, SourceDocument, iter_documents

    text = _read_text(path)
    source = Source(STDIN_NAME, None) if path == STDIN_ARG else Source(path, Path(path))
    try:
        documents = [item.data for item in iter_documents(source, text) if isinstance(item, SourceDocument)]
    except InputError as error:
        raise _InputError(str(error)) from None
    for document in documents:
        facts = _facts_of(document)
        if facts is not None:
            return facts
    raise _InputError(
        f"{source.name}: no EnvoyFilter with an ext_proc filter patch, nor a config dump with ext_proc"
    )


def _facts_of(document: Mapping[str, Any]) -> FilterFacts | None:
    from policies.doctor import is_config_dump, read_config_dump_facts, read_filter_facts

    if is_config_dump(document):
        return read_config_dump_facts(document)
    return read_filter_facts(document)


def _may_look_up_cluster(args: argparse.Namespace, settings: DoctorSettings, stats: EnvoyStats) -> bool:
    """Nothing named the EPP cluster and the stats have no cluster of the default name."""
    if args.epp_cluster or args.filter:
        return False
    prefix = f"cluster.{settings.epp_cluster}."
    return not any(name.startswith(prefix) for name in stats)


def _settings_from_config_dump(
    args: argparse.Namespace, settings: DoctorSettings, source: AdminSource, notes: list[str]
) -> DoctorSettings:
    from cli.envoyadmin import AdminReadError
    from policies.doctor import is_config_dump, read_config_dump_facts

    """The EPP cluster (and profile) the gateway's own configuration names; the settings as they were when
    the config dump cannot be read or names none."""
    try:
        document = json.loads(source.read("config_dump"))
    except (AdminReadError, ValueError) as error:
        notes.append(f"could not read the gateway's config_dump to find the EPP cluster ({error})")
        return settings
    facts = read_config_dump_facts(document) if is_config_dump(document) else None
    if facts is None or facts.cluster_name is None:
        notes.append("the gateway's config_dump has no ext_proc filter naming a cluster")
        return settings
    where = "a per-route ExtProcPerRoute override" if facts.route_override else f"the {facts.name} filter"
    notes.append(
        f"the EPP cluster {facts.cluster_name!r} is the one {where} names in the gateway's config_dump"
    )
    if facts.other_clusters:
        notes.append("other routes name further EPP clusters: " + ", ".join(facts.other_clusters))
    return _build_settings(args, facts)


def _read_text(path: str) -> str:
    """One input file (`-`: stdin) read by the function every command reads its inputs with."""
    from cli.sources import InputError, read_input

    try:
        return read_input(path, stdin=sys.stdin.buffer)
    except InputError as error:
        raise _InputError(str(error)) from None


def _parse_stats_text(text: str, origin: str) -> EnvoyStats:
    from policies.doctor import StatsFormatError, parse_stats

    try:
        return parse_stats(text)
    except StatsFormatError as error:
        raise _InputError(f"{origin}: {error}") from None


def _parse_clusters_text(text: str, origin: str) -> ClustersView:
    from policies.doctor import StatsFormatError, parse_clusters

    try:
        return parse_clusters(text)
    except StatsFormatError as error:
        raise _InputError(f"{origin}: {error}") from None


def _read_inputs(args: argparse.Namespace) -> _Inputs:
    from policies.doctor import subtract_stats

    if not 0 < args.timeout <= 600:
        raise _InputError("--timeout takes 0 < SECONDS <= 600")
    if args.stats is not None:
        if args.watch is not None:
            raise _InputError("--watch needs --admin or --pod")
        if len(args.stats) > 2:
            raise _InputError("give --stats once (a snapshot) or twice (before and after)")
        if args.stats.count("-") > 1:
            raise _InputError("only one --stats may read stdin")
        snapshots = [_parse_stats_text(_read_text(path), path) for path in args.stats]
        stats = snapshots[0] if len(snapshots) == 1 else subtract_stats(snapshots[0], snapshots[1])
        clusters = _parse_clusters_text(_read_text(args.clusters), args.clusters) if args.clusters else None
        return _Inputs(stats, clusters, " -> ".join(args.stats))
    if args.clusters:
        raise _InputError("--clusters goes with --stats; --admin and --pod read /clusters themselves")
    return _read_live(_build_source(args), args.watch)


def _build_source(args: argparse.Namespace) -> AdminSource:
    from cli.envoyadmin import PodExec, parse_admin_url, parse_pod

    try:
        if args.admin:
            return parse_admin_url(args.admin, timeout=args.timeout)
        pod = parse_pod(args.pod, args.container)
    except ValueError as error:
        raise _InputError(str(error)) from None
    return PodExec(pod, kubeconfig=args.kubeconfig, timeout=args.timeout)


def _read_live(source: AdminSource, watch: float | None) -> _Inputs:
    from cli.envoyadmin import AdminReadError
    from policies.doctor import subtract_stats

    if watch is not None and not 0 < watch <= 3600:
        raise _InputError("--watch takes 0 < SECONDS <= 3600")
    try:
        first = _parse_stats_text(source.read("stats"), f"{source.describe()}/stats")
        stats = first
        if watch is not None:
            logger.info("waiting %.1f s for the second snapshot", watch)
            time.sleep(watch)
            second = _parse_stats_text(source.read("stats"), f"{source.describe()}/stats")
            stats = subtract_stats(first, second)
        clusters = _parse_clusters_text(source.read("clusters"), f"{source.describe()}/clusters")
    except AdminReadError as error:
        raise _InputError(str(error)) from None
    window = f" (delta over {watch:g} s)" if watch is not None else ""
    return _Inputs(stats, clusters, source.describe() + window, live=source)


def render_text(diagnosis: Diagnosis, *, source: str, settings: DoctorSettings) -> str:
    """The report for people: verdict, causes best first with evidence and fix, notes."""
    lines = [
        f"doctor: {source} (epp cluster {settings.epp_cluster!r}, profile {settings.profile.value})",
        f"verdict: {diagnosis.summary}",
    ]
    if diagnosis.causes:
        for number, cause in enumerate(diagnosis.causes, start=1):
            rule = f"{cause.rule} {_slug(cause.rule)}".strip() if cause.rule else "(no rule)"
            lines.append(f"{number}. {rule}: {cause.cause}")
            lines.extend(_evidence_lines(cause.evidence, indent="     "))
            lines.append(f"   fix: {cause.fix}")
    elif diagnosis.evidence:
        lines.append("evidence:")
        lines.extend(_evidence_lines(diagnosis.evidence, indent="  "))
    lines.extend(f"note: {note}" for note in diagnosis.notes)
    return "\n".join(lines)


def _evidence_lines(evidence: Evidence, *, indent: str) -> list[str]:
    return [f"{indent}{name} = {value}" for name, value in evidence.items()]


def _slug(rule_id: str) -> str:
    from policies import CATALOG

    return next((info.slug for info in CATALOG if info.id == rule_id), "")
