"""`calibrate` (a fitted twin of an endpoint) and `plan` in virtual time.

- Against the embedded simulator running a KNOWN preset, `calibrate --endpoint` must recover its
  step costs (within 20%; the probe runs in real time on a shared 2-core host, so host noise
  enters every timing) and its batch limit exactly, and write a preset `sim` and `plan` load.
- `plan` in virtual time (the engine model driven by the scenario's requests, no sockets) must
  agree with the real-time plan against the simulator serving the same preset.
- One small real-server run: `calibrate` against llama.cpp writes a loadable preset whose limits
  are llama.cpp's own (slots, context) and whose step costs are positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_dispatch_fixtures import answering

from servegen_load.sim.presets import get_preset
from servegen_load.sim.process import SimProcess

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]

KNOWN = {
    "base": "tiny-cpu", "model": "known", "max_num_seqs": 8, "max_num_batched_tokens": 2048,
    "kv_cache_tokens": 65536, "max_model_len": 4096, "step_base_s": 0.008, "prefill_token_s": 2.0e-5,
    "decode_seq_s": 5.0e-4, "context_token_s": 1.0e-6,
}
SCENARIO = """\
pool: m-large
start: "20:00"
duration: 60
rate: 20
clients: {cv: [0, 1.5], output_mean: [1, 150]}
seed: 1
"""


def _calibrate_sim(tmp: Path, preset: dict, steady: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """One probe round against the simulator serving `preset`: (the command, the fitted preset, the probe dir)."""
    known = tmp / "known.yaml"
    known.write_text(yaml.safe_dump(preset))
    out, probe = tmp / "fitted.yaml", tmp / "probe"
    with SimProcess(str(known)) as sim:
        p = subprocess.run([*CLI, "calibrate", "--endpoint", sim.url, "--server-family", "sim",
                            "--probe-dir", str(probe), "--probe-steady", steady, "--rounds", "1", "-o", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return p, out, probe


def test_calibrate_recovers_a_known_preset(tmp_path: Path) -> None:
    p, out, probe = _calibrate_sim(tmp_path, KNOWN, "8")
    # the steady phase ran open-loop at 60 % of the saturation rate the short phases predicted
    # (about 35 requests in 8 s here), and its mean step set the scale
    (steady,) = probe.glob("*-steady.jsonl")
    sent = [json.loads(line) for line in steady.read_text().splitlines()[1:]]
    assert 15 <= len(sent) <= 70 and all(r["status"] == "ok" for r in sent), len(sent)
    assert "steady" in p.stderr and "step costs x" in p.stdout and "steady phase's step rows" in p.stdout
    fitted = get_preset(str(out))  # loads as a preset (the calibration block is ignored)
    for name in ("step_base_s", "prefill_token_s", "decode_seq_s", "context_token_s"):
        assert getattr(fitted, name) == pytest.approx(KNOWN[name], rel=0.20), (name, p.stdout)
    assert fitted.prefill_attention_s == 0 and fitted.batch_context_s == 0, p.stdout  # not in this engine
    assert fitted.max_num_seqs == 8, p.stdout  # measured: 16 in flight, never more than 8 decoding
    assert fitted.max_model_len == 4096 and fitted.block_size == 16 and fitted.prefix_cache_tokens > 0
    doc = yaml.safe_load(out.read_text())
    cal = doc["calibration"]
    assert cal["stderr"]["step_base_s"] > 0 and cal["residuals"]["step"]["rows"] > 100
    assert 0.9 <= cal["mean_scale"] <= 1.3  # the simulator keeps its step deadlines: a short tail
    assert "step base t0" in p.stdout and "residuals" in p.stdout and "+-" in p.stdout
    # the kept probe refits offline to the same model
    files = sorted(str(f) for f in probe.glob("*.jsonl"))
    assert len(files) >= 10
    again = tmp_path / "again.yaml"
    q = subprocess.run([*CLI, "calibrate", "--from", *files, "-o", str(again)], capture_output=True, text=True,
                       timeout=120)
    assert q.returncode == 0, q.stderr[-2000:]
    assert get_preset(str(again)).step_base_s == pytest.approx(fitted.step_base_s, rel=0.05)


def test_a_limit_the_probe_never_reached_is_not_invented_and_from_keeps_the_server_limits(tmp_path: Path) -> None:
    """A server allowing 1,024 sequences: the probe's steady phase had a few more requests in flight
    than decoding (prompts in prefill), which was taken for a limit (max_num_seqs 39: the twin's
    capacity 24 % high). And `--from` the kept probe refitted with the base preset's context
    (65,536 where the server said 4,096)."""
    p, out, probe = _calibrate_sim(tmp_path, {**KNOWN, "max_num_seqs": 1024, "kv_cache_tokens": 450_000}, "10")
    fitted = get_preset(str(out))
    assert fitted.max_num_seqs >= 256 and "not reached" in p.stdout, p.stdout
    again = tmp_path / "again.yaml"
    q = subprocess.run([*CLI, "calibrate", "--from", str(probe), "-o", str(again)], capture_output=True, text=True,
                       timeout=120)
    assert q.returncode == 0, q.stderr[-2000:]
    refit = get_preset(str(again))
    assert (refit.max_model_len, refit.kv_cache_tokens) == (fitted.max_model_len, fitted.kv_cache_tokens) == \
        (4096, fitted.kv_cache_tokens), (refit, fitted)


def test_check_replays_a_scenario_on_the_endpoint_and_on_the_twin(tmp_path: Path) -> None:
    """`calibrate --check` against the simulator serving KNOWN, with KNOWN itself as the twin: the
    predicted latencies agree with the measured ones, and the steps line says the measured steps
    match the twin's step model (so a real mismatch can be told from a host that changed)."""
    known = tmp_path / "known.yaml"
    known.write_text(yaml.safe_dump(KNOWN))
    scen = tmp_path / "held-out.yaml"
    scen.write_text('pool: m-large\nstart: "20:00"\nduration: 20\nrate: 1.5\nseed: 3\n')
    out, measured = tmp_path / "check.json", tmp_path / "measured.jsonl"
    with SimProcess(str(known)) as sim:
        p = subprocess.run([*CLI, "calibrate", "--check", "--preset", str(known), "--endpoint", sim.url,
                            "--server-family", "sim", str(scen), "--results", str(measured), "--json", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert measured.exists() and "ttft_p50" in p.stdout and "decode steps against the twin" in p.stdout
    assert abs(doc["error"]["ttft"]["50"]) < 0.25, p.stdout  # the twin has no HTTP overhead here (o = 0)
    for metric in ("tpot", "e2e"):  # the simulator keeps its step deadlines: steps are the model's
        assert abs(doc["error"][metric]["50"]) < 0.10 and abs(doc["error"][metric]["90"]) < 0.10, (metric, p.stdout)
    assert doc["steps"]["rows"] > 100 and abs(doc["steps"]["median"]) < 0.10, p.stdout


def test_calibrate_input_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "servegen-load/results/v1"}\n')
    for args, needle in (([], "either --endpoint"),
                         (["--from", str(bad)], "usable timings"),
                         (["--check", "--endpoint", "http://127.0.0.1:9"], "--check needs"),
                         (["--endpoint", "http://127.0.0.1:9", "--probe-steady", "-1"], "--probe-steady"),
                         (["--from", str(tmp_path / "missing.jsonl")], "missing.jsonl")):
        p = subprocess.run([*CLI, "calibrate", *args, "-o", str(tmp_path / "x.yaml")], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_calibrate_against_an_endpoint_refusing_every_request_names_why(tmp_path: Path) -> None:
    """A wrong --model: every probe request is a 404. Calibrate stops after its first phase with
    the code and the server's message (exit 2), not minutes later with "0 usable timings"."""
    with answering([404]) as url:
        p = subprocess.run([*CLI, "calibrate", "--endpoint", url, "--model", "nosuch", "-o", str(tmp_path / "x.yaml")],
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "calibrate: probe prefill: all " in p.stderr, p.stderr
    assert "failed with HTTP 404 ({\"object\": \"error\", \"message\": \"refused with 404 (sent: " in p.stderr, p.stderr
    assert "probe burst" not in p.stderr and "usable timings" not in p.stderr, p.stderr


def test_virtual_plan_agrees_with_the_real_time_plan(tmp_path: Path) -> None:
    scen = tmp_path / "lang.yaml"
    scen.write_text(SCENARIO)
    common = ["plan", str(scen), "--slo", "ttft_p99<=1s", "--sim-time-scale", "0.5", "--step-duration", "3",
              "--warmup", "1", "--tolerance", "20%", "--start-scale", "2", "--max-steps", "4"]
    docs = {}
    for clock in ("virtual", "real"):
        out = tmp_path / f"{clock}.json"
        p = subprocess.run([*CLI, *common, "--clock", clock, "-o", str(out)], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        docs[clock] = json.loads(out.read_text())
    v, r = docs["virtual"], docs["real"]
    assert v["options"]["clock"] == "virtual" and r["options"]["clock"] == "real"
    assert v["plan"]["simulator"]["clock"] == "virtual"
    # the same scaled requests, the same SLO verdict rule: the knee and capacity agree
    assert v["plan"]["knee"]["reached"] and r["plan"]["knee"]["reached"]
    assert v["plan"]["knee"]["rate"] == pytest.approx(r["plan"]["knee"]["rate"], rel=0.10)
    assert v["plan"]["capacity"]["rate"] == pytest.approx(r["plan"]["capacity"]["rate"], rel=0.20)
    # virtual time: every step simulated, none slept
    sim_s = v["speed"]["simulated_seconds"]
    assert sim_s == pytest.approx(len(v["plan"]["steps"]) * 4.0)
    assert v["speed"]["wall_seconds"] < sim_s


@pytest.mark.timeout(300)
def test_calibrate_real_llamacpp_writes_a_loadable_preset(llamacpp_server, tmp_path: Path) -> None:
    out, probe = tmp_path / "llama.yaml", tmp_path / "probe"
    p = subprocess.run([*CLI, "calibrate", "--endpoint", llamacpp_server.url, "--server-family", "llamacpp",
                        "--probe-concurrency", "10", "--probe-output", "16", "--probe-max-prompt", "512",
                        "--probe-steady", "5", "--rounds", "2", "--probe-dir", str(probe), "-o", str(out)],
                       capture_output=True, text=True, timeout=280)
    assert p.returncode == 0, p.stderr[-3000:]
    # two probes, each fitted; the slower one kept (the lower of the middle two)
    rounds = yaml.safe_load(out.read_text())["calibration"]["rounds"]
    assert rounds["saturation_rates"][rounds["kept"] - 1] == min(rounds["saturation_rates"]), rounds
    assert "round 2 of 2" in p.stderr and "kept round" in p.stdout
    again = tmp_path / "again.yaml"  # the kept --probe-dir refits round by round
    q = subprocess.run([*CLI, "calibrate", "--from", str(probe), "-o", str(again)], capture_output=True, text=True,
                       timeout=120)
    assert q.returncode == 0, q.stderr[-2000:]
    assert len(yaml.safe_load(again.read_text())["calibration"]["rounds"]["saturation_rates"]) == 2
    fitted = get_preset(str(out))
    assert fitted.max_num_seqs == 8 and fitted.max_model_len > 0  # llama.cpp /props: --parallel 8
    assert fitted.prefill_token_s + fitted.prefill_attention_s > 0
    assert fitted.decode_seq_s + fitted.context_token_s + fitted.batch_context_s > 0
    assert fitted.prefix_cache_tokens > 0 and fitted.block_size == 1  # llama.cpp reuses any prefix length
    assert fitted.saturation_rate(500, 50) > 0
    # the simulator serves it
    with SimProcess(str(out)) as sim:
        assert sim.stats()["preset"] == str(out)


def test_virtual_run_models_prefix_caching_and_session_turns() -> None:
    from servegen_load.requests import Request
    from servegen_load.sim.virtual import simulate_requests

    params = get_preset("tiny-cpu")
    reqs = [Request("a", 0.0, "c", "language", 1200, 10, prefix=[7, 8]),
            Request("b", 1.0, "c", "language", 1200, 10, prefix=[7, 8]),
            Request("s0", 0.0, "u", "language", 100, 50, session="s", turn=0),
            Request("s1", 0.5, "u", "language", 100, 5, session="s", turn=1, think_time=2.0),
            Request("huge", 0.0, "c", "language", 10**6, 5)]
    res = simulate_requests(params, reqs, chunks=True)
    c = res.cols
    i = {name: k for k, name in enumerate(c["id"])}
    assert c["cached_tokens"][i["a"]] == 0 and c["cached_tokens"][i["b"]] == 1024  # two shared 512-token blocks
    assert c["first_token"][i["b"]] - c["sent"][i["b"]] < c["first_token"][i["a"]] - c["sent"][i["a"]]
    # turn 1 leaves think_time after turn 0 ended, not at its own (earlier) time
    assert c["scheduled"][i["s1"]] == pytest.approx(c["last_token"][i["s0"]] + 2.0)
    assert c["status"][i["huge"]] == "http_error" and c["http_status"][i["huge"]] == 400
    assert res.chunk_counts[i["s0"]] == 50 and c["completion_tokens"][i["s0"]] == 50
