"""Closed-loop concurrency sweep (`plan SCENARIO --concurrency 1,2,4,8`): what vllm bench's
`--max-concurrency`, GuideLLM's `concurrent` and AIPerf's concurrency modes measure.

At level N the scenario's requests (their lengths, content, categories and clients; not their
arrival times) are sent back to back keeping exactly N in flight: each request is due at t = 0
and the dispatcher's `--max-concurrency N` slot gate releases the next one when one ends, so the
load adapts to the server (closed loop), unlike `run` and the capacity search (open loop: the
load is whatever the workload says). A level sends `rounds x N` requests (at least
`MIN_REQUESTS`): the first requests of the scenario, the same prefix at every level, each level
with fresh request ids so no prompt hits a prefix cache left by an earlier level.

Per level: throughput (ok requests and output tokens per second of the level's span), TTFT, TPOT
and E2E p50/p99 measured from the send (queue time for a slot is the closed loop's own pacing,
not latency), errors, and the plan's SLO checks (`slo.evaluate`; user-felt metrics include the
slot wait and mean little here). The throughput curve flattens at the server's saturation: the
knee of a closed loop is the smallest level within 5% of the best throughput (`KNEE_SHARE`).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import InputError
from .requests import Request
from .slo import SLOSet

SWEEP_FORMAT = "servegen-load/sweep/v1"
MIN_REQUESTS = 16
DEFAULT_ROUNDS = 8
KNEE_SHARE = 0.95
MAX_LEVEL = 4096


def parse_levels(text: str) -> list[int]:
    """`1,2,4,8` -> [1, 2, 4, 8] (distinct, increasing); InputError naming --concurrency otherwise."""
    try:
        levels = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"expected levels like 1,2,4,8, got {text!r}", field="--concurrency") from None
    if not levels or any(not 1 <= n <= MAX_LEVEL for n in levels):
        raise InputError(f"expected levels in 1..{MAX_LEVEL}, like 1,2,4,8, got {text!r}", field="--concurrency")
    return sorted(set(levels))


def _closed_loop(requests: Iterator[Request], n: int, tag: str) -> Iterator[Request]:
    for r in itertools.islice(requests, n):
        r.t = 0.0
        r.id = f"{tag}/{r.id}"
        r.think_time = None
        yield r


def knee(levels: list[dict[str, Any]]) -> int | None:
    """The smallest level whose throughput is within `KNEE_SHARE` of the best level's."""
    best = max((lv["requests_per_s"] or 0.0 for lv in levels), default=0.0)
    if best <= 0:
        return None
    return next(lv["concurrency"] for lv in levels if (lv["requests_per_s"] or 0.0) >= KNEE_SHARE * best)


