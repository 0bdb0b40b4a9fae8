"""Endpoint strings and vLLM metric text are parsed strictly, with one-line errors."""

from __future__ import annotations

import pytest

from epp.endpoints import Endpoint, EndpointSyntaxError, parse_endpoints
from epp.exposition import parse_load_sample
from epp.scorer import LoadSample


def test_endpoint_lists_parse_ipv4_and_ipv6_and_drop_duplicates() -> None:
    parsed = parse_endpoints("10.0.0.1:8000, [::1]:9000,10.0.0.1:8000,")
    assert parsed == (Endpoint("10.0.0.1", 8000), Endpoint("::1", 9000))
    assert [str(e) for e in parsed] == ["10.0.0.1:8000", "[::1]:9000"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param("model-a.svc:8000", "not an IP address", id="host-name"),
        pytest.param("10.0.0.1", "not IP:PORT", id="no-port"),
        pytest.param("10.0.0.1:70000", "not in 1..65535", id="port-out-of-range"),
        pytest.param("10.0.0.1:http", "not in 1..65535", id="port-not-a-number"),
    ],
)
def test_bad_endpoints_are_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(EndpointSyntaxError, match=says):
        parse_endpoints(text)


VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests currently running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="a"} 3.0
vllm:num_requests_running{model_name="b, with space"} 1.0
vllm:num_requests_waiting{model_name="a"} 2.0 1700000000000
vllm:kv_cache_usage_perc{model_name="a"} 0.25
vllm:num_requests_waiting_other 99
"""


def test_vllm_gauges_are_summed_over_models() -> None:
    assert parse_load_sample(VLLM_TEXT) == LoadSample(waiting=2.0, running=4.0, kv_cache_usage=0.25)


def test_the_legacy_gpu_cache_name_is_read_too() -> None:
    text = "vllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.5\n"
    assert parse_load_sample(text) == LoadSample(waiting=0.0, running=0.0, kv_cache_usage=0.5)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("process_cpu_seconds_total 3\n", id="no-vllm-gauges"),
        pytest.param("vllm:num_requests_waiting NaN\n", id="nan-only"),
        pytest.param('vllm:num_requests_waiting{x="1"}\n', id="no-value"),
    ],
)
def test_text_without_queue_gauges_has_no_load_sample(text: str) -> None:
    assert parse_load_sample(text) is None
