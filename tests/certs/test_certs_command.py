"""`extproc-guard certs`: files and modes, idempotency, renewal, Secrets and caBundle patches, bad input.

The Kubernetes half runs the real `kubernetes` client against `fake_apiserver` (no kube-apiserver runs in
this suite; the end-to-end suite covers the real one).
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from certs.pki import (
    covers_names,
    generate_ca,
    is_issued_by,
    issue_serving_cert,
    load_certificate,
    matches_key,
    service_dns_names,
)
from certs.rotation import StoredCerts
from cli.cabundle import (
    CaBundleError,
    SecretNames,
    build_api_client,
    build_ca_bundle_patch,
    read_secrets,
    write_serving_secret,
)
from cli.commands import certs as certs_command
from cli.main import _Parser
from tests.certs.fake_apiserver import FakeApiState, run_fake_apiserver

BASE = ["certs", "--service", "guard", "--namespace", "ops"]
NAMES = service_dns_names("guard", "ops")


def main(argv: list[str]) -> int:
    """The CLI's own parser class with only this command registered, so other commands do not matter."""
    parser = _Parser(prog="extproc-guard")
    certs_command.register(parser.add_subparsers(dest="command", parser_class=_Parser))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Content, mode and inode of each file: an atomic rewrite changes the inode even for equal bytes."""
    return {
        path.name: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode), path.stat().st_ino)
        for path in sorted(folder.iterdir())
    }


def test_first_run_writes_a_ca_and_a_serving_pair_with_private_keys_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "certs"
    code, stdout, stderr = run_cli([*BASE, "--out-dir", str(out), "--ip", "127.0.0.1"], capsys)
    assert (code, stdout) == (0, "")
    assert "CA created" in stderr
    files = snapshot(out)
    assert {name: mode for name, (_, mode, _) in files.items()} == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "tls.crt": 0o644,
        "tls.key": 0o600,
    }
    ca_pem, tls_pem, key_pem = files["ca.crt"][0], files["tls.crt"][0], files["tls.key"][0]
    assert is_issued_by(tls_pem, ca_pem)
    assert matches_key(tls_pem, key_pem)
    assert covers_names(tls_pem, dns_names=NAMES, ip_addresses=["127.0.0.1"])


def test_second_run_rewrites_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*BASE, "--out-dir", str(tmp_path), "--ip", "127.0.0.1"]
    assert run_cli(args, capsys)[0] == 0
    before = snapshot(tmp_path)
    code, _, stderr = run_cli(args, capsys)
    assert code == 0
    assert "wrote nothing" in stderr
    assert snapshot(tmp_path) == before


def test_a_key_with_a_wider_mode_is_tightened_on_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*BASE, "--out-dir", str(tmp_path)]
    assert run_cli(args, capsys)[0] == 0
    content = (tmp_path / "tls.key").read_bytes()
    (tmp_path / "tls.key").chmod(0o644)
    assert run_cli(args, capsys)[0] == 0
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600
    assert (tmp_path / "tls.key").read_bytes() == content


def test_a_serving_certificate_near_expiry_is_renewed_with_the_same_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issued 360 days ago for 365 days: 5 days left, inside the default 30-day renewal window.
    issued = datetime.now(UTC) - timedelta(days=360)
    ca = generate_ca(common_name="existing", now=issued, valid_for=timedelta(days=3650))
    leaf = issue_serving_cert(ca, dns_names=NAMES, now=issued, valid_for=timedelta(days=365))
    for name, content in {
        "ca.crt": ca.cert_pem,
        "ca.key": ca.key_pem,
        "tls.crt": leaf.cert_pem,
        "tls.key": leaf.key_pem,
    }.items():
        (tmp_path / name).write_bytes(content)
    code, _, stderr = run_cli([*BASE, "--out-dir", str(tmp_path)], capsys)
    assert code == 0
    assert "CA reused; serving certificate issued (serving certificate expires soon)" in stderr
    assert (tmp_path / "ca.crt").read_bytes() == ca.cert_pem
    assert (tmp_path / "ca.key").read_bytes() == ca.key_pem
    renewed = (tmp_path / "tls.crt").read_bytes()
    assert renewed != leaf.cert_pem
    assert is_issued_by(renewed, ca.cert_pem)
    assert matches_key(renewed, (tmp_path / "tls.key").read_bytes())


def test_a_new_ip_san_reissues_the_serving_certificate_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli([*BASE, "--out-dir", str(tmp_path)], capsys)[0] == 0
    before = snapshot(tmp_path)
    code, _, _ = run_cli([*BASE, "--out-dir", str(tmp_path), "--ip", "10.0.0.7"], capsys)
    assert code == 0
    after = snapshot(tmp_path)
    assert after["ca.crt"] == before["ca.crt"]
    assert after["ca.key"] == before["ca.key"]
    assert covers_names(after["tls.crt"][0], dns_names=NAMES, ip_addresses=["10.0.0.7"])


def test_print_ca_bundle_prints_base64_of_ca_crt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli([*BASE, "--out-dir", str(tmp_path), "--print-ca-bundle"], capsys)
    assert code == 0
    assert base64.b64decode(stdout.strip(), validate=True) == (tmp_path / "ca.crt").read_bytes()
    assert stdout.count("\n") == 1


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--out-dir", "{dir}", "--valid-days", "0"],
        ["--out-dir", "{dir}", "--valid-days", "ten"],
        ["--out-dir", "{dir}", "--valid-days", "10", "--renew-before-days", "10"],
        ["--out-dir", "{dir}", "--ip", "not-an-ip"],
        ["--out-dir", "{dir}", "--ca-secret", "x"],
        ["--out-dir", "{dir}", "--patch-webhooks", ","],
        ["--out-dir", "{dir}/file-not-dir"],
    ],
    ids=[
        "no-destination",
        "zero-validity",
        "validity-not-a-number",
        "renewal-window-covers-validity",
        "bad-ip",
        "ca-secret-without-secret",
        "empty-webhook-list",
        "out-dir-is-a-file",
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file-not-dir").write_text("x")
    args = [*BASE, *(part.replace("{dir}", str(tmp_path)) for part in extra)]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 2
    assert stdout == ""
    assert stderr.count("\n") == 1
    assert "error:" in stderr
    assert "Traceback" not in stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file-not-dir"]


@pytest.mark.parametrize(
    "missing", ["--service", "--namespace"], ids=["without-service", "without-namespace"]
)
def test_missing_required_flags_exit_2(
    missing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*BASE, "--out-dir", str(tmp_path)]
    index = args.index(missing)
    del args[index : index + 2]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2
    assert stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("files", "fragment"),
    [
        ({"ca.crt": b"garbage"}, "CA key is missing"),
        (
            {"ca.crt": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "ca.key": b"k"},
            "parse",
        ),
    ],
    ids=["ca-key-missing", "ca-unparseable"],
)
def test_an_unusable_stored_ca_exits_2_and_is_left_alone(
    files: dict[str, bytes], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    before = snapshot(tmp_path)
    code, _, stderr = run_cli([*BASE, "--out-dir", str(tmp_path)], capsys)
    assert code == 2
    assert fragment in stderr
    assert stderr.count("\n") == 1
    assert snapshot(tmp_path) == before


# ---- Secrets and caBundle, over the Kubernetes REST protocol ----


@pytest.fixture
def apiserver(tmp_path: Path) -> Iterator[tuple[FakeApiState, Path]]:
    with run_fake_apiserver(tmp_path) as (state, kubeconfig):
        state.put_webhook_configuration("mutating", "extproc-guard", ["mutate.extproc-guard.io"])
        state.put_webhook_configuration(
            "validating", "extproc-guard", ["validate.extproc-guard.io", "validate-2.extproc-guard.io"]
        )
        yield state, kubeconfig


def _secret_data(state: FakeApiState, name: str) -> dict[str, bytes]:
    secret = state.objects[f"secret/ops/{name}"]
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def test_secret_mode_creates_a_tls_secret_and_a_separate_ca_secret_and_patches_every_webhook(
    apiserver: tuple[FakeApiState, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, kubeconfig = apiserver
    args = [
        *BASE,
        "--secret",
        "guard-tls",
        "--kubeconfig",
        str(kubeconfig),
        "--patch-webhooks",
        "extproc-guard",
    ]
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    serving = state.objects["secret/ops/guard-tls"]
    assert serving["type"] == "kubernetes.io/tls"
    data = _secret_data(state, "guard-tls")
    ca_data = _secret_data(state, "guard-tls-ca")
    assert sorted(data) == ["ca.crt", "tls.crt", "tls.key"]
    assert sorted(ca_data) == ["ca.crt", "ca.key"]
    assert data["ca.crt"] == ca_data["ca.crt"]
    assert is_issued_by(data["tls.crt"], data["ca.crt"])
    wanted = base64.b64encode(data["ca.crt"]).decode()
    for key in ("mutating/extproc-guard", "validating/extproc-guard"):
        bundles = [hook["clientConfig"]["caBundle"] for hook in state.objects[key]["webhooks"]]
        assert bundles
        assert set(bundles) == {wanted}
    assert "patched caBundle of MutatingWebhookConfiguration/extproc-guard" in stderr


def test_secret_mode_second_run_writes_nothing(
    apiserver: tuple[FakeApiState, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, kubeconfig = apiserver
    out = tmp_path / "copy"
    args = [
        *BASE,
        "--secret",
        "guard-tls",
        "--kubeconfig",
        str(kubeconfig),
        "--patch-webhooks",
        "extproc-guard",
        "--out-dir",
        str(out),
    ]
    assert run_cli(args, capsys)[0] == 0
    files = snapshot(out)
    writes = len(state.writes())
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert state.writes()[writes:] == []
    assert snapshot(out) == files
    assert files["tls.crt"][0] == _secret_data(state, "guard-tls")["tls.crt"]


def test_secret_mode_renews_from_the_secret_not_from_a_stale_directory(
    apiserver: tuple[FakeApiState, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, kubeconfig = apiserver
    args = [*BASE, "--secret", "guard-tls", "--kubeconfig", str(kubeconfig)]
    assert run_cli(args, capsys)[0] == 0
    first = _secret_data(state, "guard-tls")
    code, _, _ = run_cli([*args, "--ip", "10.1.2.3"], capsys)
    assert code == 0
    second = _secret_data(state, "guard-tls")
    assert second["ca.crt"] == first["ca.crt"]
    assert second["tls.crt"] != first["tls.crt"]
    san = load_certificate(second["tls.crt"]).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]


def test_patching_an_unknown_webhook_configuration_exits_2(
    apiserver: tuple[FakeApiState, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = apiserver
    args = [
        *BASE,
        "--out-dir",
        str(tmp_path / "c"),
        "--kubeconfig",
        str(kubeconfig),
        "--patch-webhooks",
        "nope",
    ]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2
    assert "no Mutating- or ValidatingWebhookConfiguration named 'nope'" in stderr
    assert stderr.count("\n") == 1


def test_an_unreachable_apiserver_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with run_fake_apiserver(tmp_path) as (_, kubeconfig):
        pass  # stopped: the port now refuses connections
    code, _, stderr = run_cli([*BASE, "--secret", "guard-tls", "--kubeconfig", str(kubeconfig)], capsys)
    assert code == 2
    assert "reading secret ops/guard-tls" in stderr
    assert stderr.count("\n") == 1


def test_a_missing_kubeconfig_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*BASE, "--secret", "s", "--kubeconfig", str(tmp_path / "absent")]
    code, _, stderr = run_cli(args, capsys)
    assert code == 2
    assert "cannot load a Kubernetes configuration" in stderr


def test_a_conflicting_webhook_write_is_not_overwritten(
    apiserver: tuple[FakeApiState, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The caBundle patch carries a `test` of the resourceVersion it read."""

    state, _ = apiserver
    current = json.loads(json.dumps(state.objects["validating/extproc-guard"]))
    ops = build_ca_bundle_patch(current, "QUJD")
    assert ops[0] == {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": current["metadata"]["resourceVersion"],
    }
    assert [op["path"] for op in ops[1:]] == [
        "/webhooks/0/clientConfig/caBundle",
        "/webhooks/1/clientConfig/caBundle",
    ]
    current["webhooks"][0]["clientConfig"]["caBundle"] = "QUJD"
    current["webhooks"][1]["clientConfig"]["caBundle"] = "QUJD"
    assert build_ca_bundle_patch(current, "QUJD") == []


