"""Public LLM trace formats we do not ship, written with their real column names and units.

Each log is small and synthetic, but laid out as the public trace is (BurstGPT, Azure LLM
inference 2024, Mooncake conversation / tool-agent traces, a gateway JSONL with ISO-8601
timestamps, user and session ids, a CSV of epoch milliseconds). Every one must be read in the
right unit, through the CLI a new user runs, or refused with one line naming the option to pass.
The times are known, so a wrong unit (x1000) or a lost column shows up as a wrong span or a
missing client.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegen_load.workload.logs import detect_format, load_log
from servegen_load.workload.pool import load_pool

SPAN = 2 * 3600.0  # seconds of every synthetic trace
EPOCH = 1764460800.0  # 2025-11-30 00:00 UTC


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                          timeout=120)


def _times(n: int = 1500, seed: int = 1) -> np.ndarray:
    t = np.sort(np.random.default_rng(seed).uniform(0.0, SPAN, n))
    t[0], t[-1] = 0.25, SPAN - 0.5
    return t


def _burstgpt(path: Path, t: np.ndarray) -> None:
    """BurstGPT: Timestamp in whole seconds from the trace's start; Model is ChatGPT or GPT-4."""
    rng = np.random.default_rng(2)
    rows = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    for i, x in enumerate(t):
        a, b = int(rng.integers(10, 3000)), int(rng.integers(0, 600))
        rows.append(f"{int(x)},{'GPT-4' if i % 4 == 0 else 'ChatGPT'},{a},{b},{a + b},Conversation log")
    path.write_text("\n".join(rows) + "\n")


def _azure2024(path: Path, t: np.ndarray) -> None:
    """Azure LLM inference 2024: wall clock with 7 fractional digits (100 ns), a space for the T."""
    base = np.datetime64("2024-05-10T00:00:00", "ns")
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i, x in enumerate(t):
        day, frac = str(base + np.timedelta64(round(x * 1e9), "ns")).split(".")
        rows.append(f"{day.replace('T', ' ')}.{frac[:7]},{100 + i % 900},{1 + i % 300}")
    path.write_text("\n".join(rows) + "\n")


def _mooncake(path: Path, t: np.ndarray) -> None:
    """Mooncake conversation / tool-agent traces: timestamp in ms from the start, hash_ids of 512-token blocks."""
    path.write_text("".join(json.dumps({"timestamp": int(x * 1000), "input_length": 600 + i % 5000,
                                        "output_length": 1 + i % 400, "hash_ids": list(range(i % 7 + 1))}) + "\n"
                            for i, x in enumerate(t)))


def _bailian(path: Path, t: np.ndarray) -> None:
    """Alibaba's Qwen-Bailian traces: Mooncake's four keys but `timestamp` in seconds (3 decimals),
    and conversations chained by parent_chat_id (-1 for a first turn), 16-token hash blocks."""
    rows = []
    for i, x in enumerate(t):  # conversations of three turns: i, i + 1, i + 2 for i % 3 == 0
        rows.append(json.dumps({"chat_id": 1000 + i, "parent_chat_id": -1 if i % 3 == 0 else 1000 + i - 1,
                                "timestamp": round(float(x), 3), "input_length": 600 + i % 5000,
                                "output_length": 1 + i % 400, "type": "text", "turn": 1 + i % 3,
                                "hash_ids": list(range(i % 7 + 1))}))
    path.write_text("\n".join(rows) + "\n")


def _gateway(path: Path, t: np.ndarray) -> None:
    """A gateway's JSONL: ISO-8601 with a Z, user and session ids (a session is one user's), OpenAI usage names."""
    base = np.datetime64("2026-11-30T08:00:00", "us")
    path.write_text("".join(json.dumps({
        "timestamp": str(base + np.timedelta64(int(x * 1e6), "us")) + "Z", "user": f"team-{i // 3 % 3}",
        "session_id": f"s{i // 3}", "prompt_tokens": 50 + i % 700, "completion_tokens": 5 + i % 90}) + "\n"
        for i, x in enumerate(t)))


