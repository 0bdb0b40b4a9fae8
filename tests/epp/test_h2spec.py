"""h2spec, the HTTP/2 conformance tester, against the EPP's own HTTP/2 transport: every case passes.

The EPP runs as a real child process (`extproc-guard epp`, plaintext h2c) and h2spec sends its cases to
the ext_proc method's path. h2spec is built from the Go module pinned in tests/epp/h2spec by its
build.sh (cached; instant when up to date; `make test` runs it first). Without Go the test skips, or
fails when EXTPROC_GUARD_REQUIRE_E2E=1 (as CI sets it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

from epp.children import free_port, start_child, stop_child, wait_for_port
from epp.h2requests import PROCESS_PATH

H2SPEC_DIR = Path(__file__).resolve().parent / "h2spec"
BUILD_SCRIPT = H2SPEC_DIR / "build.sh"
H2SPEC = H2SPEC_DIR / "bin" / "h2spec"
REQUIRE_ENV = "EXTPROC_GUARD_REQUIRE_E2E"
CLI = (sys.executable, "-m", "cli.main")
BUILD_TIMEOUT = 900.0  # seconds: a first build downloads the modules
RUN_TIMEOUT = 300.0  # seconds for the whole h2spec run (it takes well under one when all cases pass)
CASE_TIMEOUT = 5  # seconds h2spec waits for an expected frame (its default, 2, is tight on a busy machine)
MIN_CASES = 145  # h2spec 2.2.1 has 145 cases: fewer in the report means the run or its parsing broke

# Cases that cannot apply to a gRPC server, each with the RFC 9113 text that says why, by the id
# `Case.id` gives them ("package: description"). Every case applies today.
NOT_APPLICABLE: dict[str, str] = {}


@dataclass(frozen=True)
class Case:
    package: str  # h2spec's section, e.g. "http2/5.1"
    description: str
    outcome: str  # "passed", "failed", "skipped"
    detail: str

    @property
    def id(self) -> str:
        return f"{self.package}: {self.description}"


def skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires it to run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def h2spec() -> Path:
    """bin/h2spec, built (or found up to date) by the one build script."""
    if shutil.which("go") is None:
        skip_or_fail("Go is not installed: h2spec cannot be built (tests/epp/h2spec/build.sh)")
    result = subprocess.run(
        [str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"{BUILD_SCRIPT} failed:\n{result.stdout}{result.stderr}", pytrace=False)
    return H2SPEC


_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def read_report(path: Path) -> list[Case]:
    """The cases of h2spec's JUnit report (-j), each with how it ended. A failed case's message can quote
    raw frame bytes that XML 1.0 does not allow; they are replaced so the report still names the case."""
    text = _NOT_XML.sub("\ufffd", path.read_bytes().decode("utf-8", errors="replace"))
    cases = []
    for suite in ElementTree.fromstring(text).iter("testsuite"):
        for case in suite.iter("testcase"):
            outcome, detail = "passed", ""
            for kind in ("failure", "error", "skipped"):
                found = case.find(kind)
                if found is not None:
                    outcome = "skipped" if kind == "skipped" else "failed"
                    detail = " ".join((found.text or kind).split())
            cases.append(Case(case.get("package", ""), case.get("classname", ""), outcome, detail))
    return cases


@pytest.fixture(scope="module")
def epp_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The EPP as `extproc-guard epp` runs it, on a free loopback port (its one endpoint is never used)."""
    port = free_port()
    argv = [*CLI, "epp", "--host", "127.0.0.1", "--port", str(port), "--endpoints", "127.0.0.1:9"]
    child = start_child(
        "epp",
        [*argv, "--scrape-interval", "0", "--log-level", "warning"],
        log_dir=tmp_path_factory.mktemp("epp"),
    )
    try:
        wait_for_port(child, port)
        yield port
    finally:
        stop_child(child)


def test_every_h2spec_case_passes_against_the_epp_transport(
    h2spec: Path, epp_port: int, tmp_path: Path
) -> None:
    report = tmp_path / "h2spec.xml"
    argv = [str(h2spec), "-h", "127.0.0.1", "-p", str(epp_port), "-P", PROCESS_PATH]
    result = subprocess.run(
        [*argv, "-o", str(CASE_TIMEOUT), "-j", str(report)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert report.exists(), f"h2spec wrote no report (exit {result.returncode}):\n{result.stdout[-4000:]}"
    cases = read_report(report)
    assert len(cases) >= MIN_CASES, f"only {len(cases)} cases in the report:\n{result.stdout[-4000:]}"
    ids = {case.id for case in cases}
    assert not set(NOT_APPLICABLE) - ids, "cases listed as not applicable that h2spec no longer has"
    failing = [case for case in cases if case.outcome != "passed" and case.id not in NOT_APPLICABLE]
    assert not failing, f"{len(failing)} of {len(cases)} h2spec cases did not pass:\n" + "\n".join(
        f"- {case.id} [{case.outcome}] {case.detail}" for case in failing
    )
    listed_but_passing = sorted(c.id for c in cases if c.outcome == "passed" and c.id in NOT_APPLICABLE)
    assert not listed_but_passing, f"cases listed as not applicable pass now: {listed_but_passing}"


def test_a_report_whose_failure_quotes_raw_bytes_still_names_the_case(tmp_path: Path) -> None:
    report = tmp_path / "h2spec.xml"
    report.write_bytes(
        b'<testsuites><testsuite name="s"><testcase package="http2/6.1" classname="DATA" name="n">'
        b"<failure>got \x01\x02 instead</failure></testcase></testsuite></testsuites>"
    )
    (case,) = read_report(report)
    assert case.outcome == "failed"
    assert case.package == "http2/6.1"
    assert "instead" in case.detail
