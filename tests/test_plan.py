"""`servegen-load plan`: scaling a scenario, the search, and a real plan against the simulator.

The end-to-end plan uses ServeGen's m-large pool (clients with moderate burstiness and output
lengths, so short steps drain quickly) against the llama3-8b-h100 preset at time scale 0.5:
saturation near 44 req/s, which this machine's client sends comfortably. The knee the plan
measures must be within 10% of `analytic_saturation_rate` for the scenario's mean lengths.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_dispatch_fixtures import answering

from servegen_load.capacity import Step, mean_rate, replicas, scaled, search
from servegen_load.scenario import load_scenario
from servegen_load.sim.engine import analytic_saturation_rate
from servegen_load.sim.presets import get_preset
from servegen_load.slo import Check, parse_slo
from servegen_load.workload.compose import iter_scenario_requests, naive_of
from servegen_load.workload.resolve import resolve

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
SCENARIO = """\
pool: m-large
start: "20:00"
duration: 60
rate: 20
clients: {cv: [0, 1.5], output_mean: [1, 150]}
seed: 1
"""
SIM_TIME_SCALE = 0.5
STEP, WARMUP = 4.0, 1.5


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_scaling_keeps_the_mix_and_multiplies_the_rate(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, "s.yaml", SCENARIO))
    one, two = scaled(s, 1.0, 10.0), scaled(s, 2.0, 10.0)
    assert one.duration == 10.0 and two.rate == 40.0
    assert mean_rate(two) == pytest.approx(2 * mean_rate(one))
    names = {r.client for r in iter_scenario_requests(two)}
    assert names <= {n for n, _, _ in resolve(one).client_table()}
    p = load_scenario(write(tmp_path, "p.yaml", "pools:\n  - {pool: m-large, weight: 1}\n  - {pool: mm-image, rate: 2}\n"
                                               "start: '20:00'\nduration: 30\nrate: 10\nseed: 1\n"))
    p3 = scaled(p, 3.0, 30.0)
    assert p3.rate == 30.0 and p3.pools[1].rate == 6.0
    assert mean_rate(p3) == pytest.approx(3 * mean_rate(scaled(p, 1.0, 30.0)), rel=1e-6)
    sc = load_scenario(write(tmp_path, "sc.yaml", "pool: m-large\nstart: '20:00'\nduration: 120\nscale: 0.1\n"
                                                  "time_scale: 4\n"))
    s2 = scaled(sc, 2.0, 15.0)
    assert s2.scale == pytest.approx(0.2) and s2.duration == 60.0  # 15 s of run time = 60 s of pool time
    n = naive_of(scaled(s, 1.0, 10.0))
    assert mean_rate(scaled(n, 2.0, 10.0)) == pytest.approx(2 * mean_rate(n))


def _fake_step(capacity: float, calls: list[float]) -> Callable[[float], Step]:
    slo = parse_slo("ttft_p99<=1s")

    def step(scale: float) -> Step:
        calls.append(scale)
        v = 0.5 if scale <= capacity else 2.0
        return Step(len(calls), scale, scale * 10, scale * 10, scale * 10, scale * 10, 100,
                    [Check(slo, v, v <= 1.0)], 1.0)
    return step


@pytest.mark.parametrize("capacity", [0.3, 1.0, 3.3, 20.0])
def test_search_brackets_then_bisects_in_few_steps(capacity: float) -> None:
    calls: list[float] = []
    lo, hi, ok = search(_fake_step(capacity, calls), 1.0, 0.05, 20)
    assert ok and lo is not None and hi is not None
    assert lo <= capacity < hi and hi / lo <= 1.05
    assert len(calls) <= 2 + math.ceil(abs(math.log2(capacity))) + 6


def test_replicas_rule() -> None:
    r = replicas(100.0, 0.2, 25.0)
    assert r["replicas"] == 5  # 100 * 1.2 / 25 = 4.8
    assert replicas(100.0, 0.0, 25.0)["replicas"] == 4


def test_plan_finds_the_knee_of_the_simulator(tmp_path: Path) -> None:
    scen = write(tmp_path, "lang.yaml", SCENARIO)
    cap, page = tmp_path / "capacity.json", tmp_path / "capacity.html"
    p = subprocess.run([*CLI, "plan", str(scen), "--clock", "real", "--slo", "ttft_p99<=1s", "--sim-time-scale", str(SIM_TIME_SCALE),
                        "--step-duration", str(STEP), "--warmup", str(WARMUP), "--tolerance", "10%",
                        "--start-scale", "1.5", "--compare", "naive", "--replicas-for", "100",
                        "-o", str(cap), "--html", str(page)], capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "plan scenario step 1: scale 1.5" in p.stderr and "plan naive step 1:" in p.stderr
    doc = json.loads(cap.read_text())
    assert doc["format"] == "servegen-load/capacity/v1"

    # the analytic saturation point of the preset for the scenario's mean lengths
    s = load_scenario(scen)
    reqs = list(iter_scenario_requests(scaled(s, 1.0, WARMUP + STEP)))
    lp = float(np.mean([r.input_tokens for r in reqs]))
    lo = float(np.mean([r.output_tokens for r in reqs]))
    sat = analytic_saturation_rate(lp, lo, get_preset("llama3-8b-h100").scaled(SIM_TIME_SCALE))
    assert 25 < sat < 80  # tens of req/s: the client keeps up comfortably

    knee = doc["plan"]["knee"]
    assert knee["reached"], p.stdout
    assert abs(knee["rate"] / sat - 1) < 0.10, (knee, sat, p.stdout)
    capacity = doc["plan"]["capacity"]
    assert capacity["scale"] is not None and capacity["converged"]
    assert 0 < capacity["rate"] <= 1.1 * sat
    assert capacity["failing_scale"] / capacity["scale"] <= 1.1
    # every step measured the SLO metric; the curve rises with load
    steps = doc["plan"]["steps"]
    assert len(steps) >= 3 and all(st["metrics"]["ttft_p99"] is not None for st in steps)
    assert steps[-1]["metrics"]["ttft_p99"] > steps[0]["metrics"]["ttft_p99"]
    # the naive comparison: both capacities and their ratio, printed
    comp = doc["comparison"]
    assert comp["realistic_rate"] == capacity["rate"] and comp["naive_rate"] > 0
    assert comp["ratio"] == pytest.approx(comp["naive_rate"] / comp["realistic_rate"])
    assert f"naive vs realistic: {comp['naive_rate']:.3g} vs {comp['realistic_rate']:.3g} req/s" in p.stdout
    assert doc["replicas"]["replicas"] == math.ceil(100 * 1.2 / capacity["rate"])
    assert "replicas for a peak of 100 req/s with 20% headroom" in p.stdout
    # the HTML page and `report` on the capacity file
    html = page.read_text()
    assert html.count("<svg") >= 1 and "ttft_p99" in html and "served vs offered" in html
    r = subprocess.run([*CLI, "report", str(cap)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "max sustainable rate" in r.stdout and "naive vs realistic" in r.stdout


def test_plan_input_errors_exit_2(tmp_path: Path) -> None:
    scen = write(tmp_path, "lang.yaml", SCENARIO)
    for args, needle in ((["--slo", "ttft_p99<=1 s s"], "ttft_p99<=1 s s"),
                         ([], "at least one SLO"),
                         (["--slo", "ttft_p99<=1s", "--compare", "fancy"], "--compare"),
                         (["--slo", "ttft_p99<=1s", "--step-duration", "0"], "--step-duration")):
        p = subprocess.run([*CLI, "plan", str(scen), *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and needle in p.stderr, (args, p.stderr)
    naive = write(tmp_path, "naive.yaml", "naive: {rate: 5, input_tokens: 10, output_tokens: 5}\nduration: 5\n")
    p = subprocess.run([*CLI, "plan", str(naive), "--slo", "ttft_p99<=1s", "--compare", "naive"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "realistic scenario" in p.stderr


@pytest.mark.parametrize(("step_rate", "sweep"), [(1.0, False), (8.0, False), (1.0, True)])
def test_a_plan_against_an_endpoint_refusing_every_request_stops_at_its_first_step(tmp_path: Path, step_rate: float,
                                                                                    sweep: bool) -> None:
    """Every request answered 404 (a wrong --model): no capacity can be measured, so the plan ends
    at its first step with one line (exit 2) naming the code and the server's message, instead of
    a search of "saturated" steps and "max sustainable rate: none" with exit 0. Whether the step
    has fewer than 20 requests (all of them refused) or more (the run's own stop after 20); a
    concurrency sweep (`--concurrency`) alike, at its first level."""
    naive = write(tmp_path, "naive.yaml", f"naive: {{rate: {step_rate}, input_tokens: 10, output_tokens: 5}}\n"
                                           "duration: 5\n")
    with answering([404]) as url:
        p = subprocess.run([*CLI, "plan", str(naive), "--slo", "ttft_p99<=1s", "--endpoint", url, "--model", "m",
                            "--step-duration", "4", "--warmup", "0", "--max-steps", "3",
                            *(["--concurrency", "1,2"] if sweep else [])],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    first = "sweep: concurrency 1: " if sweep else "plan step 1 (scale 1): "
    assert first in p.stderr and "failed with HTTP 404 (" in p.stderr, p.stderr
    assert "refused with 404" in p.stderr and "step 2" not in p.stderr + p.stdout
    assert "concurrency 2" not in p.stderr + p.stdout


def _plan_against(handler: Callable[..., Any], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    """`plan` (two 2 s steps of 4 req/s, 5 output tokens) against an aiohttp `/v1/completions`
    handler on 127.0.0.1; the process and its capacity document."""
    from aiohttp import web
    from test_security import ThreadServer

    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    naive = write(tmp_path, "naive.yaml", "naive: {rate: 4, input_tokens: 10, output_tokens: 5}\nduration: 5\n")
    srv = ThreadServer(app)
    try:
        p = subprocess.run([*CLI, "plan", str(naive), "--slo", "ttft_p99<=1s", "--endpoint", f"http://127.0.0.1:{srv.port}",
                            "--model", "m", "--api", "completions", "--step-duration", "2", "--warmup", "0", "--max-steps", "2",
                            "-o", str(tmp_path / "cap.json")], capture_output=True, text=True, timeout=120)
    finally:
        srv.stop()
    assert p.returncode == 0, p.stderr
    return p, json.loads((tmp_path / "cap.json").read_text())


async def _stream(request: Any, tokens: int) -> Any:
    from aiohttp import web

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for _ in range(tokens):
        await resp.write(b'data: {"choices":[{"index":0,"text":" a"}]}\n\n')
    await resp.write(b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":%d}}\n\ndata: [DONE]\n\n'
                     % tokens)
    await resp.write_eof()
    return resp


def test_a_plan_on_answers_shorter_than_asked_says_so(tmp_path: Path) -> None:
    """An endpoint that stops after one token whatever max_tokens says (a server ignoring forced
    lengths) served every step "well": the plan now warns that its capacity was measured on 20 %
    of the output asked, and each step's JSON carries that share."""
    async def one_token(request: Any) -> Any:
        await request.read()
        return await _stream(request, 1)

    p, doc = _plan_against(one_token, tmp_path)
    warn = [x for x in p.stderr.splitlines() if "WARNING" in x and "output tokens asked" in x]
    assert len(warn) == 1 and "carried 20% of the output" in warn[0], p.stderr
    steps = doc["plan"]["steps"]
    assert steps and all(abs(s["answered_token_share"] - 0.2) < 1e-9 for s in steps), steps


def test_a_plan_step_says_which_requests_failed(tmp_path: Path) -> None:
    """Every other request answered HTTP 500: the step line names the failures (a failing server
    is not a saturated one) and the step's JSON counts them by status."""
    import itertools

    from aiohttp import web

    n = itertools.count()

    async def every_other_fails(request: Any) -> Any:
        await request.read()
        if next(n) % 2:
            return web.json_response({"error": {"message": "boom"}}, status=500)
        return await _stream(request, 5)

    p, doc = _plan_against(every_other_fails, tmp_path)
    step = [x for x in p.stderr.splitlines() if x.startswith("plan scenario step 1:")]
    assert len(step) == 1 and "http_error" in step[0].split("failed:")[1], p.stderr
    errors = doc["plan"]["steps"][0]["errors"]
    assert set(errors) == {"http_error"} and errors["http_error"] >= 1, errors


def test_an_interrupted_plan_keeps_the_steps_it_ran(tmp_path: Path) -> None:
    """Ctrl-C after the first step (hours in, against a real endpoint): it exited 130 and wrote
    nothing. Now the capacity file holds the finished steps, marked interrupted."""
    from test_dispatch_fixtures import interrupt_when

    out, err = tmp_path / "cap.json", tmp_path / "err"
    with open(err, "wb") as e:
        p = subprocess.Popen([sys.executable, "-m", "servegen_load", "plan", str(write(tmp_path, "s.yaml", SCENARIO)),
                              "--slo", "ttft_p99<=2s", "--clock", "real", "--step-duration", "3", "--warmup", "1",
                              "-o", str(out)], stdout=subprocess.DEVNULL, stderr=e)
    assert interrupt_when(p, lambda: "step 1:" in err.read_text(), "the first step", 120) == 130
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and doc["plan"]["interrupted"] is True
    assert len(doc["plan"]["steps"]) >= 1 and doc["plan"]["capacity"]["converged"] is False
    assert "plan interrupted after" in err.read_text()


def test_a_short_step_with_a_burst_at_its_end_is_not_saturated() -> None:
    """13 requests in a 10 s window at TTFT 0.17 s, three of them due at 11.89 s (first token at
    12.06 s, after the window): offered by schedule, served by first token, it read 10 of 13 and
    SATURATED, and the plan's capacity came out 9x low. A server that falls behind still is."""
    from types import SimpleNamespace

    from servegen_load.capacity import Step, window_rates

    def step(sched: np.ndarray, ttft: np.ndarray) -> Step:
        cols = {"scheduled": sched, "first_token": sched + ttft, "last_token": sched + ttft + 0.5,
                "status": np.array(["ok"] * sched.size, dtype=object)}
        w = window_rates(SimpleNamespace(cols=cols), 2.0, 12.0)
        return Step(1, 1.0, 1.3, w.offered, w.served, w.completion, w.requests, [], 0.0, due_rate=w.due, window=10.0,
                    ttft_growth=w.growth, backlog=w.backlog)

    sched = np.concatenate([np.linspace(1.0, 11.0, 11), [11.89, 11.89, 11.89]])
    calm = step(sched, np.full(sched.size, 0.17))
    assert calm.served_rate < 0.92 * calm.offered_rate  # what the old test read
    assert not calm.saturated
    busy = np.linspace(0.0, 12.0, 121)  # 10 req/s offered, served one every 0.2 s: falling behind
    behind = step(busy, np.maximum(0.0, np.arange(busy.size) * 0.2 - busy) + 0.05)
    assert behind.saturated


def test_a_burst_whose_first_tokens_fall_just_after_the_window_is_no_saturation() -> None:
    """An 8 s window at 6 req/s, then 12 requests at once 0.3 s before its end, served in 0.35 s:
    by count 48 of 60 due were served (80 %), so `plan --step-duration 8 --warmup 2` called light
    steps saturated (9 req/s, TTFT p99 375 ms) and asked for 480 replicas where 25 do. The waiting
    line empties late in the window as often as early: no backlog."""
    from types import SimpleNamespace

    from servegen_load.capacity import Step, window_rates

    sched = np.concatenate([np.arange(0.0, 10.0, 1 / 6), np.full(12, 9.7)])
    ttft = np.where(sched == 9.7, 0.35, 0.05)
    cols = {"scheduled": sched, "first_token": sched + ttft, "last_token": sched + ttft + 1.0,
            "status": np.array(["ok"] * sched.size, dtype=object)}
    w = window_rates(SimpleNamespace(cols=cols), 2.0, 10.0)
    st = Step(1, 1.0, 9.0, w.offered, w.served, w.completion, w.requests, [], 0.0, due_rate=w.due, window=8.0,
              ttft_growth=w.growth, backlog=w.backlog)
    assert st.served_rate < 0.92 * w.due and (w.due - st.served_rate) * 8.0 >= 3, w  # what the count rule read
    assert w.backlog == 0 and not st.saturated


def test_a_backlog_hidden_by_a_quiet_stretch_one_ttft_back_is_still_saturation() -> None:
    """Loose SLOs: a step offered more than the server takes (27 req/s against 24 after a quieter
    start), TTFT growing through the window. Judged against the requests due one median TTFT back
    (the quieter stretch) it passed, and the plan printed a max sustainable rate above its knee."""
    from types import SimpleNamespace

    from servegen_load.capacity import Step, window_rates

    sched = np.concatenate([np.arange(0.0, 6.0, 1 / 12), np.arange(6.0, 20.0, 1 / 27)])  # 12 req/s, then 27
    served_at = sched + 0.3
    for i in range(1, served_at.size):  # the server takes one request every 1/24 s at most
        served_at[i] = max(served_at[i], served_at[i - 1] + 1 / 24)
    cols = {"scheduled": sched, "first_token": served_at, "last_token": served_at + 2.0,
            "status": np.array(["ok"] * sched.size, dtype=object)}
    w = window_rates(SimpleNamespace(cols=cols), 2.0, 20.0)
    st = Step(1, 1.0, 26.0, w.offered, w.served, w.completion, w.requests, [], 0.0, due_rate=w.due, window=18.0,
              ttft_growth=w.growth, backlog=w.backlog)
    assert st.served_rate >= 0.92 * w.due, w  # what the due rule alone read: keeping up
    assert st.served_rate < 0.92 * st.offered_rate and w.growth > 0.5, w
    assert st.saturated


def test_the_knee_is_never_below_a_rate_served_without_falling_behind() -> None:
    from servegen_load.capacity import knee_of

    def st(offered: float, served: float) -> Step:
        return Step(1, offered / 10, offered, offered, served, served, 100, [], 1.0, due_rate=offered, window=30.0)

    steps = [st(40.0, 39.8), st(56.0, 55.9), st(70.0, 52.0), st(90.0, 49.0)]  # served drops past the knee
    assert [x.saturated for x in steps] == [False, False, True, True]
    assert knee_of(steps) == pytest.approx(55.9)
    assert knee_of(steps[:2]) is None
    assert knee_of([st(70.0, 60.0), st(90.0, 62.0)]) == pytest.approx(61.0)


def test_plan_searches_against_the_scenarios_own_slos(tmp_path: Path) -> None:
    """A scenario's `slo:` is what `run` checks; `plan` on the same file searches against it
    (with `--slo` adding more), not refuses it for want of `--slo`."""
    scen = write(tmp_path, "lang.yaml", SCENARIO + "slo: ttft_p99<=1s\n")
    out = tmp_path / "plan.json"
    p = subprocess.run([*CLI, "plan", str(scen), "--slo", "tpot_p50<=1s", "--sim-time-scale", "0.5", "--clock", "virtual",
                        "--step-duration", "3", "--warmup", "1", "--max-steps", "2", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    steps = json.loads(out.read_text())["plan"]["steps"]
    assert steps and all({"ttft_p99", "tpot_p50"} <= set(s["metrics"]) for s in steps)
