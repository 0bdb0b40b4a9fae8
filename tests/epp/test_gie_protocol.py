"""The GIE endpoint-picker protocol in the pure parts: subset hints, fallbacks, shedding, engines, health."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from epp.endpoints import Endpoint
from epp.engines import SGLANG, TRITON_TENSORRT_LLM, VLLM, UnknownEngine, engine_metrics
from epp.exposition import parse_labels, parse_load_sample
from epp.health import LIVENESS, READINESS, health_status
from epp.picker import NO_ENDPOINT, PICKED, SHED, Picker, PickerSettings
from epp.protocol import SUBSET_KEY, SUBSET_NAMESPACE, SubsetReader, parse_subset, read_served
from epp.scorer import LoadSample

A, B, C = Endpoint("10.0.0.1", 8000), Endpoint("10.0.0.2", 8000), Endpoint("10.0.0.3", 8000)


def subset_metadata(value: struct_pb2.Value) -> base_pb2.Metadata:
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[SUBSET_NAMESPACE].fields[SUBSET_KEY].CopyFrom(value)
    return metadata


def as_list(*entries: str) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.list_value.values.extend(struct_pb2.Value(string_value=e) for e in entries)
    return value


def picker_with(samples: dict[Endpoint, LoadSample | None], **settings: object) -> Picker:
    picker = Picker(PickerSettings(stale_after=0, **settings))  # type: ignore[arg-type]
    picker.set_endpoints(samples)
    for endpoint, sample in samples.items():
        picker.record_sample(endpoint, sample)
    return picker


# ---- the subset hint


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(as_list("10.0.0.1:8000", "10.0.0.3:8000"), id="list-as-the-protocol-writes-it"),
        pytest.param(struct_pb2.Value(string_value="10.0.0.1:8000, 10.0.0.3:8000"), id="comma-joined-string"),
    ],
)
def test_the_subset_hint_is_read_as_a_list_or_as_a_comma_joined_string(value: struct_pb2.Value) -> None:
    subset = SubsetReader().read(subset_metadata(value))
    assert subset is not None
    assert subset.endpoints == {A, C}
    assert [subset.admits(e) for e in (A, B, C)] == [True, False, True]


def test_a_request_without_the_hint_has_no_subset_and_an_empty_list_admits_nothing() -> None:
    reader = SubsetReader()
    assert reader.read(base_pb2.Metadata()) is None
    other = base_pb2.Metadata()
    other.filter_metadata[SUBSET_NAMESPACE].fields["another-key"].string_value = "x"
    assert reader.read(other) is None
    empty = reader.read(subset_metadata(as_list()))
    assert empty is not None
    assert not any(empty.admits(e) for e in (A, B, C))


def test_a_bare_address_in_the_hint_admits_every_port_of_it_and_garbage_is_left_out() -> None:
    subset = parse_subset(("10.0.0.2", "not-an-ip:80", "fd00::1", "10.0.0.3:9999"))
    assert subset.admits(B)
    assert subset.admits(Endpoint("10.0.0.2", 9000))
    assert subset.admits(Endpoint("fd00::1", 8000))
    assert not subset.admits(C)
    assert subset.listed == 4


def test_the_served_endpoint_is_read_from_the_envoy_lb_namespace() -> None:
    metadata = base_pb2.Metadata()
    assert read_served(metadata) is None
    metadata.filter_metadata["envoy.lb"].update({"x-gateway-destination-endpoint-served": "10.0.0.2:8000"})
    assert read_served(metadata) == "10.0.0.2:8000"


# ---- deciding


def test_the_subset_restricts_the_pick_and_an_empty_eligible_subset_is_refused_with_a_reason() -> None:
    picker = picker_with({A: LoadSample(0, 0, 0), B: LoadSample(9, 9, 0.9), C: LoadSample(0, 0, 0)})
    only_b = parse_subset(("10.0.0.2:8000",))
    assert {picker.choose(only_b).pick for _ in range(3)} == {(B,)}
    picker.record_failure(B, "down")
    refused = picker.choose(only_b)
    assert (refused.pick, refused.outcome, refused.error) == ((), NO_ENDPOINT, "no_endpoint_in_subset")
    assert "10.0.0.2:8000" in refused.reason
    nothing = picker.choose(parse_subset(()))
    assert nothing.outcome == NO_ENDPOINT
    assert "lists no endpoint" in nothing.reason


def test_fallbacks_follow_the_primary_least_loaded_first() -> None:
    picker = picker_with(
        {A: LoadSample(3, 0, 0), B: LoadSample(0, 0, 0), C: LoadSample(1, 0, 0)}, fallbacks=2
    )
    assert picker.choose().pick == (B, C, A)
    one = picker_with({A: LoadSample(3, 0, 0), B: LoadSample(0, 0, 0), C: LoadSample(1, 0, 0)}, fallbacks=1)
    assert one.choose().pick == (B, C)
    assert picker_with({A: LoadSample(0, 0, 0)}, fallbacks=2).choose().pick == (A,)


def test_without_load_metrics_the_fallbacks_follow_the_turn() -> None:
    picker = Picker(PickerSettings(stale_after=0, fallbacks=1))
    picker.set_endpoints([A, B, C])
    assert [picker.choose().pick for _ in range(3)] == [(A, B), (B, C), (C, A)]


def test_every_candidate_over_the_queue_threshold_sheds_and_one_below_it_takes_the_request() -> None:
    busy, calm = LoadSample(4, 8, 0.9), LoadSample(1, 8, 0.9)
    picker = picker_with({A: busy, B: busy}, shed_queue_depth=3)
    shed = picker.choose()
    assert (shed.pick, shed.outcome, shed.error) == ((), SHED, "request_shed")
    assert "2 candidate endpoints" in shed.reason
    picker.record_sample(B, calm)
    assert picker.choose().pick == (B,)
    unknown = picker_with({A: busy, B: None}, shed_queue_depth=3)  # B has no load metrics: not saturated
    assert unknown.choose().outcome == PICKED


def test_shedding_judges_the_subset_only() -> None:
    picker = picker_with({A: LoadSample(5, 0, 0), B: LoadSample(0, 0, 0)}, shed_queue_depth=2)
    assert picker.choose(parse_subset(("10.0.0.1:8000",))).outcome == SHED
    assert picker.choose().pick == (B,)


def test_a_model_served_as_a_lora_adapter_goes_where_the_adapter_is_loaded() -> None:
    loaded = LoadSample(2, 2, 0.5, running_adapters=frozenset({"sql-lora"}), max_lora=2)
    picker = picker_with({A: LoadSample(0, 0, 0), B: loaded})
    assert picker.choose(model="sql-lora").pick == (B,)
    assert picker.choose(model="base-model").pick == (A,)


# ---- engines


def test_each_engine_reads_its_own_metric_names() -> None:
    sglang = (
        "sglang:num_queue_reqs 3\nsglang:num_running_reqs 2\nsglang:token_usage 0.4\n"
        "vllm:num_requests_waiting 9\n"
    )
    assert parse_load_sample(sglang, SGLANG) == LoadSample(waiting=3, running=2, kv_cache_usage=0.4)
    assert parse_load_sample(sglang, VLLM) == LoadSample(waiting=9, running=0, kv_cache_usage=0)
    assert parse_load_sample("vllm:num_requests_waiting 1\n", SGLANG) is None


def test_engine_specs_with_label_values_count_only_matching_series() -> None:
    text = (
        'nv_trt_llm_request_metrics{model="m",request_type="waiting",version="1"} 4\n'
        'nv_trt_llm_request_metrics{model="m",request_type="scheduled",version="1"} 6\n'
        'nv_trt_llm_request_metrics{model="m",request_type="context",version="1"} 99\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="m"} 0.25\n'
        'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="m"} 4096\n'
    )
    assert parse_load_sample(text, TRITON_TENSORRT_LLM) == LoadSample(
        waiting=4, running=6, kv_cache_usage=0.25
    )


def test_vllm_lora_info_gives_the_adapters_of_the_newest_series() -> None:
    text = (
        "vllm:num_requests_waiting 0\n"
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 1.7e9\n'
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters="c"} 1.8e9\n'
    )
    sample = parse_load_sample(text)
    assert sample is not None
    assert (sample.running_adapters, sample.waiting_adapters, sample.max_lora) == ({"a", "b"}, {"c"}, 2)


def test_label_blocks_with_escapes_parse_and_broken_ones_do_not() -> None:
    assert parse_labels(r'a="x\"y",b="1,2"') == {"a": 'x"y', "b": "1,2"}
    assert parse_labels('a="unterminated') is None
    assert parse_labels("a=bare") is None


def test_an_unknown_engine_is_refused_naming_the_known_ones() -> None:
    assert engine_metrics("sglang") is SGLANG
    with pytest.raises(UnknownEngine, match="known: sglang, triton-tensorrt-llm, trtllm-serve, vllm"):
        engine_metrics("llamacpp")


# ---- health


@pytest.mark.parametrize(
    ("service", "ready", "status"),
    [
        (LIVENESS, False, 1),
        (READINESS, False, 2),
        (READINESS, True, 1),
        ("envoy.service.ext_proc.v3.ExternalProcessor", False, 2),
        ("envoy.service.ext_proc.v3.ExternalProcessor", True, 1),
        ("", False, 2),
        ("some.other.Service", True, None),
    ],
)
def test_health_services_follow_readiness_except_liveness(
    service: str, ready: bool, status: int | None
) -> None:
    assert health_status(service, ready=ready) == status