def concurrency_sweep(scenario_path: str, levels: list[int], slos: SLOSet, opts: Any,
                      rounds: int = DEFAULT_ROUNDS) -> dict[str, Any]:
    """Run every level against the plan's endpoint (the embedded simulator by default); the
    sweep document (`SWEEP_FORMAT`)."""
    from .capacity import Stepper, stop_if_refused
    from .dispatch.limits import Timeouts
    from .dispatch.runner import GIVE_UP_AFTER, RunConfig, run
    from .metrics import stats
    from .results import read_results
    from .run.target import fresh_payload
    from .scenario import load_scenario
    from .slo import evaluate
    from .workload.compose import iter_scenario_requests

    if rounds < 1:
        raise InputError("expected at least 1 round", field="--concurrency-rounds")
    scenario = load_scenario(scenario_path)
    out_levels: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="servegen-sweep-") as tmp:
        workdir = Path(opts.results_dir) if opts.results_dir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with Stepper(scenario, slos, opts, "sweep", workdir) as st:
            for i, n in enumerate(levels, 1):
                count = max(MIN_REQUESTS, rounds * n)
                out = workdir / f"sweep-c{n}.jsonl"
                cfg = RunConfig(endpoint=st.endpoint, model=st.model, output=out, api=opts.api,
                                api_key=opts.api_key, payload=fresh_payload(st.target.payload), max_concurrency=n,
                                progress="off", timeouts=Timeouts(10.0, 600.0, 1800.0),
                                header={"source": scenario_path, "source_kind": "concurrency-sweep",
                                        "content": st.target.content, "concurrency": n},
                                give_up_after=GIVE_UP_AFTER)
                t = time.perf_counter()
                outcome = run(_closed_loop(iter_scenario_requests(scenario), count, f"c{i}"), cfg)
                res = read_results(out)
                stop_if_refused(f"sweep: concurrency {n}", res, outcome.gave_up)
                if outcome.interrupted:
                    raise KeyboardInterrupt
                s = stats.summary(res, lag_threshold=opts.lag_threshold)
                lat, tp = s.latency, s.throughput
                level = {"concurrency": n, "requests": res.n, "ok": s.requests.ok,
                         "errors": s.requests.errors, "requests_per_s": tp.requests_per_s,
                         "output_tokens_per_s": tp.output_tokens_per_s,
                         **{f"{m}_{p}": lat[m].stat(p) for m in ("ttft", "tpot", "e2e") for p in ("p50", "p99")},
                         "checks": [c.to_dict() for c in evaluate(res, slos, lag_threshold=opts.lag_threshold)],
                         "seconds": time.perf_counter() - t}
                level["passed"] = all(c["passed"] for c in level["checks"]) and level["errors"] == 0
                out_levels.append(level)
                opts.log(f"sweep: concurrency {n}: {level['ok']} ok of {res.n}, "
                         f"{_f(level['requests_per_s'])} req/s, TTFT p50 {_ms(level['ttft_p50'])} ms, "
                         f"TPOT p50 {_ms(level['tpot_p50'])} ms [{level['seconds']:.0f} s]")
    return {"format": SWEEP_FORMAT, "scenario": scenario_path, "slo": slos.to_dict(),
            "endpoint": opts.endpoint, "preset": None if opts.endpoint else (opts.preset or "llama3-8b-h100"),
            "rounds": rounds, "levels": out_levels, "knee_concurrency": knee(out_levels),
            "max_passing_concurrency": max((lv["concurrency"] for lv in out_levels if lv["passed"]), default=None)}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.1f}"


def render_sweep(doc: dict[str, Any]) -> str:
    """The sweep as a table: one line per level."""
    head = ["concurrency", "requests", "errors", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms",
            "TPOT p50 ms", "TPOT p99 ms", "E2E p50 ms", "E2E p99 ms", "SLOs"]
    rows = [[str(lv["concurrency"]), str(lv["requests"]), str(lv["errors"]), _f(lv["requests_per_s"]),
             _f(lv["output_tokens_per_s"]), _ms(lv["ttft_p50"]), _ms(lv["ttft_p99"]), _ms(lv["tpot_p50"]),
             _ms(lv["tpot_p99"]), _ms(lv["e2e_p50"]), _ms(lv["e2e_p99"]),
             ("PASS" if lv["passed"] else "FAIL") if lv["checks"] or lv["errors"] else "-"]
            for lv in doc["levels"]]
    width = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = [f"closed-loop concurrency sweep of {doc['scenario']} ({doc['rounds']} rounds a level)",
             "  " + "  ".join(h.rjust(w) for h, w in zip(head, width, strict=True))]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, width, strict=True)) for r in rows]
    k = doc["knee_concurrency"]
    lines.append(f"knee: concurrency {k} (throughput within {KNEE_SHARE * 100:g}% of the best level)"
                 if k is not None else "knee: - (no level completed a request)")
    if doc["slo"]["slo"]:
        m = doc["max_passing_concurrency"]
        lines.append(f"largest concurrency meeting every SLO: {'-' if m is None else m}")
    return "\n".join(lines)
