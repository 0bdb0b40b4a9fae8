"""Which metric names carry a model server's load, per engine type (pure data).

The engine type is the pod label `llm-d.ai/engine-type`; pods without it, and endpoints given without one,
use the default engine (vLLM). The names follow the llm-d router's core metrics extractor and the GIE
model-server protocol: a spec is a metric name, optionally with label values that must match
(`nv_trt_llm_request_metrics{request_type=waiting}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

ENGINE_LABEL = "llm-d.ai/engine-type"
DEFAULT_ENGINE = "vllm"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in self.labels) + "}"


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """The gauges of one engine: queue, running, KV-cache usage (first found wins), LoRA adapters."""

    name: str
    waiting: MetricSpec
    running: MetricSpec
    kv_usage: tuple[MetricSpec, ...]
    lora: MetricSpec | None = None

    @property
    def names(self) -> frozenset[str]:
        specs = [self.waiting, self.running, *self.kv_usage, *([self.lora] if self.lora else [])]
        return frozenset(spec.name for spec in specs)


def _spec(name: str, **labels: str) -> MetricSpec:
    return MetricSpec(name, tuple(sorted(labels.items())))


VLLM = EngineMetrics(
    "vllm",
    waiting=_spec("vllm:num_requests_waiting"),
    running=_spec("vllm:num_requests_running"),
    # `gpu_cache_usage_perc` is the name before vLLM V1
    kv_usage=(_spec("vllm:kv_cache_usage_perc"), _spec("vllm:gpu_cache_usage_perc")),
    lora=_spec("vllm:lora_requests_info"),
)
SGLANG = EngineMetrics(
    "sglang",
    waiting=_spec("sglang:num_queue_reqs"),
    running=_spec("sglang:num_running_reqs"),
    kv_usage=(_spec("sglang:token_usage"),),
)
TRTLLM_SERVE = EngineMetrics(
    "trtllm-serve",
    waiting=_spec("trtllm_num_requests_waiting"),
    running=_spec("trtllm_num_requests_running"),
    kv_usage=(_spec("trtllm_kv_cache_utilization"),),
)
TRITON_TENSORRT_LLM = EngineMetrics(
    "triton-tensorrt-llm",
    waiting=_spec("nv_trt_llm_request_metrics", request_type="waiting"),
    running=_spec("nv_trt_llm_request_metrics", request_type="scheduled"),
    kv_usage=(_spec("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction"),),
)

ENGINES: Mapping[str, EngineMetrics] = MappingProxyType(
    {engine.name: engine for engine in (VLLM, SGLANG, TRTLLM_SERVE, TRITON_TENSORRT_LLM)}
)


class UnknownEngine(ValueError):
    """An engine type this EPP has no metric names for; the message names the known ones."""


def engine_metrics(name: str) -> EngineMetrics:
    """The metric names of engine `name`; raises `UnknownEngine`."""
    try:
        return ENGINES[name]
    except KeyError:
        known = ", ".join(sorted(ENGINES))
        raise UnknownEngine(f"unknown engine type {name!r} (known: {known})") from None