def test_extra_dns_names_and_a_cluster_domain_end_up_in_the_san(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*BASE, "--out-dir", str(tmp_path), "--cluster-domain", "corp.example"]
    args += ["--dns-name", "guard.example"]
    assert run_cli(args, capsys)[0] == 0
    expected = [*service_dns_names("guard", "ops", cluster_domain="corp.example"), "guard.example"]
    assert covers_names((tmp_path / "tls.crt").read_bytes(), dns_names=expected)


def test_a_secret_changed_since_it_was_read_is_a_conflict_not_an_overwrite(
    apiserver: tuple[FakeApiState, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state, kubeconfig = apiserver
    assert run_cli([*BASE, "--secret", "guard-tls", "--kubeconfig", str(kubeconfig)], capsys)[0] == 0
    names = SecretNames(namespace="ops", serving="guard-tls", ca="guard-tls-ca")
    with build_api_client(kubeconfig) as api:
        found = read_secrets(api, names)
        state.objects["secret/ops/guard-tls"]["metadata"]["resourceVersion"] = state.next_version()
        other = StoredCerts(serving_cert=b"x", serving_key=b"y", ca_bundle=found.certs.ca_bundle)
        with pytest.raises(CaBundleError, match="HTTP 409"):
            write_serving_secret(api, names, other, version=found.serving_version)
    assert _secret_data(state, "guard-tls")["tls.crt"] != b"x"
