"""`extproc-guard demo`: the incident on one machine, no cluster.

Part 1: the operator's EnvoyFilter, checked and fixed by the same `check` and `fix` commands a user runs
(the EPP Service pinned to a local EPP), with the fix shown as a unified diff.
Part 2: the fixed filter runs on a real Envoy with the EPP and three model-server simulators; requests
are routed by the EPP's picks.
Part 3: the same config without HTTP/2 on the epp-cluster: the seed's "rq_total grows, the EPP logs
nothing", then what `check` and `doctor` say about it.
Every command the demo runs is printed as a user would type it, and every file it reads or writes is in
its folder (kept with `--keep DIR`), so each step can be repeated by hand. Long lines are wrapped, never
cut. Every child runs in its own process group and is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from cli.demo.gateway import (
    EPP_CLUSTER,
    EPP_SERVICE,
    EXT_PROC_STATS,
    INFERENCE_PATH,
    operator_text_for_local_epp,
    render_local,
    strip_http2,
)
from epp.children import (
    Child,
    ChildError,
    find_envoy_binary,
    free_port,
    start_child,
    stop_child,
    wait_for_port,
)

CLI = (sys.executable, "-m", "cli.main")
SIMULATORS = ("sim-a", "sim-b", "sim-c")
HTTP_TIMEOUT = 15.0
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
MIN_WIDTH, MAX_WIDTH = 60, 110

# The files the demo leaves in its folder, in the order it writes them, and what each one is.
OPERATOR_FILE = "envoyfilter-operator.yaml"
FIXED_FILE = "envoyfilter-fixed.yaml"
NO_HTTP2_FILE = "envoyfilter-no-http2.yaml"
FIXED_STATS = "stats-fixed.txt"
NO_HTTP2_STATS = "stats-no-http2.txt"
NO_HTTP2_CLUSTERS = "clusters-no-http2.txt"
KEPT_FILES = {
    OPERATOR_FILE: "the operator's EnvoyFilter (its EPP cluster port set to the local EPP's)",
    FIXED_FILE: "what `fix` made of it; the Envoy of part 2 runs it",
    NO_HTTP2_FILE: "the fixed filter without HTTP/2 on the epp-cluster; the Envoy of part 3 runs it",
    FIXED_STATS: "Envoy's /stats after part 2 (for `doctor --stats`)",
    NO_HTTP2_STATS: "Envoy's /stats after part 3 (for `doctor --stats`)",
    NO_HTTP2_CLUSTERS: "Envoy's /clusters after part 3 (for `doctor --clusters`)",
    "envoy.json, envoy-no-http2.json": "the Envoy bootstraps rendered from the two filters",
    "*.log": "the logs of Envoy, the EPP and the simulators",
}


class DemoError(RuntimeError):
    """The demo could not run a step; the message says which and why."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    requests: int = 9
    broken_requests: int = 5
    workdir: Path | None = None  # None: a temporary directory, removed at the end
    program: str = "extproc-guard"  # how the printed commands name the CLI (as the user invoked it)
    width: int | None = None  # wrap printed lines here; None: the terminal's width, within 60..110


