"""The model-server simulator over real HTTP (aiohttp server and client on loopback)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from epp.exposition import parse_load_sample
from epp.scorer import LoadSample
from epp.simulator import Simulator, SimulatorSettings
from tests.polling import wait_until_async


@pytest.fixture
async def slow_sim() -> TestClient:  # type: ignore[misc]
    simulator = Simulator(SimulatorSettings(name="sim-a", latency=0.3, concurrency=2))
    async with TestClient(TestServer(simulator.make_app(), host="127.0.0.1")) as client:
        yield client


async def test_completions_answer_in_openai_shape_and_name_the_server(slow_sim: TestClient) -> None:
    response = await slow_sim.post("/v1/completions", json={"model": "m1", "prompt": "hi", "max_tokens": 3})
    assert response.status == 200
    assert response.headers["x-served-by"] == "sim-a"
    answer = await response.json()
    assert answer["object"] == "text_completion"
    assert answer["model"] == "m1"
    assert answer["choices"][0]["text"]


async def test_chat_completions_answer_with_a_message(slow_sim: TestClient) -> None:
    response = await slow_sim.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user"}]}
    )
    answer = await response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        pytest.param("/v1/completions", b"{nope", "not JSON", id="not-json"),
        pytest.param("/v1/completions", b"[1]", "JSON object", id="not-an-object"),
        pytest.param("/v1/completions", b'{"model": 3}', "`model`", id="model-not-a-string"),
        pytest.param("/v1/chat/completions", b'{"model": "m"}', "`messages`", id="chat-without-messages"),
    ],
)
async def test_bad_requests_get_a_400_with_an_openai_style_error(
    slow_sim: TestClient, path: str, body: bytes, says: str
) -> None:
    response = await slow_sim.post(path, data=body, headers={"content-type": "application/json"})
    assert response.status == 400
    assert says in (await response.json())["error"]["message"]


async def test_metrics_follow_the_queue(slow_sim: TestClient) -> None:
    idle = parse_load_sample(await (await slow_sim.get("/metrics")).text())
    assert idle == LoadSample(waiting=0, running=0, kv_cache_usage=0)
    requests = [
        asyncio.create_task(slow_sim.post("/v1/completions", json={"prompt": str(i)})) for i in range(5)
    ]
    busy = None

    async def all_five_in() -> bool:
        nonlocal busy
        busy = parse_load_sample(await (await slow_sim.get("/metrics")).text())
        return busy is not None and busy.running + busy.waiting == 5

    await wait_until_async(all_five_in, "all five requests in, two running and three waiting")
    assert busy == LoadSample(waiting=3, running=2, kv_cache_usage=1.0)
    answers = await asyncio.wait_for(asyncio.gather(*requests), timeout=10)
    assert [a.status for a in answers] == [200] * 5
    text = await (await slow_sim.get("/metrics")).text()
    assert 'vllm:request_success_total{model_name="sim-model"} 5' in text