def _epoch_ms(path: Path, t: np.ndarray) -> None:
    path.write_text("ts,input_tokens,output_tokens\n" + "".join(
        f"{round((EPOCH + x) * 1000)},{100 + i % 50},{10 + i % 20}\n" for i, x in enumerate(t)))


WRITERS = {"burstgpt.csv": (_burstgpt, "burstgpt", 1.0), "azure2024.csv": (_azure2024, "azure", 1e-6),
           "conversation_trace.jsonl": (_mooncake, "mooncake", 1e-3), "qwen_traceA_blksz_16.jsonl": (_bailian, "bailian", 1e-3), "gateway.jsonl": (_gateway, "jsonl", 1e-5),
           "epoch_ms.csv": (_epoch_ms, "csv", 1e-3)}


@pytest.mark.parametrize("name", list(WRITERS))
def test_public_trace_layouts_are_read_in_their_units(tmp_path: Path, name: str) -> None:
    """Each layout is detected and its times come back in seconds (to the file's own resolution)."""
    write, fmt, resolution = WRITERS[name]
    t = _times()
    log = tmp_path / name
    write(log, t)
    assert detect_format(log) == fmt
    got = load_log(log, warn=False)
    assert got.bad.count == 0 and len(got) == t.size
    assert np.max(np.abs(np.sort(got.t) - (t - t[0]))) <= resolution + 1.0 * (name == "burstgpt.csv")
    if name == "burstgpt.csv":
        assert sorted(got.clients) == ["ChatGPT", "GPT-4"]
    if name == "qwen_traceA_blksz_16.jsonl":  # a conversation is its first chat_id's chain of turns
        assert got.roles["session"] and np.unique(got.session).size == -(-t.size // 3)
        assert all(np.unique(got.session[i:i + 3]).size == 1 for i in range(0, t.size, 3))
    if name == "gateway.jsonl":
        assert got.wall_clock and sorted(got.clients) == ["team-0", "team-1", "team-2"]
        assert np.unique(got.session).size == -(-t.size // 3)


def test_burstgpt_fits_one_client_per_model_through_the_cli(tmp_path: Path) -> None:
    """`fit` on a BurstGPT log says what it read (format, unit and why) and keeps the 2 hours and both models."""
    log = tmp_path / "BurstGPT_1.csv"
    _burstgpt(log, _times(3000))
    r = cli("fit", str(log), "-o", str(tmp_path / "pool.npz"))
    assert r.returncode == 0, r.stderr
    assert "read as burstgpt: time 'Timestamp' (s, the burstgpt format's unit); client 'Model'" in r.stderr
    pool = load_pool(tmp_path / "pool.npz")
    assert sorted(pool.clients) == ["ChatGPT", "GPT-4"]
    assert pool.span == pytest.approx(SPAN, rel=0.1)  # seconds, not a 1000x shorter or longer trace
    # the GPT-4 share (every 4th request) survives as that client's rate
    share = pool.requests_per_client() / pool.requests_per_client().sum()
    assert share[pool.clients.index("GPT-4")] == pytest.approx(0.25, abs=0.02)


def test_mooncake_trace_with_session_ids(tmp_path: Path) -> None:
    """AIPerf's mooncake_trace layout: Mooncake's keys plus `session_id`: sessions are read too."""
    log = tmp_path / "aiperf_trace.jsonl"
    log.write_text("".join(json.dumps({"session_id": f"s{i // 3}", "timestamp": i * 700, "input_length": 100 + i,
                                       "output_length": 20, "hash_ids": [i]}) + "\n" for i in range(30)))
    got = load_log(log, warn=False)
    assert got.fmt == "mooncake" and got.roles["session"] == "session_id" and got.t[-1] == pytest.approx(29 * 0.7)
    assert np.unique(got.session).size == 10


def test_burstgpt_release_with_session_ids(tmp_path: Path) -> None:
    """A BurstGPT release with `Session ID` and `Elapsed time` columns: sessions are read too."""
    log = tmp_path / "BurstGPT_sessions.csv"
    log.write_text("Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                   + "".join(f"{i * 7},{i // 3},{i % 5},ChatGPT,{100 + i},{20 + i},{120 + 2 * i},Conversation log\n"
                             for i in range(30)))
    got = load_log(log, warn=False)
    assert got.fmt == "burstgpt" and got.roles["session"] == "Session ID" and got.t[-1] == 29 * 7
    assert np.unique(got.session).size == 10


def test_bailian_trace_fits_its_two_hours_and_its_conversations_through_the_cli(tmp_path: Path) -> None:
    """Alibaba's Qwen-Bailian trace shares every Mooncake key, but its timestamps are seconds: read as
    Mooncake's milliseconds it would be a 7-second log. `fit` says what it read and keeps 2 hours."""
    log = tmp_path / "qwen_traceB_blksz_16.jsonl"
    _bailian(log, _times(3000))
    r = cli("fit", str(log), "-o", str(tmp_path / "pool.npz"))
    assert r.returncode == 0, r.stderr
    assert "read as bailian: time 'timestamp' (s, the bailian format's unit)" in r.stderr, r.stderr
    pool = load_pool(tmp_path / "pool.npz")
    assert pool.span == pytest.approx(SPAN, rel=0.1)
    assert "turns mean 3.00" in r.stderr, r.stderr  # the parent_chat_id chains, one session each


@pytest.mark.parametrize("fmt", ["bailian", "mooncake"])
def test_a_replayed_hashed_trace_keeps_its_seconds_and_its_hash_ids(tmp_path: Path, fmt: str) -> None:
    """`replay:` of a Qwen-Bailian (seconds) or Mooncake (ms) trace: the first 10 minutes are the
    rows before 600 s, at their times, each with its hash_ids as its shared-prefix blocks."""
    t = _times(400)
    log = tmp_path / "trace.jsonl"
    (_bailian if fmt == "bailian" else _mooncake)(log, t)
    (tmp_path / "s.yaml").write_text(f"replay:\n  path: trace.jsonl\n  format: {fmt}\n  duration: 600\nseed: 1\n")
    r = cli("generate", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "r.jsonl"))
    assert r.returncode == 0, r.stderr
    reqs = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()[1:]]
    want = t - t[0]
    assert len(reqs) == int((want < 600).sum())
    assert np.allclose([q["t"] for q in reqs], want[want < 600], atol=1e-3)
    assert [q["prefix"] for q in reqs] == [list(range(i % 7 + 1)) for i in range(len(reqs))]