@dataclass
class _Run:
    out: TextIO
    workdir: Path
    program: str
    width: int
    children: list[Child] = field(default_factory=list)

    def say(self, text: str = "", *, indent: int = 0, hang: int = 2) -> None:
        """Print `text` wrapped to the width: continuation lines indented `hang` more than the first.

        Each line of `text` is wrapped on its own (a leading newline prints an empty line)."""
        if "\n" in text:
            for line in text.split("\n"):
                self.say(line, indent=indent, hang=hang)
            return
        prefix = " " * indent
        if len(prefix + text) <= self.width or not text.strip():
            print(prefix + text if text else "", file=self.out, flush=True)
            return
        wrapped = textwrap.fill(
            text,
            width=self.width,
            initial_indent=prefix,
            subsequent_indent=prefix + " " * hang,
            break_long_words=False,
            break_on_hyphens=False,
        )
        print(wrapped, file=self.out, flush=True)

    def say_lines(self, text: str, *, indent: int) -> None:
        for line in text.rstrip("\n").splitlines():
            stripped = line.lstrip(" ")
            self.say(stripped, indent=indent + len(line) - len(stripped), hang=4)

    def path(self, name: str) -> Path:
        return self.workdir / name

    def start(self, name: str, argv: list[str]) -> Child:
        child = start_child(name, argv, log_dir=self.workdir)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            stop_child(child, timeout=5.0)
        self.children.clear()

    def cli(
        self, args: Sequence[str], *, stdout_file: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `extproc-guard ARGS` as a user would, after printing the command line."""
        shown = [self.program, *args]
        self.say_command(shown, stdout_file=stdout_file)
        try:
            done = subprocess.run(
                [*CLI, *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise DemoError(f"`{shlex.join(shown)}` did not finish within {COMMAND_TIMEOUT:.0f} s") from None
        if stdout_file is not None:
            stdout_file.write_text(done.stdout, "utf-8")
        return done

    def say_command(self, argv: Sequence[str], *, stdout_file: Path | None = None) -> None:
        """`$ COMMAND`, with one option per continuation line when it does not fit on one."""
        groups = _option_groups([shlex.quote(str(arg)) for arg in argv])
        if stdout_file is not None:
            groups.append(f"> {shlex.quote(str(stdout_file))}")
        line = "   $ " + " ".join(groups)
        if len(line) <= self.width:
            print(line, file=self.out, flush=True)
            return
        print("   $ " + " \\\n       ".join(groups), file=self.out, flush=True)


def _option_groups(words: list[str]) -> list[str]:
    """The program with its positional words, then each option with its value: one line each if wrapped."""
    groups: list[str] = []
    for word in words:
        last = groups[-1] if groups else None
        is_option = word.startswith("-") and word != "-"
        if last is None or is_option:
            groups.append(word)
        elif not last.startswith("-") or " " not in last:
            groups[-1] = f"{last} {word}"  # a positional word, or the value of the option before it
        else:
            groups.append(word)
    return groups


def run_demo(settings: DemoSettings, *, out: TextIO = sys.stdout) -> int:
    width = settings.width or shutil.get_terminal_size((100, 24)).columns
    width = max(MIN_WIDTH, min(MAX_WIDTH, width))
    with _workdir(settings.workdir) as workdir:
        run = _Run(out, workdir, settings.program, width)
        try:
            return _demo(run, settings)
        except (ChildError, DemoError) as exc:
            run.say(f"\ndemo failed: {exc}")
            return 1
        finally:
            run.stop_all()


@contextmanager
def _workdir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="extproc-guard-demo-") as name:
        yield Path(name)


def _demo(run: _Run, settings: DemoSettings) -> int:
    envoy_binary = find_envoy_binary()
    epp_port, metrics_port = free_port(), free_port()
    sim_ports = {name: free_port() for name in SIMULATORS}
    service_arg = f"{EPP_SERVICE.namespace}/{EPP_SERVICE.name}=127.0.0.1:{epp_port}"
    run.say("== extproc-guard demo: the EPP path of the incident, on one machine ==")
    run.say(f"Files: {run.workdir}; every command below is printed as typed, to be repeated by hand.")
    sims = {
        name: run.start(name, [*CLI, "sim-model", "--port", str(port), "--name", name, "--latency-ms", "3"])
        for name, port in sim_ports.items()
    }
    endpoints = ",".join(f"127.0.0.1:{port}" for port in sim_ports.values())
    epp = run.start(
        "epp",
        [*CLI, "epp", "--host", "127.0.0.1", "--port", str(epp_port), "--endpoints", endpoints,
         "--scrape-interval", "0.25", "--metrics-port", str(metrics_port)],
    )  # fmt: skip

    fixed_filter = _fix_operator_filter(run, epp_port=epp_port, service_arg=service_arg)
    for name, child in sims.items():
        wait_for_port(child, sim_ports[name], timeout=START_TIMEOUT)
    wait_for_port(epp, epp_port, timeout=START_TIMEOUT)
    wait_for_port(epp, metrics_port, timeout=START_TIMEOUT)
    _wait(lambda: _healthy_endpoints(metrics_port) == len(SIMULATORS), what="the EPP's first scrape")
    envoy = _start_envoy(run, "envoy", envoy_binary, render_local(fixed_filter))
    run.say(f"\n2. Real Envoy ({envoy.version}) running {run.path(FIXED_FILE)}.", hang=3)
    run.say(
        f"Started: simulators {', '.join(f'{n}@{p}' for n, p in sim_ports.items())}; EPP @{epp_port}. "
        f"{settings.requests} requests:",
        indent=3,
    )
    decisions_before = len(_decision_lines(epp))
    served: Counter[str] = Counter()
    for index in range(settings.requests):
        status, server, _ = _post(
            envoy.url(INFERENCE_PATH), {"model": "sim-model", "prompt": f"hello {index}"}
        )
        served[server or "-"] += 1
        run.say(f"request {index + 1:>2}: HTTP {status} served by {server or '-'}", indent=3)
    stats = envoy.stats()
    run.path(FIXED_STATS).write_text(envoy.stats_text, "utf-8")
    run.say("Envoy ext_proc stats: " + _format_stats(stats, _HEALTHY_STATS), indent=3)
    _wait(lambda: len(_decision_lines(epp)) - decisions_before >= settings.requests, what="the EPP's log")
    _wait(lambda: len(_stream_lines(epp)) >= settings.requests, what="the EPP's stream lines")
    run.say(f"EPP decision log (last 3 of {run.path('epp.log')}):", indent=3)
    for line in _decision_lines(epp)[-3:]:
        run.say(_without_log_prefix(line), indent=5, hang=4)
    run.say(
        "model=-: with request_body_mode NONE the EPP decides on the headers alone and never sees the "
        "JSON body that names the model, so it logs none.",
        indent=3,
    )
    healthy_ok = (
        sum(served[name] for name in SIMULATORS) == settings.requests
        and stats.get(EXT_PROC_STATS + "streams_started", 0) == settings.requests
    )
    stop_child(envoy.child)

    broken_filter = strip_http2(fixed_filter)
    run.path(NO_HTTP2_FILE).write_text(yaml.safe_dump(broken_filter, sort_keys=False), "utf-8")
    broken = _start_envoy(run, "envoy-no-http2", envoy_binary, render_local(broken_filter))
    run.say(
        "\n3. The seed's failure: the same config without HTTP/2 on the epp-cluster "
        f"({run.path(NO_HTTP2_FILE)}).",
        hang=3,
    )
    epp_lines_before = len(epp.log_text().splitlines())
    statuses = Counter(
        _post(broken.url(INFERENCE_PATH), {"model": "sim-model", "prompt": "x"})[0]
        for _ in range(settings.broken_requests)
    )
    run.say(
        f"{settings.broken_requests} requests: " + ", ".join(f"{n} x HTTP {s}" for s, n in statuses.items()),
        indent=3,
    )
    broken_stats = broken.stats()
    run.path(NO_HTTP2_STATS).write_text(broken.stats_text, "utf-8")
    run.path(NO_HTTP2_CLUSTERS).write_text(_get(broken.admin_url + "/clusters"), "utf-8")
    run.say("Envoy: " + _format_stats(broken_stats, _BROKEN_STATS), indent=3)
    time.sleep(0.3)  # the EPP writes its log in batches every 100 ms
    new_epp_lines = [line for line in epp.log_text().splitlines()[epp_lines_before:] if line.strip()]
    calls = [line for line in new_epp_lines if " decision " in line or " stream request_id=" in line]
    run.say(f"EPP: {len(calls)} ext_proc calls logged (it never saw one).", indent=3)
    refused = [line for line in new_epp_lines if "speaks HTTP/1.1" in line]
    if refused:
        run.say(f"This EPP does notice the connections ({len(refused)} logged), e.g.:", indent=3)
        run.say(_without_log_prefix(refused[0]), indent=5, hang=4)
    stop_child(broken.child)

    run.say("\n4. What extproc-guard says about that filter and that Envoy's counters:")
    _show_check(run, service_arg)
    _show_doctor(run)
    failure_shown = (
        broken_stats.get(f"cluster.{EPP_CLUSTER}.upstream_cx_protocol_error", 0) > 0
        and not calls
        and all(status >= 500 for status in statuses)
    )
    _say_files(run, kept=settings.workdir is not None)
    if healthy_ok and failure_shown:
        run.say(
            "Demo complete: the fixed path routes every request; the no-HTTP/2 path fails as in the incident."
        )
        return 0
    run.say("Demo finished, but something differed from the expected story (see above).")
    return 1


def _fix_operator_filter(run: _Run, *, epp_port: int, service_arg: str) -> dict[str, Any]:
    """Part 1: `check` and `fix` on the operator's filter, the fix as a unified diff; the fixed filter."""
    operator = run.path(OPERATOR_FILE)
    fixed = run.path(FIXED_FILE)
    try:
        operator.write_text(operator_text_for_local_epp(epp_port=epp_port), "utf-8")
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    run.say("\n1. The operator's EnvoyFilter, checked and fixed by the policy engine.")
    run.say(
        f"The EPP Service {EPP_SERVICE} answers at 127.0.0.1:{epp_port} here; --service gives `check` and "
        "`fix` that address, as CI gives them a ClusterIP.",
        indent=3,
        hang=0,
    )
    done = run.cli(["check", str(operator), "--service", service_arg])
    run.say(f"exit {done.returncode}; the findings, each with its fix:", indent=3)
    for rule, line, fix in _findings_with_fixes(done.stdout):
        run.say(f"{rule} (line {line}) fix: {fix}", indent=5, hang=4)
    _say_summary(run, done.stdout)
    done = run.cli(["fix", str(operator), "--service", service_arg], stdout_file=fixed)
    if done.returncode != 0 or not done.stdout.strip():
        raise DemoError(f"fix exited {done.returncode}: {done.stderr.strip()}")
    run.say(f"exit {done.returncode}; the fix as a unified diff (`diff -u`):", indent=3)
    diff = difflib.unified_diff(
        operator.read_text("utf-8").splitlines(),
        done.stdout.splitlines(),
        fromfile=str(operator),
        tofile=str(fixed),
        lineterm="",
    )
    for line in diff:
        print("     " + line, file=run.out, flush=True)  # a diff stays a diff: never wrapped
    run.say(
        "The comments are the operator's own; fix changes only what the rules own. What is left is a "
        "warning: EPX012 cannot see the gateway's filter chain offline.",
        indent=3,
    )
    document: dict[str, Any] = yaml.safe_load(done.stdout)
    return document


_FINDING = re.compile(r":(\d+): (EPX\d{3} [a-z0-9-]+(?: \((?:warn)\))?): ")


def _findings_with_fixes(text_report: str) -> list[tuple[str, str, str]]:
    """(rule and slug, line, fix) from `check`'s text output (one finding line, then `    fix: ...`)."""
    found: list[tuple[str, str, str]] = []
    pending: tuple[str, str] | None = None
    for line in text_report.splitlines():
        match = _FINDING.search(line)
        if match:
            pending = (match.group(2), match.group(1))
        elif pending is not None and line.startswith("    fix: "):
            found.append((*pending, line.removeprefix("    fix: ")))
            pending = None
    return found


def _say_summary(run: _Run, text_report: str) -> None:
    lines = text_report.strip().splitlines()
    if lines and not lines[-1].startswith(("envoyfilter/", "    ")):
        run.say(lines[-1], indent=5)


def _show_check(run: _Run, service_arg: str) -> None:
    done = run.cli(["check", str(run.path(NO_HTTP2_FILE)), "--service", service_arg])
    run.say(f"exit {done.returncode}:", indent=3)
    run.say_lines(done.stdout + done.stderr, indent=5)
    run.say(
        "Without --service, check cannot tell whether 127.0.0.1 is still the Service's ClusterIP and "
        "adds EPX006 (epp-clusterip-stale) for it.",
        indent=3,
    )


def _show_doctor(run: _Run) -> None:
    done = run.cli(
        ["doctor", "--stats", str(run.path(NO_HTTP2_STATS)), "--clusters", str(run.path(NO_HTTP2_CLUSTERS)),
         "--filter", str(run.path(NO_HTTP2_FILE))]
    )  # fmt: skip
    run.say(f"exit {done.returncode}:", indent=3)
    run.say_lines(done.stdout or done.stderr, indent=5)
    run.say(
        "(`doctor --admin URL` reads the same counters from a running Envoy; these were saved from its "
        "admin port before it stopped.)",
        indent=3,
    )


def _say_files(run: _Run, *, kept: bool) -> None:
    if not kept:
        run.say(
            "\nThe files above were in a temporary folder, now removed: `extproc-guard demo --keep DIR` "
            "keeps them, to repeat the commands by hand."
        )
        return
    run.say(f"\nKept in {run.workdir}:")
    for name, what in KEPT_FILES.items():
        run.say(f"{name}: {what}", indent=2, hang=4)


_HEALTHY_STATS = ("streams_started", "streams_failed", "stream_msgs_sent", "stream_msgs_received")
_BROKEN_STATS = (
    f"cluster.{EPP_CLUSTER}.upstream_rq_total",
    f"cluster.{EPP_CLUSTER}.upstream_cx_protocol_error",
    EXT_PROC_STATS + "streams_failed",
)


@dataclass
class _Envoy:
    child: Child
    admin_url: str
    listen_port: int
    version: str
    stats_text: str = ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.listen_port}{path}"

    def stats(self) -> dict[str, int]:
        """The counters now; the admin's text is kept in `stats_text` (what `doctor --stats` reads)."""
        self.stats_text = _get(self.admin_url + "/stats")
        values: dict[str, int] = {}
        for line in self.stats_text.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                values[name.strip()] = int(value)
        return values


