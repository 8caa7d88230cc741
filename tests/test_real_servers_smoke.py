"""Smoke tests of the real-server fixtures: each server answers the way the load generator relies on.

The facts checked are the ones servegen-load's dispatcher builds on (shared/servers/README.md):
streamed usage, exact forced output lengths with `ignore_eos` on a model that stops early by itself
(so "exact" proves the forcing works), exact prompt lengths from token-id prompts, and the
Prometheus/Pushgateway plumbing that `run --metrics-port/--pushgateway` feeds.
"""

from __future__ import annotations

import json
import random
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server
from real_servers import VLLM_METRICS, InferenceServer, free_port

MAX_TOKENS = 48
PROMPT_LEN = 64


@dataclass
class Streamed:
    """What one streamed OpenAI response carried."""

    usage: dict[str, Any] | None = None
    content_chunks: int = 0
    finish_reason: str | None = None
    text: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)


def stream(server: InferenceServer, path: str, body: dict[str, Any], timeout: float = 60.0) -> Streamed:
    """POST a streaming request and parse its SSE events (urllib: no client library in between)."""
    body = {"model": server.model, "stream": True, "stream_options": {"include_usage": True}, **body}
    req = urllib.request.Request(f"{server.url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    out = Streamed()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200
        assert r.headers.get_content_type() == "text/event-stream"
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ev = json.loads(data)
            out.events.append(ev)
            if ev.get("usage"):
                out.usage = ev["usage"]  # llama.cpp completions: in the last content chunk; chat: its own
            for ch in ev.get("choices") or []:
                piece = ch.get("text") if "text" in ch else (ch.get("delta") or {}).get("content")
                if piece:
                    out.content_chunks += 1
                    out.text += piece
                if ch.get("finish_reason"):
                    out.finish_reason = ch["finish_reason"]
    return out


def post(server: InferenceServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{server.url}{path}", data=json.dumps({"model": server.model, **body}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def unique_ids(seed: int, n: int = PROMPT_LEN) -> list[int]:
    """Token ids no other request uses (both servers cache prompts; a reused one fakes a fast TTFT)."""
    return random.Random(seed).sample(range(300, 8000), n)


def words(seed: int, n: int = 40) -> str:
    rnd = random.Random(seed)
    return " ".join("".join(rnd.choices("abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 7))) for _ in range(n))


def check_forced_completions(server: InferenceServer, seed: int) -> Streamed:
    s = stream(server, "/v1/completions", {"prompt": unique_ids(seed), "max_tokens": MAX_TOKENS,
                                            "ignore_eos": True, "temperature": 1.0})
    assert s.usage is not None, "no usage in the stream despite stream_options.include_usage"
    assert s.usage["completion_tokens"] == MAX_TOKENS
    assert s.usage["prompt_tokens"] == PROMPT_LEN  # token-id prompts: exact, no BOS added
    assert s.finish_reason == "length"
    assert 0 < s.content_chunks <= MAX_TOKENS
    return s


def check_forced_chat(server: InferenceServer, seed: int) -> Streamed:
    s = stream(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": words(seed)}],
                                                 "max_tokens": MAX_TOKENS, "ignore_eos": True})
    assert s.usage is not None, "no usage in the chat stream despite stream_options.include_usage"
    assert s.usage["completion_tokens"] == MAX_TOKENS
    assert s.usage["prompt_tokens"] > 40  # 40 words plus the chat template
    assert s.finish_reason == "length"
    assert s.content_chunks > 0
    return s


def check_stops_early_unforced(server: InferenceServer, seed: int) -> None:
    """Without ignore_eos the tiny model ends early by itself (--eos-logit 8): this is what makes the
    exact lengths above a proof that forcing works, not a coincidence of max_tokens."""
    lengths = [post(server, "/v1/completions", {"prompt": unique_ids(seed + i, 16), "max_tokens": 64})
               ["usage"]["completion_tokens"] for i in range(6)]
    assert min(lengths) < 64, f"the model never stopped by itself: {lengths}; was it built with --eos-logit?"


# --- llama.cpp -----------------------------------------------------------------------------------


def test_llamacpp_completions_forced_length(llamacpp_server: InferenceServer) -> None:
    check_forced_completions(llamacpp_server, seed=101)


def test_llamacpp_chat_forced_length(llamacpp_server: InferenceServer) -> None:
    check_forced_chat(llamacpp_server, seed=102)


def test_llamacpp_stops_early_without_ignore_eos(llamacpp_server: InferenceServer) -> None:
    check_stops_early_unforced(llamacpp_server, seed=103)


def test_llamacpp_metrics_count_generated_tokens(llamacpp_server: InferenceServer) -> None:
    before = llamacpp_server.metrics().get("llamacpp:tokens_predicted_total", 0.0)
    check_forced_completions(llamacpp_server, seed=104)
    after = llamacpp_server.metrics()["llamacpp:tokens_predicted_total"]
    assert after - before == MAX_TOKENS


# --- vLLM ----------------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.timeout(1200)  # a fresh machine installs vLLM (about 2 min) inside the fixture, then starts it
def test_vllm_forced_lengths_and_metrics(vllm_server: InferenceServer) -> None:
    check_forced_completions(vllm_server, seed=201)
    check_forced_chat(vllm_server, seed=202)
    check_stops_early_unforced(vllm_server, seed=203)
    assert vllm_server.tokenizer_dir is not None and (vllm_server.tokenizer_dir / "tokenizer.json").is_file()
    # Every vLLM metric the Grafana dashboard queries exists on a live server of the pinned version.
    names = {k.split("{")[0] for k in vllm_server.metrics()}
    missing = [m for m in VLLM_METRICS if m not in names]
    assert not missing, f"vLLM /metrics lacks {missing}"


# --- Prometheus and Pushgateway ------------------------------------------------------------------


def test_prometheus_scrapes_targets_and_answers_promql(prometheus_server, llamacpp_server: InferenceServer) -> None:
    reg = CollectorRegistry()
    c = Counter("smoke_requests", "requests seen by the smoke exporter", ["status"], registry=reg)
    c.labels("ok").inc(7)
    c.labels("http_error").inc(2)
    port = free_port()
    httpd, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    try:
        prom = prometheus_server({"smoke": f"http://127.0.0.1:{port}/metrics", "llamacpp": llamacpp_server.metrics_url})
        check_forced_completions(llamacpp_server, seed=301)
        assert prom.wait_value('sum(smoke_requests_total{status="ok"})', 7) == 7
        assert prom.wait_value("sum(smoke_requests_total)", 9) == 9
        assert prom.wait_value('up{job="llamacpp"}', 1) == 1
        assert prom.wait_value("sum(llamacpp:tokens_predicted_total)", lambda v: v >= MAX_TOKENS) >= MAX_TOKENS
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_pushgateway_values_reach_prometheus(prometheus_server, pushgateway_server) -> None:
    reg = CollectorRegistry()
    Gauge("smoke_pushed", "a value pushed by the smoke test", registry=reg).set(42)
    push_to_gateway(pushgateway_server.address, job="servegen-smoke", registry=reg)
    assert pushgateway_server.metrics()['smoke_pushed{instance="",job="servegen-smoke"}'] == 42
    prom = prometheus_server({"pushgateway": f"{pushgateway_server.url}/metrics"})
    assert prom.wait_value('sum(smoke_pushed{job="servegen-smoke"})', 42) == 42