@pytest.mark.parametrize(("time", "client", "inp", "out"), [
    ("@timestamp", "team_id", "promptTokenCount", "candidatesTokenCount"),  # an Elastic export of Vertex AI usage
    ("received_at", "organization", "tokens_in", "tokens_out"),
    ("request_timestamp", "project_id", "num_input_tokens", "num_output_tokens"),
    ("event_time", "account", "prompt_length", "completion_length"),
])
def test_gateway_column_names_are_guessed(tmp_path: Path, time: str, client: str, inp: str, out: str) -> None:
    """Usage logs name their columns many ways; the common ones are found without options."""
    log = tmp_path / "usage.csv"
    log.write_text(f"{time},{client},{inp},{out}\n" + "".join(
        f"{EPOCH + 2 * i:.3f},t{i % 2},{100 + i},{10 + i}\n" for i in range(20)))
    got = load_log(log, warn=False)
    assert (got.roles["time"], got.roles["client"], got.roles["input"], got.roles["output"]) == (time, client, inp, out)
    assert sorted(got.clients) == ["t0", "t1"] and got.t[-1] == pytest.approx(38.0)


def test_relative_whole_numbers_are_refused_with_the_option_to_pass(tmp_path: Path) -> None:
    """BurstGPT's columns renamed by hand (so not detected): whole relative numbers could be s or ms."""
    log = tmp_path / "renamed.csv"
    t = _times()
    log.write_text("timestamp,request_tokens,response_tokens\n" + "".join(f"{int(x)},100,20\n" for x in t))
    r = cli("fit", str(log), "-o", str(tmp_path / "p.npz"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "--time-unit" in r.stderr and "timestamp" in r.stderr
    ok = cli("fit", str(log), "-o", str(tmp_path / "p.npz"), "--time-unit", "s")
    assert ok.returncode == 0, ok.stderr
    assert "input 'request_tokens', output 'response_tokens'" in ok.stderr
    assert load_pool(tmp_path / "p.npz").span == pytest.approx(SPAN, rel=0.1)


def test_sql_export_utc_suffix_and_offsets_are_wall_clock(tmp_path: Path) -> None:
    """`2026-11-30 08:00:01.5 UTC` (BigQuery export) and `+02:00` offsets are read as UTC instants."""
    log = tmp_path / "export.csv"
    log.write_text("created_at,prompt_tokens,completion_tokens\n2026-11-30 08:00:01.5 UTC,10,2\n"
                   "2026-11-30 08:00:04 UTC,10,2\n")
    got = load_log(log, warn=False)
    assert got.bad.count == 0 and got.t.tolist() == [0.0, 2.5] and got.wall_clock
    log2 = tmp_path / "offset.jsonl"
    log2.write_text('{"time": "2026-11-30T10:00:00+02:00", "input_tokens": 1, "output_tokens": 1}\n'
                    '{"time": "2026-11-30T08:00:30Z", "input_tokens": 1, "output_tokens": 1}\n')
    got2 = load_log(log2, warn=False)
    assert got2.t.tolist() == [0.0, 30.0]


def test_compare_reads_a_burstgpt_log_against_its_generated_continuation(tmp_path: Path) -> None:
    """A new user's loop: fit, generate, compare; compare says how it read the log and keeps its span."""
    log = tmp_path / "BurstGPT_1.csv"
    _burstgpt(log, _times(2000))
    assert cli("fit", str(log), "-o", str(tmp_path / "pool.npz")).returncode == 0
    (tmp_path / "s.yaml").write_text(f"pool: {tmp_path / 'pool.npz'}\nstart: 0\nduration: {SPAN:g}\nseed: 1\n")
    g = cli("generate", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "gen.jsonl"))
    assert g.returncode == 0, g.stderr
    r = cli("compare", str(tmp_path / "gen.jsonl"), str(log), "--json")
    assert r.returncode == 0, r.stderr
    assert "read as burstgpt" in r.stderr
    rows = {x["key"]: x for x in json.loads(r.stdout)["rows"]}
    assert rows["duration"]["b"] == pytest.approx(SPAN - 1, abs=2)
    assert rows["duration"]["a"] == pytest.approx(SPAN, rel=0.05)


@pytest.mark.parametrize(("time", "spell"), [
    ("created_at", lambda x: f"{np.datetime_as_string(np.datetime64(int(x * 1000), 'ms'))} UTC"),
    ("time_iso8601", lambda x: f"{np.datetime_as_string(np.datetime64(int(x * 1000), 'ms'))}+00:00"),
    # nginx's and Apache's common log format
    ("time_local", lambda x: (lambda d: f"{d.day:02d}/{d.strftime('%b')}/{d.year}:{d.strftime('%H:%M:%S')} +0000")(
        np.datetime64(int(x), "s").astype(object))),
    ("msec", lambda x: f"{x:.3f}"),
    # log4j: a comma before the fraction, as ISO-8601 allows
    ("timestamp", lambda x: np.datetime_as_string(np.datetime64(int(x * 1000), "ms")).replace("T", " ").replace(".", ",")),
])
def test_a_latency_beside_the_clock_is_not_the_arrival_time(tmp_path: Path, time: str, spell) -> None:
    """nginx logs each request's latency as `request_time` beside its clock: the clock is the
    arrival time, in every spelling nginx, SQL exports and log4j write it."""
    rng = np.random.default_rng(3)
    t = EPOCH + np.cumsum(rng.exponential(2.0, 200))
    log = tmp_path / "access.jsonl"
    log.write_text("".join(json.dumps({"request_time": round(float(rng.exponential(3.0)), 3), time: spell(x),
                                       "tenant": "a", "prompt_tokens": 100, "completion_tokens": 10}) + "\n"
                           for x in t))
    got = load_log(log, warn=False)
    assert got.roles["time"] == time
    whole = time == "time_local"  # whole seconds
    assert got.origin + got.t[-1] == pytest.approx(float(np.floor(t[-1])) if whole else t[-1], abs=1e-3)


def test_a_time_column_out_of_row_order_is_said(tmp_path: Path) -> None:
    """A log whose only time-like column is a latency: fitted as asked, with a warning naming it."""
    rng = np.random.default_rng(4)
    log = tmp_path / "latency.csv"
    log.write_text("request_time,tenant,prompt_tokens,completion_tokens\n" + "".join(
        f"{rng.exponential(3.0):.3f},a,100,10\n" for _ in range(300)))
    p = cli("fit", str(log), "-o", str(tmp_path / "p.npz"))
    assert p.returncode == 0, p.stderr
    assert "WARNING: time column 'request_time' holds no date" in p.stderr
    ordered = tmp_path / "ordered.csv"
    ordered.write_text("request_time,tenant,prompt_tokens,completion_tokens\n" + "".join(
        f"{x:.3f},a,100,10\n" for x in np.cumsum(rng.exponential(3.0, 300))))
    p = cli("fit", str(ordered), "-o", str(tmp_path / "p.npz"))
    assert p.returncode == 0 and "holds no date" not in p.stderr, p.stderr


@pytest.mark.parametrize("api", ["anthropic", "responses", "gemini"])
def test_vendor_usage_objects_count_the_whole_prompt_and_the_reasoning(tmp_path: Path, api: str) -> None:
    """Anthropic's `usage.input_tokens` leaves out the cached part of the prompt (read 4x short);
    OpenAI's Responses API puts reasoning under `output_tokens_details` and Gemini counts thoughts
    apart from `candidatesTokenCount` (both: no reasoning read, or output short)."""
    t = _times(200)
    rows = []
    for i, x in enumerate(t):
        stamp = str(np.datetime64(int((EPOCH + x) * 1000), "ms")) + "Z"
        if api == "anthropic":
            usage = {"input_tokens": 10 + i % 7, "cache_read_input_tokens": 1000,
                     "cache_creation_input_tokens": None if i % 2 else 50, "output_tokens": 20}
            rows.append({"created_at": stamp, "usage": usage})
        elif api == "responses":
            rows.append({"created_at": stamp, "usage": {"input_tokens": 100, "output_tokens": 300,
                                                         "output_tokens_details": {"reasoning_tokens": 200}}})
        else:
            rows.append({"createTime": stamp, "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 50,
                                                                "thoughtsTokenCount": 200}})
    log = tmp_path / f"{api}.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chunk = load_log(log)
    assert len(chunk) == 200
    if api == "anthropic":
        want = np.array([10 + i % 7 + 1000 + (0 if i % 2 else 50) for i in range(200)])
        assert np.array_equal(np.sort(chunk.input), np.sort(want))
    else:
        assert chunk.reason is not None and np.all(chunk.reason == 200)
        assert np.all(chunk.output == (300 if api == "responses" else 250))