def _start_envoy(run: _Run, name: str, binary: str, bootstrap: dict[str, Any]) -> _Envoy:
    listen_port, admin_port = free_port(), free_port()
    static = bootstrap["static_resources"]
    static["listeners"][0]["address"]["socket_address"]["port_value"] = listen_port
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = admin_port
    config = run.path(f"{name}.json")
    config.write_text(json.dumps(bootstrap, indent=1), "utf-8")
    argv = [binary, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"]
    child = run.start(name, argv)
    admin_url = f"http://127.0.0.1:{admin_port}"
    _wait(lambda: _ready(admin_url, child), what=f"{name} to be ready", timeout=START_TIMEOUT)
    wait_for_port(child, listen_port)
    version = _get(admin_url + "/server_info")
    match = re.search(r'"version":\s*"[^/]*/([^/]+)/', version)
    return _Envoy(child, admin_url, listen_port, f"Envoy {match.group(1)}" if match else "Envoy")


def _ready(admin_url: str, child: Child) -> bool:
    if not child.alive:
        raise DemoError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
    try:
        return _get(admin_url + "/ready").strip() == "LIVE"
    except (urllib.error.URLError, OSError):
        return False


def _decision_lines(epp: Child) -> list[str]:
    return [line for line in epp.log_text().splitlines() if " decision request_id=" in line]


def _stream_lines(epp: Child) -> list[str]:
    return [line for line in epp.log_text().splitlines() if " stream request_id=" in line]


def _healthy_endpoints(metrics_port: int) -> int:
    try:
        text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    except (urllib.error.URLError, OSError):
        return 0
    return sum(
        1 for line in text.splitlines() if line.startswith("epp_endpoint_healthy{") and line.endswith(" 1.0")
    )


def _format_stats(stats: dict[str, int], names: tuple[str, ...]) -> str:
    parts = []
    for name in names:
        key = name if name.startswith("cluster.") or name.startswith("http.") else EXT_PROC_STATS + name
        parts.append(f"{key.removeprefix(EXT_PROC_STATS).removeprefix('cluster.')}={stats.get(key, 0)}")
    return ", ".join(parts)


def _without_log_prefix(line: str) -> str:
    """An EPP log line without its timestamp, level and logger name (the rest is printed whole)."""
    return re.sub(r"^\S+ (INFO|WARNING) epp\.\S+ ", "", line)


def _post(url: str, payload: object) -> tuple[int, str, str]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.headers.get("x-served-by", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, "", error.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        raise DemoError(f"request to {url} failed: {error}") from None


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


def _wait(condition: Callable[[], bool], *, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
