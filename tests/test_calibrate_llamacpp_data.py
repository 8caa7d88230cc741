"""A real llama.cpp probe and a real held-out run, kept as data (`tests/data/llamacpp/`).

Measured on this project's 2-core host against `shared/servers/xllamacpp_server.py` (tiny
model, `--parallel 8 --ctx 16384 --threads 1`; its log says `kv_unified = 'true'`):

- `probe.tar.gz`: the results files of one `calibrate --endpoint ... --server-family llamacpp`
  probe (73 s);
- `check-0.82.jsonl.gz`: `calibrate --check` of the shipped m-large pool at 20:00, 0.82 req/s for
  300 s (266 requests; TTFT p50 0.7 s, so queues form), run minutes later on the same server.

What they pin down: a prompt that arrives while other sequences decode reads their KV cells too
(the unified buffer), so sustained load costs far more than short bursts suggest. This probe's
short phases fitted the per-sequence layout slightly better (held-out error 20.6 % against
22.3 %), and the old selection kept it: its steady phase then ran 1.39 times the model, the
step costs were scaled up by that, and the twin still put this check's TTFT p99 53 % low. The
shared layout predicts the steady phase's time within 2 %; these tests fail on the old choice.
The same server run twice on one scenario differed by 7-17 % per percentile, so the bound
here is the host's noise plus a margin, not the issue's 9 %.

- `rounds.tar.gz`: two more probes of a fresh server of the same build, a session later: `slow/`
  ran in a slow spell of the host (every phase's decode steps 1.2-2.2x the other probes'; its
  twin puts the held-out run 50-110 % high), `probeB/` minutes later, on a quiet host.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from servegen_load.calibrate.command import percentiles
from servegen_load.requests import Request
from servegen_load.results import read_results
from servegen_load.sim.presets import get_preset
from servegen_load.sim.virtual import simulate_requests

DATA = Path(__file__).parent / "data" / "llamacpp"
CLI = [sys.executable, "-m", "servegen_load.cli"]
N_CTX = 4096  # the server's context per slot (/props), which `calibrate --from` cannot ask for


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`calibrate --from` the kept probe, once for both tests."""
    tmp = tmp_path_factory.mktemp("llamacpp")
    with tarfile.open(DATA / "probe.tar.gz") as tar:
        tar.extractall(tmp, filter="data")
    out = tmp / "twin.yaml"
    p = subprocess.run([*CLI, "calibrate", "--from", *sorted(map(str, (tmp / "probeA").glob("*.jsonl"))),
                        "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


def test_a_real_llamacpp_probe_finds_its_shared_kv_buffer(twin: Path) -> None:
    import yaml

    doc = yaml.safe_load(twin.read_text())
    notes = doc["calibration"]["notes"]
    assert doc["shared_kv"] is True, notes
    assert 0.85 <= doc["calibration"]["mean_scale"] <= 1.15, notes  # the model explains sustained load
    assert any("unified KV cache" in n for n in notes), notes


def held_out_errors(preset: Path, tmp_path: Path) -> dict[str, float]:
    """The twin's predicted / measured - 1 on the kept held-out run, per TTFT/TPOT/E2E percentile."""
    params = replace(get_preset(str(preset)), max_model_len=N_CTX)
    check = tmp_path / "check.jsonl"
    check.write_bytes(gzip.decompress((DATA / "check-0.82.jsonl.gz").read_bytes()))
    measured = read_results(str(check))
    c = measured.cols
    reqs = [Request(str(c["id"][i]), float(c["scheduled"][i]), "check", "language", int(c["input_tokens"][i]),
                    int(c["output_tokens"][i])) for i in np.argsort(c["scheduled"], kind="stable")]
    m, p = percentiles(measured), percentiles(simulate_requests(params, reqs))
    return {f"{k}_p{q}": p[k][q] / m[k][q] - 1 for k in ("ttft", "tpot", "e2e") for q in (50, 90, 99)}


def test_its_twin_predicts_a_held_out_real_run(twin: Path, tmp_path: Path) -> None:
    errors = held_out_errors(twin, tmp_path)
    assert all(abs(e) <= 0.25 for e in errors.values()), errors


def test_a_probe_run_in_a_slow_spell_of_the_host_is_outvoted_by_the_other_rounds(tmp_path: Path) -> None:
    import yaml

    for name in ("probe.tar.gz", "rounds.tar.gz"):
        with tarfile.open(DATA / name) as tar:
            tar.extractall(tmp_path, filter="data")
    dirs = [str(tmp_path / d) for d in ("slow", "probeA", "probeB")]
    alone, voted = tmp_path / "slow.yaml", tmp_path / "voted.yaml"
    for out, args in ((alone, dirs[:1]), (voted, dirs)):
        p = subprocess.run([*CLI, "calibrate", "--from", *args, "-o", str(out)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
    assert max(abs(e) for e in held_out_errors(alone, tmp_path).values()) > 0.5  # the slow round, alone
    rounds = yaml.safe_load(voted.read_text())["calibration"]["rounds"]
    assert rounds["kept"] != 1 and rounds["spread"] > 0.15, rounds
    assert "warning: the rounds differ" in p.stdout and "kept round" in p.stdout, p.stdout
    errors = held_out_errors(voted, tmp_path)
    assert all(abs(e) <= 0.25 for e in errors.values()), errors
    # a plan against the twin says how far apart its rounds were, on the terminal and in its JSON
    scen, plan = tmp_path / "m-large.yaml", tmp_path / "plan.json"
    scen.write_text('pool: m-large\nstart: "20:00"\nduration: 600\nrate: 1\nseed: 2\n')
    q = subprocess.run([*CLI, "plan", str(scen), "--preset", str(voted), "--slo", "ttft_p90<=2s", "--max-steps", "3",
                        "-o", str(plan)], capture_output=True, text=True, timeout=120)
    assert q.returncode == 0, q.stderr[-2000:]
    assert f"3 rounds whose saturation rates spread {rounds['spread']:.0%}" in q.stderr, q.stderr
    assert json.loads(plan.read_text())["options"]["calibration_rounds"]["kept"] == rounds["kept"]


def test_a_probe_whose_prompt_counts_follow_nothing_is_refused(tmp_path: Path) -> None:
    """The kept probe with every `usage.prompt_tokens` rewritten to 10 (a gateway that rewrites
    usage, or a server that ignores the prompt): a model fitted to those counts put a server
    serving 180 req/s at 0.2. `calibrate --from` refuses it in one line (exit 2)."""
    with tarfile.open(DATA / "probe.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    files = sorted((tmp_path / "probeA").glob("*.jsonl"))
    for f in files:
        head, *lines = f.read_text().splitlines()
        out = [head]
        for line in lines:
            d = json.loads(line)
            if d.get("prompt_tokens") is not None:
                d["prompt_tokens"] = 10
            out.append(json.dumps(d))
        f.write_text("\n".join(out) + "\n")
    p = subprocess.run([*CLI, "calibrate", "--from", *map(str, files), "-o", str(tmp_path / "t.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "usage.prompt_tokens does not follow the prompts sent" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "t.yaml").exists()
