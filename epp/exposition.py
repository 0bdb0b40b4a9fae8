"""Read a model server's load out of its Prometheus text exposition (vLLM metric names)."""

from __future__ import annotations

from epp.scorer import LoadSample

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE = "vllm:kv_cache_usage_perc"
KV_CACHE_LEGACY = "vllm:gpu_cache_usage_perc"  # the name before vLLM V1
_WANTED = frozenset({WAITING, RUNNING, KV_CACHE, KV_CACHE_LEGACY})


def parse_load_sample(text: str) -> LoadSample | None:
    """Sum each gauge over its label sets (one per model); None when neither queue gauge is present."""
    totals: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        if brace >= 0:
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name not in _WANTED:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if value == value:  # NaN says nothing about load
            totals[name] = totals.get(name, 0.0) + value
    if WAITING not in totals and RUNNING not in totals:
        return None
    return LoadSample(
        waiting=totals.get(WAITING, 0.0),
        running=totals.get(RUNNING, 0.0),
        kv_cache_usage=totals.get(KV_CACHE, totals.get(KV_CACHE_LEGACY, 0.0)),
    )
