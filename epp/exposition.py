"""Read a model server's load out of its Prometheus text exposition, with its engine's metric names."""

from __future__ import annotations

from epp.engines import VLLM, EngineMetrics, MetricSpec
from epp.scorer import LoadSample

_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}


def parse_labels(block: str) -> dict[str, str] | None:
    """`k="v",k2="v2"` (without the braces) as a dict; None when it is not a label block."""
    labels: dict[str, str] = {}
    i, size = 0, len(block)
    while i < size:
        while i < size and block[i] in " ,":
            i += 1
        if i >= size:
            break
        equals = block.find("=", i)
        if equals < 0 or equals + 1 >= size or block[equals + 1] != '"':
            return None
        key = block[i:equals].strip()
        i = equals + 2
        value: list[str] = []
        while i < size and block[i] != '"':
            if block[i] == "\\" and i + 1 < size:
                value.append(_ESCAPES.get(block[i + 1], block[i + 1]))
                i += 2
            else:
                value.append(block[i])
                i += 1
        if i >= size:
            return None
        labels[key] = "".join(value)
        i += 1
    return labels


def _matches(spec: MetricSpec, labels: dict[str, str] | None) -> bool:
    return labels is not None and all(labels.get(k) == v for k, v in spec.labels)


def _adapters(text: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (text or "").split(",") if part.strip())


def parse_load_sample(text: str, engine: EngineMetrics = VLLM) -> LoadSample | None:
    """Sum each gauge over its label sets (one per model); None when neither queue gauge is present.

    LoRA adapters come from the engine's info gauge (vLLM's `lora_requests_info`): the series with the
    highest value (its timestamp) is the current one.
    """
    wanted = engine.names
    specs = (engine.waiting, engine.running, *engine.kv_usage)
    totals: dict[MetricSpec, float] = {}
    lora: dict[str, str] | None = None
    lora_stamp = float("-inf")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace = line.find("{")
        if brace >= 0:
            close = line.rfind("}")
            name, block, rest = line[:brace], line[brace + 1 : close], line[close + 1 :]
        else:
            name, _, rest = line.partition(" ")
            block = ""
        if name not in wanted:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if value != value:  # NaN says nothing about load
            continue
        labels: dict[str, str] | None = None
        if engine.lora is not None and name == engine.lora.name:
            labels = parse_labels(block)
            if labels is not None and value > lora_stamp:
                lora, lora_stamp = labels, value
            continue
        for spec in specs:
            if spec.name != name:
                continue
            if spec.labels:
                if labels is None:
                    labels = parse_labels(block)
                if not _matches(spec, labels):
                    continue
            totals[spec] = totals.get(spec, 0.0) + value
    if engine.waiting not in totals and engine.running not in totals:
        return None
    kv_usage = next((totals[spec] for spec in engine.kv_usage if spec in totals), 0.0)
    max_lora = (lora or {}).get("max_lora", "")
    return LoadSample(
        waiting=totals.get(engine.waiting, 0.0),
        running=totals.get(engine.running, 0.0),
        kv_cache_usage=kv_usage,
        running_adapters=_adapters((lora or {}).get("running_lora_adapters")),
        waiting_adapters=_adapters((lora or {}).get("waiting_lora_adapters")),
        max_lora=int(max_lora) if max_lora.isdigit() else None,
    )
