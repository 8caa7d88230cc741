"""The simulator over real HTTP on 127.0.0.1, started in a child process with `SimProcess`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from test_sim_engine import data_url, jpeg_header, png_bytes, wav_bytes

from servegen_load.errors import InputError
from servegen_load.sim import SimProcess
from servegen_load.sim.faults import FAULTS

_uniq = itertools.count()


def words(n: int) -> str:
    """A prompt of exactly n tokens whose first word is unique (no accidental prefix-cache hit)."""
    return " ".join([f"u{next(_uniq)}x{time.monotonic_ns()}"] + [f"w{i}" for i in range(n - 1)])


@dataclass
class Reply:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    t_headers: float | None = None
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    body: Any = None
    error: str | None = None
    t_end: float = 0.0
    t0: float = 0.0

    @property
    def events(self) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for t, line in self.lines:
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append((t, orjson.loads(line[6:])))
        return out

    @property
    def done(self) -> bool:
        return any(line == b"data: [DONE]" for _, line in self.lines)

    def content(self) -> list[tuple[float, str, str]]:
        """(time, kind, text) per token chunk; kind is text, content or reasoning."""
        out = []
        for t, ev in self.events:
            for ch in ev.get("choices") or []:
                if "text" in ch:
                    out.append((t, "text", ch["text"]))
                d = ch.get("delta") or {}
                if d.get("reasoning_content"):
                    out.append((t, "reasoning", d["reasoning_content"]))
                if d.get("content"):
                    out.append((t, "content", d["content"]))
        return out

    @property
    def usage(self) -> dict[str, Any] | None:
        if isinstance(self.body, dict):
            return self.body.get("usage")
        found = [ev["usage"] for _, ev in self.events if ev.get("usage")]
        return found[-1] if found else None

    @property
    def ttft(self) -> float:
        return self.content()[0][0]

    @property
    def last_token(self) -> float:
        return self.content()[-1][0]


async def apost(session: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any],
                timeout: float = 20.0) -> Reply:
    r = Reply()
    r.t0 = t0 = time.monotonic()
    try:
        async with session.post(url + path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            r.status, r.headers, r.t_headers = resp.status, dict(resp.headers), time.monotonic() - t0
            if body.get("stream") and resp.status == 200:
                async for line in resp.content:
                    line = line.rstrip(b"\r\n")
                    if line:
                        r.lines.append((time.monotonic() - t0, line))
            else:
                raw = await resp.read()
                r.body = orjson.loads(raw)
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError) as e:
        r.error = type(e).__name__
    r.t_end = time.monotonic() - t0
    return r


def post(url: str, path: str, body: dict[str, Any], timeout: float = 20.0) -> Reply:
    async def go() -> Reply:
        async with aiohttp.ClientSession() as s:
            return await apost(s, url, path, body, timeout)
    return asyncio.run(go())


def post_many(url: str, path: str, bodies: list[dict[str, Any]], timeout: float = 30.0) -> list[Reply]:
    async def go() -> list[Reply]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            return list(await asyncio.gather(*(apost(s, url, path, b, timeout) for b in bodies)))
    return asyncio.run(go())


def completion(prompt: Any, max_tokens: int, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, **kw}


def chat(content: Any, max_tokens: int, **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, **kw}


@pytest.fixture(scope="module")
def sim() -> Any:
    with SimProcess("tiny-cpu", seed=3) as s:
        yield s


# --- lengths and usage -------------------------------------------------------------------


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_forced_length_is_exact_and_natural_length_is_shorter(sim: SimProcess, api: str) -> None:
    path = "/v1/completions" if api == "completions" else "/v1/chat/completions"
    make = completion if api == "completions" else chat
    forced = post_many(sim.url, path, [make(words(20), 40, ignore_eos=True),
                                       make(words(20), 40, min_tokens=40)])
    for r in forced:
        toks = r.content()
        assert r.status == 200 and r.done and len(toks) == 40
        assert r.usage["completion_tokens"] == 40
        assert len("".join(t for _, _, t in toks).split()) == 40  # one word per token
    natural = post_many(sim.url, path, [make(words(20), 40) for _ in range(24)])
    lengths = [r.usage["completion_tokens"] for r in natural]
    assert all(r.done and len(r.content()) == r.usage["completion_tokens"] for r in natural)
    assert all(1 <= n <= 40 for n in lengths)
    assert sum(lengths) / len(lengths) < 0.6 * 40
    stop = [r.events[-1][1]["choices"] for r in natural if r.usage["completion_tokens"] < 40]
    assert stop and all(c == [] or c[0]["finish_reason"] == "stop" for c in stop)


def test_usage_rides_on_the_last_completions_chunk_and_a_separate_chat_chunk(sim: SimProcess) -> None:
    r = post(sim.url, "/v1/completions", completion(words(10), 5, ignore_eos=True))
    evs = [ev for _, ev in r.events]
    assert [("usage" in ev) for ev in evs] == [False] * 4 + [True]
    assert evs[-1]["choices"][0]["finish_reason"] == "length" and evs[-1]["choices"][0]["text"]
    assert evs[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                                "prompt_tokens_details": {"cached_tokens": 0},
                                "completion_tokens_details": {"reasoning_tokens": 0}}
    r = post(sim.url, "/v1/chat/completions", chat(words(10), 5, ignore_eos=True))
    evs = [ev for _, ev in r.events]
    assert len(evs) == 6 and evs[-1]["choices"] == [] and evs[-1]["usage"]["completion_tokens"] == 5
    assert not any("usage" in ev for ev in evs[:-1])
    assert evs[0]["choices"][0]["delta"]["role"] == "assistant"
    r = post(sim.url, "/v1/chat/completions", {**chat(words(10), 5, ignore_eos=True), "stream_options": None})
    assert r.done and r.usage is None
    for path, body in (("/v1/completions", completion(words(12), 7, ignore_eos=True, stream=False)),
                       ("/v1/chat/completions", chat(words(12), 7, ignore_eos=True, stream=False))):
        r = post(sim.url, path, body)
        assert r.status == 200 and r.usage["prompt_tokens"] == 12 and r.usage["completion_tokens"] == 7


def test_token_id_prompts_are_counted_exactly(sim: SimProcess) -> None:
    ids = list(range(5000, 5137))
    r = post(sim.url, "/v1/completions", completion(ids, 2))
    assert r.usage["prompt_tokens"] == 137
    r = post(sim.url, "/v1/completions", completion([ids[:50]], 2))
    assert r.usage["prompt_tokens"] == 50
    assert post(sim.url, "/tokenize", {"prompt": ids}).body == {"count": 137, "max_model_len": 65536,
                                                               "tokens": ids}
    assert post(sim.url, "/tokenize", {"prompt": words(33)}).body["count"] == 33
    assert post(sim.url, "/tokenize", {"messages": [{"role": "user", "content": words(9)}]}).body["count"] == 9
    bad = post(sim.url, "/v1/completions", completion(["a", "b"], 2))
    assert bad.status == 400 and "batched" in bad.body["error"]["message"]


def test_reasoning_tokens_stream_first_then_content(sim: SimProcess) -> None:
    r = post(sim.url, "/v1/chat/completions", chat(words(8), 30, ignore_eos=True, x_reason_tokens=12))
    kinds = [k for _, k, _ in r.content()]
    assert kinds == ["reasoning"] * 12 + ["content"] * 18
    assert r.usage["completion_tokens_details"]["reasoning_tokens"] == 12
    r = post(sim.url, "/v1/chat/completions", chat(words(8), 30, ignore_eos=True, x_reason_tokens=12, stream=False))
    msg = r.body["choices"][0]["message"]
    assert len(msg["reasoning_content"].split()) == 12 and len(msg["content"].split()) == 18


def test_media_items_are_charged_from_their_headers(sim: SimProcess) -> None:
    parts = [
        {"type": "text", "text": words(7)},
        {"type": "image_url", "image_url": {"url": data_url("image/png", png_bytes(56, 84))}},  # 2 x 3
        {"type": "image_url", "image_url": {"url": data_url("image/jpeg", jpeg_header(1000, 700))}},  # 36 x 25
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(2.0)).decode(), "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "http://v/clip.mp4", "servegen": {"frames": 4, "tokens_per_frame": 10}}},
    ]
    r = post(sim.url, "/v1/chat/completions", chat(parts, 3, ignore_eos=True))
    assert r.usage["prompt_tokens"] == 7 + 6 + 900 + 50 + 40
    bad = post(sim.url, "/v1/chat/completions", chat([{"type": "image_url", "image_url": {"url": "http://x.png"}}], 3))
    assert bad.status == 400 and "data URL" in bad.body["error"]["message"]


def test_prefix_cache_reports_cached_tokens_on_a_repeat_only(sim: SimProcess) -> None:
    prompt = words(200)
    first = post(sim.url, "/v1/completions", completion(prompt, 2))
    again = post(sim.url, "/v1/completions", completion(prompt, 2))
    other = post(sim.url, "/v1/completions", completion(words(200), 2))
    cached = [r.usage["prompt_tokens_details"]["cached_tokens"] for r in (first, again, other)]
    assert cached == [0, 192, 0]  # 12 whole 16-token blocks
    chat_prompt = words(100)
    post(sim.url, "/v1/chat/completions", chat(chat_prompt, 2))
    r = post(sim.url, "/v1/chat/completions", chat(chat_prompt, 2))
    assert r.usage["prompt_tokens_details"]["cached_tokens"] == 96


def test_small_endpoints(sim: SimProcess) -> None:
    model = sim.get("/v1/models")["data"][0]
    assert model["id"] == "servegen/tiny-sim"
    assert abs(model["created"] - time.time()) < 3600  # a Unix time, as OpenAI's (it was seconds since boot)

    async def get(path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s, s.get(sim.url + path) as r:
            return r.status, await r.text()
    assert asyncio.run(get("/health"))[0] == 200
    status, text = asyncio.run(get("/metrics"))
    assert status == 200 and "vllm:num_requests_running" in text and "servegen_sim_step_seconds_bucket" in text
    gen = [line for line in text.splitlines() if line.startswith("vllm:generation_tokens_total")]
    assert gen and float(gen[0].split()[-1]) > 0
    st = sim.stats()
    assert {"requests_received", "requests_finished", "faults_injected", "max_concurrent_streams",
            "saturation_rate", "engine", "status_counts"} <= st.keys()
    assert st["saturation_rate"]["requests_per_second"] > 0
    assert post(sim.url, "/v1/completions", {"prompt": "x", "max_tokens": 0}).status == 400


# --- timing follows the engine model ----------------------------------------------------------


def test_ttft_grows_with_prompt_length() -> None:
    with SimProcess("tiny-cpu", params={"prefill_token_s": 2e-5, "max_num_batched_tokens": 16384}) as s:
        ttft = [post(s.url, "/v1/completions", completion(words(n), 2)).ttft for n in (20, 2000, 8000)]
    assert ttft[0] < ttft[1] < ttft[2]
    assert ttft[2] - ttft[0] > 0.1  # 8k tokens at 50k tokens/s: ~160 ms more


def test_queued_requests_wait_for_a_free_batch_slot() -> None:
    with SimProcess("tiny-cpu", params={"max_num_seqs": 2}) as s:
        rs = post_many(s.url, "/v1/completions", [completion(words(20), 40, ignore_eos=True) for _ in range(6)])
        st = s.stats()["engine"]
    assert st["max_running"] == 2 and st["max_waiting"] >= 1
    rs.sort(key=lambda r: r.t0 + r.ttft)
    firsts = [r.t0 + r.ttft for r in rs]
    lasts = sorted(r.t0 + r.last_token for r in rs)
    for i in range(2, 6):  # the i-th start needs i-1 finishes before it
        assert firsts[i] >= lasts[i - 2] - 0.003
    assert min(r.ttft for r in rs[2:]) > max(r.ttft for r in rs[:2])


def test_kv_budget_queues_requests() -> None:
    with SimProcess("tiny-cpu", params={"kv_cache_tokens": 300}) as s:
        rs = post_many(s.url, "/v1/completions", [completion(words(100), 100, ignore_eos=True) for _ in range(3)])
        too_big = post(s.url, "/v1/completions", completion(words(250), 100, ignore_eos=True))
        too_long = post(s.url, "/v1/completions", completion(words(250), 65_400))
        st = s.stats()
    assert st["engine"]["max_running"] == 1 and st["requests_rejected"] == 2
    assert too_big.status == 400 and "KV" in too_big.body["error"]["message"]
    assert too_long.status == 400 and "maximum context length" in too_long.body["error"]["message"]
    rs.sort(key=lambda r: r.t0 + r.ttft)
    for a, b in itertools.pairwise(rs):
        assert b.t0 + b.ttft >= a.t0 + a.last_token - 0.003


def test_a_client_that_leaves_frees_its_batch_slot() -> None:
    async def leave_early(url: str) -> int:
        async with aiohttp.ClientSession() as s, s.post(url + "/v1/completions",
                                                        json=completion(words(5), 5000, ignore_eos=True)) as r:
            seen = 0
            async for _line in r.content:
                seen += 1
                if seen >= 6:
                    break
            return seen

    with SimProcess("tiny-cpu", params={"max_num_seqs": 1}) as s:
        asyncio.run(leave_early(s.url))
        nxt = post(s.url, "/v1/completions", completion(words(5), 3, ignore_eos=True))  # 5000 tokens would be 10 s
        deadline = time.monotonic() + 5
        while s.stats()["requests_aborted"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        st = s.stats()
    assert nxt.done and nxt.ttft < 1.0
    assert st["requests_aborted"] == 1 and st["engine"]["running"] == 0


def test_time_scale_slows_the_engine() -> None:
    body = completion(words(10), 60, ignore_eos=True)
    with SimProcess("tiny-cpu") as s:
        fast = post(s.url, "/v1/completions", body)
    with SimProcess("tiny-cpu", time_scale=4.0) as s:
        slow = post(s.url, "/v1/completions", body)
        assert s.stats()["params"]["step_base_s"] == pytest.approx(0.008)
    assert slow.last_token - slow.ttft > 2.5 * (fast.last_token - fast.ttft)


def test_hundreds_of_concurrent_streams_complete() -> None:
    n = 300
    with SimProcess("tiny-cpu", params={"max_num_seqs": 512, "max_num_batched_tokens": 8192}) as s:
        rs = post_many(s.url, "/v1/completions", [completion(words(30), 20, ignore_eos=True) for _ in range(n)])
        st = s.stats()
    assert all(r.done and len(r.content()) == 20 for r in rs)
    assert st["max_concurrent_streams"] > n // 2 and st["requests_finished"] == n


# --- faults ----------------------------------------------------------------------------------


def _symptom(name: str, r: Reply, max_tokens: int) -> None:
    toks = r.content()
    if name in ("http_500", "http_503", "http_429"):
        assert r.status == int(name[-3:]) and "error" in r.body
        assert (r.headers.get("Retry-After") == "1") == (name == "http_429")
    elif name == "reset_before_first_byte":
        assert r.status is None and r.error in ("ClientOSError", "ServerDisconnectedError")
    elif name == "disconnect_mid_stream":
        assert r.status == 200 and r.error is not None and not r.done and 1 <= len(toks) < max_tokens + 1
    elif name == "stall_resume":
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(toks)]
        assert r.done and len(toks) == max_tokens and max(gaps) >= 0.5
    elif name == "stall_hang":
        assert r.status == 200 and r.error == "TimeoutError" and not r.done and len(toks) < max_tokens
    elif name == "malformed_sse":
        assert r.done and any(not line.startswith(b"data:") for _, line in r.lines)
    elif name == "malformed_json":
        assert r.done and len(r.events) < sum(line.startswith(b"data: {") for _, line in r.lines)
    elif name == "no_done":
        assert r.error is None and r.status == 200 and len(toks) == max_tokens and not r.done
    elif name == "slow_accept":
        assert r.done and r.t_headers >= 0.5 and len(toks) == max_tokens
    else:  # pragma: no cover
        raise AssertionError(name)


@pytest.mark.parametrize("name", FAULTS)
def test_each_fault_shows_its_symptom_and_is_counted(name: str) -> None:
    with SimProcess("tiny-cpu", faults={name: 1.0}, stall_seconds=0.6, slow_accept_seconds=0.6, seed=5) as s:
        bodies = [completion(words(10), 8, ignore_eos=True), chat(words(10), 8, ignore_eos=True)]
        rs = [post(s.url, "/v1/completions", bodies[0], timeout=1.5),
              post(s.url, "/v1/chat/completions", bodies[1], timeout=1.5)]
        for r in rs:
            _symptom(name, r, 8)
        if name == "stall_hang":  # the server saw both clients give up
            deadline = time.monotonic() + 5
            while s.stats()["requests_aborted"] < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        st = s.stats()
    assert st["faults_injected"] == {f: (2 if f == name else 0) for f in FAULTS}
    if name == "stall_hang":
        assert st["requests_aborted"] == 2
    assert st["engine"]["running"] == 0 and st["engine"]["kv_used_tokens"] == 0  # nothing leaked


def test_fault_rates_match_client_status_counts() -> None:
    faults = {"http_500": 0.2, "http_503": 0.1, "http_429": 0.1}
    body = {"prompt": "a b c", "max_tokens": 2}
    with SimProcess("tiny-cpu", faults=faults, seed=11) as s:
        rs = post_many(s.url, "/v1/completions", [body] * 60)
        st = s.stats()
    seen = {code: sum(r.status == code for r in rs) for code in (200, 500, 503, 429)}
    inj = st["faults_injected"]
    assert (seen[500], seen[503], seen[429]) == (inj["http_500"], inj["http_503"], inj["http_429"])
    assert seen[200] == 60 - sum(inj.values()) == st["requests_finished"]
    assert 0 < inj["http_500"] < 30


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        SimProcess("tiny-cpu", faults={"nope": 0.5})
    with pytest.raises(InputError):
        SimProcess("tiny-cpu", faults={"http_500": 0.7, "http_503": 0.7})
    p = subprocess.run([sys.executable, "-m", "servegen_load.cli", "sim", "--fault", "bogus=0.1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "bogus" in lines[0] and "Traceback" not in p.stderr


def test_the_standalone_sim_serves_a_run_without_a_traceback(tmp_path) -> None:
    """`servegen-load sim` then `run --endpoint` at it (family vllm: the start-up probes too): each
    run added an aiohttp traceback to the sim's stderr (a client that left before the headers)."""
    from test_dispatch_fixtures import make_requests, write_requests

    err = tmp_path / "sim.err"
    with open(err, "wb") as e:
        sim = subprocess.Popen([sys.executable, "-m", "servegen_load", "sim", "--port", "0"], stdout=subprocess.PIPE,
                               stderr=e)
    try:
        assert sim.stdout is not None
        url = sim.stdout.readline().decode().split("http://", 1)[1].split()[0]
        src = write_requests(tmp_path / "req.jsonl", make_requests([0.02 * i for i in range(5)], output_tokens=4))
        for k in range(3):
            r = subprocess.run([sys.executable, "-m", "servegen_load", "run", str(src), "--endpoint", f"http://{url}",
                                "-o", str(tmp_path / f"out{k}.jsonl"), "--progress", "off"],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
    finally:
        sim.terminate()
        sim.wait(10)
    assert "Traceback" not in err.read_text()
