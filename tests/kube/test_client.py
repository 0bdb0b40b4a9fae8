"""The one client factory's configuration order, with the real `kubernetes` loaders.

Kubeconfig files are written under tmp_path; in-cluster is a service account folder (token, ca.crt) and the
two environment variables the library's in-cluster loader reads, handed over as the factory's `environ`.
Which source won shows in the client's host (each file points at a different server). One test then talks
to a loopback HTTPS server with the in-cluster client, so the token and the CA are really used.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import urllib3
from kubernetes import client

from kube.client import KubeConfigError, build_api_client
from kube.resolver import KubeServiceResolver
from policies import ServiceAddress, ServiceNotFound, ServiceRef
from tests.kube.rig import TOKEN, TlsApiServer, WriteKubeconfig

IN_CLUSTER_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
EXPLICIT = "https://explicit.example:6443"
FROM_ENV = "https://from-kubeconfig-env.example:6443"
FROM_HOME = "https://from-home.example:6443"


def host_of(api_client: client.ApiClient) -> str:
    return str(api_client.configuration.host)


@pytest.fixture
def everything(write_kubeconfig: WriteKubeconfig, service_account: Path, tmp_path: Path) -> dict[str, str]:
    """An environment where every source is present: in-cluster, KUBECONFIG and ~/.kube/config."""
    write_kubeconfig("home/.kube/config", {"home": FROM_HOME})
    env_file = write_kubeconfig("env-kubeconfig", {"env": FROM_ENV})
    return {**IN_CLUSTER_ENV, "KUBECONFIG": str(env_file), "HOME": str(tmp_path / "home")}


def test_an_explicit_kubeconfig_wins_over_every_other_source(
    write_kubeconfig: WriteKubeconfig, service_account: Path, everything: dict[str, str]
) -> None:
    explicit = write_kubeconfig("explicit", {"explicit": EXPLICIT})
    api_client = build_api_client(
        kubeconfig=explicit, environ=everything, service_account_dir=service_account
    )
    assert host_of(api_client) == EXPLICIT
    assert api_client.configuration.api_key["BearerToken"] == "Bearer explicit-token"


def test_in_cluster_comes_next_with_the_service_account_token_and_ca(
    service_account: Path, everything: dict[str, str]
) -> None:
    api_client = build_api_client(environ=everything, service_account_dir=service_account)
    configuration = api_client.configuration
    assert configuration.host == "https://10.96.0.1:443"
    assert configuration.api_key["BearerToken"] == f"bearer {TOKEN}"
    assert configuration.ssl_ca_cert == str(service_account / "ca.crt")


def test_kubeconfig_env_comes_after_in_cluster(
    tmp_path: Path, service_account: Path, everything: dict[str, str]
) -> None:
    outside_a_pod = {k: v for k, v in everything.items() if not k.startswith("KUBERNETES_")}
    api_client = build_api_client(environ=outside_a_pod, service_account_dir=service_account)
    assert host_of(api_client) == FROM_ENV


def test_the_home_kubeconfig_comes_last(service_account: Path, everything: dict[str, str]) -> None:
    only_home = {"HOME": everything["HOME"]}
    assert host_of(build_api_client(environ=only_home, service_account_dir=service_account)) == FROM_HOME


def test_a_pod_without_a_mounted_token_is_not_in_cluster(tmp_path: Path, everything: dict[str, str]) -> None:
    no_token = tmp_path / "no-token"
    no_token.mkdir()
    assert host_of(build_api_client(environ=everything, service_account_dir=no_token)) == FROM_ENV


def test_a_named_context_skips_in_cluster_and_picks_that_context(
    write_kubeconfig: WriteKubeconfig, service_account: Path, everything: dict[str, str]
) -> None:
    env_file = write_kubeconfig("two-contexts", {"first": FROM_ENV, "second": EXPLICIT}, current="first")
    environ = {**everything, "KUBECONFIG": str(env_file)}
    api_client = build_api_client(context="second", environ=environ, service_account_dir=service_account)
    assert host_of(api_client) == EXPLICIT


def test_an_explicit_kubeconfig_honours_the_context(write_kubeconfig: WriteKubeconfig) -> None:
    path = write_kubeconfig("explicit", {"a": FROM_ENV, "b": EXPLICIT})
    assert host_of(build_api_client(kubeconfig=path, context="b", environ={})) == EXPLICIT
    assert host_of(build_api_client(kubeconfig=path, environ={})) == FROM_ENV


def test_kubeconfig_env_files_are_merged_and_missing_ones_skipped(
    write_kubeconfig: WriteKubeconfig, tmp_path: Path
) -> None:
    first = write_kubeconfig("first", {"one": FROM_ENV})
    second = write_kubeconfig("second", {"two": EXPLICIT})
    listed = f"{tmp_path / 'absent'}:{first}:{second}"
    assert host_of(build_api_client(context="one", environ={"KUBECONFIG": listed})) == FROM_ENV
    assert host_of(build_api_client(context="two", environ={"KUBECONFIG": listed})) == EXPLICIT


def test_the_environment_is_the_mapping_given_not_the_process_one(
    write_kubeconfig: WriteKubeconfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig("process", {"process": EXPLICIT})))
    home = tmp_path / "other-home"
    write_kubeconfig("other-home/.kube/config", {"home": FROM_HOME})
    assert host_of(build_api_client(environ={"HOME": str(home)})) == FROM_HOME
    assert host_of(build_api_client()) == EXPLICIT


def test_the_library_global_default_configuration_is_left_alone(
    service_account: Path, everything: dict[str, str], write_kubeconfig: WriteKubeconfig
) -> None:
    before = client.Configuration.get_default_copy().host
    build_api_client(environ=everything, service_account_dir=service_account)
    build_api_client(kubeconfig=write_kubeconfig("explicit", {"x": EXPLICIT}), environ={})
    assert client.Configuration.get_default_copy().host == before != EXPLICIT


def test_the_user_agent_is_set_when_given(write_kubeconfig: WriteKubeconfig) -> None:
    path = write_kubeconfig("explicit", {"x": EXPLICIT})
    assert build_api_client(kubeconfig=path, environ={}, user_agent="extproc-guard/test").user_agent == (
        "extproc-guard/test"
    )
    assert "extproc-guard" not in build_api_client(kubeconfig=path, environ={}).user_agent


def test_a_missing_explicit_kubeconfig_does_not_fall_back(
    tmp_path: Path, service_account: Path, everything: dict[str, str]
) -> None:
    with pytest.raises(KubeConfigError, match="kubeconfig file not found") as caught:
        build_api_client(
            kubeconfig=tmp_path / "nope", environ=everything, service_account_dir=service_account
        )
    assert str(tmp_path / "nope") in str(caught.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("not: [yaml", "cannot use it", id="broken-yaml"),
        pytest.param("just: text\n", "cannot use it", id="not-a-kubeconfig"),
        pytest.param("", "cannot use it", id="empty"),
    ],
)
def test_a_broken_kubeconfig_is_one_line_naming_the_file(tmp_path: Path, text: str, says: str) -> None:
    broken = tmp_path / "broken"
    broken.write_text(text)
    for kubeconfig, environ in ((broken, {}), (None, {"KUBECONFIG": str(broken)})):
        with pytest.raises(KubeConfigError, match=says) as caught:
            build_api_client(kubeconfig=kubeconfig, environ=environ)
        assert str(broken) in str(caught.value)
        assert "\n" not in str(caught.value)


def test_a_present_but_broken_source_is_the_error_not_the_next_one(
    tmp_path: Path, service_account: Path, everything: dict[str, str]
) -> None:
    (service_account / "ca.crt").unlink()
    with pytest.raises(KubeConfigError, match=r"in-cluster config: cannot use it: .*certification file"):
        build_api_client(environ=everything, service_account_dir=service_account)
    with pytest.raises(KubeConfigError, match=r"KUBECONFIG=.*: no such kubeconfig file"):
        build_api_client(environ={"KUBECONFIG": str(tmp_path / "absent"), "HOME": everything["HOME"]})


def test_no_source_at_all_is_one_line_naming_every_step_tried(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError) as caught:
        build_api_client(environ={"HOME": str(tmp_path)}, service_account_dir=tmp_path / "sa")
    message = str(caught.value)
    assert "\n" not in message
    assert "KUBERNETES_SERVICE_HOST" in message
    assert "KUBECONFIG: not set" in message
    assert f"{tmp_path / '.kube' / 'config'}: not found" in message
    with pytest.raises(KubeConfigError, match="HOME is not set"):
        build_api_client(environ={}, service_account_dir=tmp_path / "sa")


def test_an_in_cluster_client_reads_through_tls_with_the_service_account(
    tls_api_server: TlsApiServer, tmp_path: Path
) -> None:
    folder = tmp_path / "sa"
    folder.mkdir()
    (folder / "token").write_text(TOKEN)
    (folder / "ca.crt").write_bytes(tls_api_server.ca_pem)
    tls_api_server.services[("llm-d", "epp")] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "epp", "namespace": "llm-d"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.45.12", "ports": [{"port": 9002}]},
    }
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(tls_api_server.port)}
    resolver = KubeServiceResolver(
        client.CoreV1Api(build_api_client(environ=environ, service_account_dir=folder))
    )
    assert resolver.lookup(ServiceRef("llm-d", "epp")) == ServiceAddress("10.96.45.12", (9002,))
    with pytest.raises(ServiceNotFound):
        resolver.lookup(ServiceRef("llm-d", "gone"))
    assert tls_api_server.requests[0] == (f"bearer {TOKEN}", "/api/v1/namespaces/llm-d/services/epp")


def test_a_kubeconfig_that_skips_tls_verification_is_logged_once_not_warned_for_each_request(
    tls_api_server: TlsApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kubeconfig = tmp_path / "insecure"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": f"https://127.0.0.1:{tls_api_server.port}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": TOKEN}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    requests = len(tls_api_server.requests)
    caplog.set_level(logging.WARNING, logger="kube.client")

    with warnings.catch_warnings(record=True) as caught:
        resolver = KubeServiceResolver(client.CoreV1Api(build_api_client(kubeconfig=kubeconfig, environ={})))
        for name in ("one", "two", "three"):
            with pytest.raises(ServiceNotFound):
                resolver.lookup(ServiceRef("llm-d", name))

    assert len(tls_api_server.requests) == requests + 3
    assert [w for w in caught if issubclass(w.category, urllib3.exceptions.InsecureRequestWarning)] == []
    said = [r.getMessage() for r in caplog.records if "TLS verification" in r.getMessage()]
    assert len(said) == 1
    assert "insecure-skip-tls-verify" in said[0]
