"""Twin fidelity on real engines: calibrate, plan in virtual time, check against the real server.

    SERVEGEN_E2E_DIR=~/.cache/servegen-load/e2e python benchmarks/twin.py [--servers llamacpp,vllm]
        [--calibrations 3] [--rounds 3] [--step-duration 30] [--check-seconds 120] [--check-repeats 2] [-o twin.json]

For each real server (llama.cpp via xllamacpp, vLLM CPU; tiny random models, started as the tests
start them, `tests/real_servers.py`), through the CLI a user runs:

1. `calibrate --endpoint --rounds R` N times (stability: each parameter's mean and spread over the N);
2. `plan SCENARIO --compare naive` against the real server in real time, and against each twin
   in virtual time (capacity, knee, naive over-statement, replicas for `--peak`; wall seconds);
3. the realistic scenario at 70% of the real knee (or of the real capacity when no step
   saturated), a seed the plans did not use: measured on the server (`calibrate --check`),
   predicted by every twin: TTFT/TPOT/E2E p50/p90/p99 and their errors; then measured on the
   server once more (`--check-repeats`): how far the server differs from itself on the very same
   requests, the floor under any twin's error on this host;
4. speed: a 14-step search over 1 h of pool time against the first twin (virtual vs real time).

Everything runs on this (shared, 2-core) machine: the server, the load generator and, right now,
other work. Timings are noisy; rerun when the machine is quiet. Results go to `-o` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
SLOS = ["--slo", "ttft_p90<=2s", "--slo", "tpot_p90<=100ms"]
PARAMS = ("request_overhead_s", "step_base_s", "prefill_token_s", "decode_seq_s", "context_token_s",
          "prefill_attention_s", "batch_context_s", "multi_context_s")


def scenario(path: Path, rate: float, duration: float, seed: int) -> Path:
    path.write_text(f'pool: m-large\nstart: "20:00"\nduration: {duration:g}\nrate: {rate:.6g}\nseed: {seed}\n')
    return path


def cli(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"servegen-load {' '.join(args[:2])} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def start(name: str) -> Any:
    import real_servers as rs

    fixture = rs.llamacpp_server if name == "llamacpp" else rs.vllm_server
    gen = fixture.__wrapped__()  # type: ignore[attr-defined]  # the fixture's own start/stop
    server = next(gen)
    return server, gen


def plan_doc(path: Path) -> dict[str, Any]:
    d = json.loads(path.read_text())
    comp = d.get("comparison") or {}
    return {"capacity": d["plan"]["capacity"]["rate"], "knee": d["plan"]["knee"]["rate"],
            "naive_capacity": comp.get("naive_rate"), "ratio": comp.get("ratio"),
            "replicas": (d.get("replicas") or {}).get("replicas"), "naive_replicas": comp.get("naive_replicas"),
            "seconds": d["seconds"]}


def one_server(name: str, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    from servegen_load.calibrate.command import percentiles
    from servegen_load.results import read_results
    from servegen_load.sim.presets import get_preset
    from servegen_load.sim.virtual import simulate_requests
    from servegen_load.workload.compose import iter_scenario_requests

    out: dict[str, Any] = {"server": name}
    t0 = time.perf_counter()
    server, gen = start(name)
    out["start_seconds"] = time.perf_counter() - t0
    fam = ["--server-family", server.family]
    try:
        # 1. calibrations
        presets = []
        for i in range(a.calibrations):
            p = work / f"{name}-cal{i + 1}.yaml"
            t = time.perf_counter()
            r = cli("calibrate", "--endpoint", server.url, *fam, "--probe-concurrency", str(a.probe_concurrency),
                    "--rounds", str(a.rounds), "-o", str(p))
            print(f"\n[{name}] calibration {i + 1} ({time.perf_counter() - t:.0f} s)\n{r.stdout}", flush=True)
            presets.append(p)
        vals = {k: [getattr(get_preset(str(p)), k) for p in presets] for k in PARAMS}
        vals["max_num_seqs"] = [get_preset(str(p)).max_num_seqs for p in presets]
        out["calibrations"] = vals
        import yaml

        terms = [(yaml.safe_load(p.read_text()).get("calibration") or {}).get("terms") for p in presets]
        out["terms"] = terms
        print(f"[{name}] terms kept by each calibration: "
              + "; ".join(",".join(t or ["?"]) for t in terms)
              + (" (the same)" if all(t == terms[0] for t in terms) else " (DIFFERENT)"))
        print(f"[{name}] stability over {len(presets)} calibrations (mean, min..max, spread = (max-min)/mean)")
        for k, v in vals.items():
            m = statistics.mean(v)
            spread = (max(v) - min(v)) / m if m else 0.0
            print(f"  {k:22s} {m:12.4g}  {min(v):10.4g} .. {max(v):10.4g}  {spread:6.1%}")
        # 2. plans: real time against the server, virtual time against each twin
        plan_scen = scenario(work / f"{name}-plan.yaml", a.rate, 3600, 1)
        common = [str(plan_scen), *SLOS, "--step-duration", str(a.step_duration), "--warmup", str(a.warmup),
                  "--tolerance", "10%", "--max-steps", str(a.max_steps), "--compare", "naive",
                  "--replicas-for", str(a.peak), "--api", "completions"]
        real_json = work / f"{name}-plan-real.json"
        cli("plan", *common, "--endpoint", server.url, *fam, "-o", str(real_json))
        real = plan_doc(real_json)
        twins = []
        for i, p in enumerate(presets):
            j = work / f"{name}-plan-twin{i + 1}.json"
            cli("plan", *common, "--preset", str(p), "-o", str(j))
            twins.append(plan_doc(j))
        out["plan"] = {"real": real, "twins": twins}
        print(f"\n[{name}] plan, SLOs {' '.join(SLOS[1::2])}, peak {a.peak} req/s (+20%):")
        print(f"  {'':8s} {'capacity':>9s} {'knee':>7s} {'naive':>7s} {'naive/real':>10s} {'replicas':>9s} "
              f"{'naive repl.':>11s} {'seconds':>8s}")
        for label, d in [("real", real)] + [(f"twin{i + 1}", d) for i, d in enumerate(twins)]:
            print(f"  {label:8s} {_r(d['capacity']):>9s} {_r(d['knee']):>7s} {_r(d['naive_capacity']):>7s} "
                  f"{_x(d['ratio']):>10s} {d['replicas']!s:>9s} {d['naive_replicas']!s:>11s} {d['seconds']:8.1f}")
        for i, d in enumerate(twins):
            err = d["capacity"] / real["capacity"] - 1 if real["capacity"] else None
            print(f"  twin{i + 1} max sustainable rate error: {_p(err)}")
        # 3. fidelity at 70% of the real knee (capacity when none)
        ref = real["knee"] or real["capacity"]
        base_rate = a.rate
        frac_rate = 0.7 * ref  # offered req/s wanted; the scenario's rate field is its planned mean
        check_scen = scenario(work / f"{name}-check.yaml", frac_rate, a.check_seconds, 7)
        measured = work / f"{name}-measured.jsonl"
        chk = work / f"{name}-check.json"
        r = cli("calibrate", "--check", "--preset", str(presets[0]), "--endpoint", server.url, *fam,
                str(check_scen), "--results", str(measured), "--json", str(chk))
        print(f"\n[{name}] fidelity at {frac_rate:.3g} req/s (70% of the real {'knee' if real['knee'] else 'capacity'} "
              f"{ref:.3g}; scenario rate at scale 1 was {base_rate}):\n{r.stdout}")
        meas = percentiles(read_results(str(measured)))
        again = []
        for k in range(1, a.check_repeats):
            m2 = work / f"{name}-measured-{k + 1}.jsonl"
            cli("calibrate", "--check", "--preset", str(presets[0]), "--endpoint", server.url, *fam,
                str(check_scen), "--results", str(m2))
            again.append(percentiles(read_results(str(m2))))
        reqs = list(iter_scenario_requests(str(check_scen)))
        table = [_errors(percentiles(simulate_requests(get_preset(str(p)), reqs)), meas) for p in presets]
        floor = [_errors(r, meas) for r in again]
        out["fidelity"] = {"rate": frac_rate, "measured": meas, "errors": table, "real_again": floor}
        print(f"[{name}] prediction errors per calibration (predicted / measured - 1)"
              + (", and the server itself run again on the same requests (again / first - 1):" if floor else ":"))
        print(f"  {'metric':8s} " + " ".join(f"{f'twin{i + 1}':>8s}" for i in range(len(table)))
              + "".join(f" {f'real{i + 2}':>8s}" for i in range(len(floor))))
        for m in ("ttft", "tpot", "e2e"):
            for q in (50, 90, 99):
                print(f"  {m}_p{q:<3d} " + " ".join(f"{_p(t[m][q]):>8s}" for t in table)
                      + "".join(f" {_p(f[m][q]):>8s}" for f in floor))
        if floor:
            print(f"  mean |error|: twins {_mean_abs(table):.1%}, the server against itself {_mean_abs(floor):.1%}")
    finally:
        server.process.stop()
        gen.close()
    return out


def speed(preset: Path, work: Path) -> dict[str, Any]:
    scen = scenario(work / "speed.yaml", 1.0, 3600, 1)
    j = work / "speed.json"
    t = time.perf_counter()
    cli("plan", str(scen), *SLOS, "--preset", str(preset), "--step-duration", "3600", "--warmup", "0",
        "--tolerance", "0.1%", "--max-steps", "14", "-o", str(j))
    wall = time.perf_counter() - t
    d = json.loads(j.read_text())
    sim_s = d["speed"]["simulated_seconds"]
    print(f"\nspeed: {len(d['plan']['steps'])} steps over 1 h of m-large pool time each: {sim_s:,.0f} s of load "
          f"in {wall:.1f} s of wall time (CLI included) = {sim_s / wall:,.0f}x faster than real time")
    return {"steps": len(d["plan"]["steps"]), "simulated_seconds": sim_s, "wall_seconds": wall}


def _errors(got: dict[str, Any], meas: dict[str, Any]) -> dict[str, dict[int, float | None]]:
    """got / measured - 1 for TTFT/TPOT/E2E p50/p90/p99 (None where either is missing)."""
    return {m: {q: (got[m][q] / meas[m][q] - 1) if meas[m][q] and got[m][q] is not None else None
                for q in (50, 90, 99)} for m in ("ttft", "tpot", "e2e")}


def _mean_abs(tables: list[dict[str, dict[int, float | None]]]) -> float:
    return statistics.mean(abs(v) for t in tables for row in t.values() for v in row.values() if v is not None)


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _p(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="llamacpp,vllm")
    ap.add_argument("--calibrations", type=int, default=3)
    ap.add_argument("--probe-concurrency", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3, help="probes per calibration (`calibrate --rounds`)")
    ap.add_argument("--rate", type=float, default=1.0, help="the plan scenario's rate at scale 1 (req/s)")
    ap.add_argument("--step-duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--check-seconds", type=float, default=120.0)
    ap.add_argument("--check-repeats", type=int, default=2,
                    help="times the check runs on the real server (2+: its run-to-run spread is printed)")
    ap.add_argument("--peak", type=float, default=50.0, help="peak req/s to size replicas for")
    ap.add_argument("-o", "--output", default="twin.json")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the servers are stopped in `finally`
    os.environ.setdefault("SERVEGEN_E2E_DIR", str(Path.home() / ".cache/servegen-load/e2e"))
    doc: dict[str, Any] = {"args": vars(a), "load_average": os.getloadavg(), "servers": []}
    with tempfile.TemporaryDirectory(prefix="servegen-twin-") as tmp:
        work = Path(tmp)
        for name in a.servers.split(","):
            doc["servers"].append(one_server(name.strip(), a, work))
            Path(a.output).write_text(json.dumps(doc, indent=2, default=str))
        first = next(iter(sorted(work.glob("*-cal1.yaml"))), None)
        if first is not None:
            doc["speed"] = speed(first, work)
    doc["load_average_end"] = os.getloadavg()
    Path(a.output).write_text(json.dumps(doc, indent=2, default=str))
    print(f"\nload average at start {doc['load_average'][0]:.1f}, at end {doc['load_average_end'][0]:.1f} "
          f"(2 cores; above 2 means the timings above were shared with other work)")


if __name__ == "__main__":
    main()
