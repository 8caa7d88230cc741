"""One run specification everywhere: the CLI, `--workers` children, Ray actors and `plan` get the
same options (every content option, one salt), and the `run/` layer sits above a pure engine.

Runs go over HTTP to the C fake server (`test_dispatch_fixtures`) or the embedded simulator.
"""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_dispatch_fixtures import free_port, make_requests, poisson_times, write_requests

from servegen_load.cli import parse_run_argv
from servegen_load.errors import InputError
from servegen_load.run.spec import RunSpec

AHEAD = float(int(time.time()) + 86400)  # a shared start a day ahead (one far in the past is refused)

pytest_plugins = ["test_dispatch_fixtures"]  # fake_server

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
PACKAGE = Path(__file__).resolve().parents[1] / "servegen_load"
CONTENT = ("prompt_format", "tokenizer", "image_patch", "prefix_block", "content_salt")


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def header(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return orjson.loads(fh.readline())


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()[1:]]


def every_option(tmp_path: Path) -> RunSpec:
    """A spec with every field away from its default (the test below fails when a new field is not)."""
    (tmp_path / "key").write_text("sk-test\n")
    return RunSpec.build(
        source=str(tmp_path / "a.yaml"), output=str(tmp_path / "r.jsonl"), endpoint="http://127.0.0.1:9", model="m",
        api="completions", server_family="vllm", api_key_file=str(tmp_path / "key"), insecure=True,
        sim_preset=None, duration=3.5, rate=2.0, count=7, max_concurrency=3, prompt_format="text",
        tokenizer="words", image_patch=14, prefix_block=256, content_salt="ABCD", timeout_connect=1.5,
        timeout_first_token=2.0, timeout_total=3.0, timeout_idle=4.0, retries=2, retry_max_wait=1.0,
        keep_going=True, transport="aiohttp", max_event_bytes=1 << 20, max_prompt_tokens=1 << 16, push_timeout=2.5, metrics_port=0, metrics_host="0.0.0.0", metrics_linger=1.0, pushgateway="h:1",
        progress="plain", lag_threshold_ms=5.0, summary_json=str(tmp_path / "s.json"),
        slo=("ttft_p99<=2s", "error_rate<=1%"), shard="1/3", shard_by="request", start_at=AHEAD)


def test_every_option_survives_the_worker_command_line(tmp_path: Path) -> None:
    spec = every_option(tmp_path)
    default = RunSpec(source="", output="")
    unset = {f for f in RunSpec.model_fields if getattr(spec, f) == getattr(default, f)}
    assert unset == {"sim_preset", "workers", "ray", "start_barrier"}, "give the new field a non-default value above"
    assert parse_run_argv(spec.to_argv()) == spec  # what a `--workers` child parses is what the parent has
    barrier = spec.replace(start_at=None, start_barrier=True)  # excludes --start-at
    assert parse_run_argv(barrier.to_argv()) == barrier
    assert pickle.loads(pickle.dumps(spec)) == spec  # what a Ray actor receives
    with pytest.raises(Exception, match="--max-concurrency"):
        spec.replace(max_concurrency=0)
    with pytest.raises(Exception, match="--content-salt"):
        spec.replace(content_salt="xyz")


def test_workers_and_ray_shards_get_the_local_runs_options(tmp_path: Path) -> None:
    from servegen_load.run.ray_actors import shipped_specs
    from servegen_load.run.target import pinned_spec, target_for
    from servegen_load.run.workers import shard_specs

    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.1 * i for i in range(20)]))
    for salt in ("abcd", None):
        spec = RunSpec.build(source=str(source), output=str(tmp_path / "r.jsonl"), api="completions",
                             prompt_format="text", tokenizer="words", image_patch=14, prefix_block=256,
                             content_salt=salt, max_concurrency=4, retries=1, workers="2", timeout_idle=9.0)
        target = target_for("http://127.0.0.1:9", "m", spec.family, spec.api, None, tokenizer=spec.tokenizer,
                            prompt_format=spec.prompt_format)
        if salt is not None:
            target = target.__class__(**{**target.__dict__, "salt": salt})
        workers = shard_specs(spec, pinned_spec(spec, target), 2, 3, AHEAD)
        ray = [pickle.loads(pickle.dumps(s)) for s in shipped_specs(spec, target, 2, 3, AHEAD)]
        for i, (w, r) in enumerate(zip(workers, ray, strict=True)):
            assert parse_run_argv(w.to_argv()) == w
            same = {"output", "metrics_host", "pushgateway"}
            assert w.model_dump(exclude=same) == r.model_dump(exclude=same)
            assert w.shard == f"{i}/2" and w.start_at == AHEAD and w.max_concurrency == 2
            for f in CONTENT[:-1]:
                assert getattr(w, f) == getattr(spec, f), f
            assert w.content_salt == (salt or target.salt)  # one salt for every shard
            assert (w.retries, w.timeout_idle, w.api) == (1, 9.0, "completions")
    # a cap's shares sum to it (2 over 3 workers once gave 1 each: 3 in flight), and each needs one
    spec = spec.replace(max_concurrency=5, workers="3")
    pinned = pinned_spec(spec, target)
    assert [s.max_concurrency for s in shard_specs(spec, pinned, 3, 3, AHEAD)] == [2, 2, 1]
    with pytest.raises(InputError, match="2 slots cannot be shared by 3 workers"):
        shard_specs(spec.replace(max_concurrency=2), pinned, 3, 3, AHEAD)


def test_workers_results_carry_the_local_content_options(fake_server, tmp_path: Path) -> None:
    source = write_requests(tmp_path / "reqs.jsonl", make_requests(poisson_times(30, 30, seed=3),
                                                                    clients=[f"c{i}" for i in range(6)]))
    common = ["--endpoint", fake_server.url, "--api", "completions", "--prompt-format", "text",
              "--tokenizer", "words", "--image-patch", "14", "--prefix-block", "256", "--progress", "off"]
    local, scaled = tmp_path / "local.jsonl", tmp_path / "workers.jsonl"
    r = cli("run", str(source), "-o", str(local), *common)
    assert r.returncode == 0, r.stderr
    r = cli("run", str(source), "-o", str(scaled), "--workers", "2", *common)
    assert r.returncode == 0, r.stderr
    a, b = header(local), header(scaled)
    assert a["content"] == b["content"] and a["content"]["image_patch"] == 14 and a["content"]["prefix_block"] == 256
    assert a["content"]["prompt_format"] == "text" and b["workers"] == 2
    assert sorted(d["id"] for d in lines(scaled)) == sorted(d["id"] for d in lines(local))


def test_one_client_is_split_by_request(tmp_path: Path) -> None:
    from servegen_load.run.local import open_for
    from servegen_load.run.target import pinned_spec, target_for
    from servegen_load.run.workers import shard_specs

    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.1 * i for i in range(21)], clients=["only"]))
    spec = RunSpec.build(source=str(source), output=str(tmp_path / "r.jsonl"), workers="2")
    target = target_for("http://127.0.0.1:9", "m", "sim", "chat", None)
    shards = [[r.id for r in open_for(s).requests] for s in shard_specs(spec, pinned_spec(spec, target), 2, 1, AHEAD)]
    assert all(len(s) >= 10 for s in shards), "no worker idles"
    assert sorted(shards[0] + shards[1]) == sorted(f"r{i}" for i in range(21))


def test_count_and_rate_overrides(fake_server, tmp_path: Path) -> None:
    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.5 * i for i in range(20)],
                                                                    clients=["a", "b", "c", "d"]))
    out = tmp_path / "r.jsonl"
    r = cli("run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--count", "5", "--rate", "8",
            "--progress", "off")
    assert r.returncode == 0, r.stderr
    got = lines(out)
    assert sorted(d["id"] for d in got) == [f"r{i}" for i in range(5)]
    # 20 requests over 10 s (2 req/s) compressed to 8 req/s: request 4 is due at 2 s / 4 = 0.5 s
    assert max(d["scheduled"] for d in got) == pytest.approx(0.5, abs=1e-6)
    r = cli("run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--count", "7", "--workers", "2",
            "--progress", "off")
    assert r.returncode == 0, r.stderr
    assert sorted(d["id"] for d in lines(out)) == sorted(f"r{i}" for i in range(7))
    # two requests over three workers: a shard with none is no bad input, and stops no other shard
    r = cli("run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--count", "2", "--workers", "3",
            "--progress", "off")
    assert r.returncode == 0, r.stderr
    assert sorted((d["id"], d["status"]) for d in lines(out)) == [("r0", "ok"), ("r1", "ok")]
    # merged results on stdout: once refused, blaming --start-barrier (which was never given)
    r = cli("run", str(source), "-o", "-", "--endpoint", fake_server.url, "--count", "2", "--workers", "2",
            "--progress", "off")
    assert r.returncode == 0, r.stderr
    assert sorted(orjson.loads(x)["id"] for x in r.stdout.splitlines()[1:] if x.startswith("{")) == ["r0", "r1"]


def test_a_duration_longer_than_the_scenario_is_said(fake_server, tmp_path: Path) -> None:
    """`--duration` keeps the requests due before it; past the scenario's own span there are
    none, so a run asked for 10 s of a 2 s scenario ends at 2 s: said, not silent."""
    scen = tmp_path / "s.yaml"
    scen.write_text("naive: {rate: 5, input_tokens: 10, output_tokens: 4}\nduration: 2\nseed: 1\n")
    out = tmp_path / "r.jsonl"
    r = cli("run", str(scen), "-o", str(out), "--endpoint", fake_server.url, "--duration", "10", "--progress", "off")
    assert r.returncode == 0, r.stderr
    assert "--duration 10 s is longer than the scenario's 2 s" in r.stderr
    assert max(d["scheduled"] for d in lines(out)) < 2
    r = cli("run", str(scen), "-o", str(out), "--endpoint", fake_server.url, "--duration", "1", "--progress", "off")
    assert r.returncode == 0 and "longer than the scenario" not in r.stderr, r.stderr


def test_header_slos_and_exit_codes(fake_server, tmp_path: Path) -> None:
    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.05 * i for i in range(10)]))
    out = tmp_path / "r.jsonl"
    r = cli("run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off",
            "--slo", "error_rate<=50%")
    assert r.returncode == 0, r.stderr
    assert f"run: {source} -> {out}" in r.stdout and f"endpoint: {fake_server.url}" in r.stdout
    assert "model: fake-model" in r.stdout
    r = cli("run", str(source), "-o", str(out), "--endpoint", fake_server.url, "--progress", "off",
            "--slo", "ttft_p50<=1us")
    assert r.returncode == 1, r.stderr


def test_inputs_are_checked_before_anything_starts(tmp_path: Path) -> None:
    r = cli("run", str(tmp_path / "nothere.yaml"), "-o", str(tmp_path / "r.jsonl"))
    assert r.returncode == 2 and "nothere.yaml" in r.stderr and "no such" in r.stderr
    assert "simulator" not in r.stderr and "Traceback" not in r.stderr
    source = write_requests(tmp_path / "reqs.jsonl", make_requests([0.0, 0.1]))
    port = free_port()  # nothing listens there
    r = cli("run", str(source), "-o", str(tmp_path / "r.jsonl"), "--endpoint", f"http://127.0.0.1:{port}")
    assert r.returncode == 2 and f"connection refused at http://127.0.0.1:{port}" in r.stderr, r.stderr
    assert "--model" not in r.stderr
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("servegen-load ")


def test_a_relative_source_reaches_ray_actors_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray actors run in another directory: `run q.jsonl --ray ...` said q.jsonl was not readable there."""
    write_requests(tmp_path / "q.jsonl", make_requests([0.0]))
    monkeypatch.chdir(tmp_path)
    spec = RunSpec.build(source="q.jsonl", output="r.jsonl", ray="auto")
    assert spec.source == str(tmp_path / "q.jsonl")
    assert RunSpec.build(source="-", output="r.jsonl").source == "-"


def test_plan_steps_use_the_runs_token_model(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from servegen_load.content.tokenizer import CANDIDATES

    tok = tmp_path / "tok"
    tok.mkdir()
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(CANDIDATES)}}
    t = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    t.save(str(tok / "tokenizer.json"))
    scenario = tmp_path / "s.yaml"
    scenario.write_text("naive:\n  rate: 4\n  input_tokens: 32\n  output_tokens: 4\nduration: 30\nseed: 1\n")
    steps = tmp_path / "steps"
    r = cli("plan", str(scenario), "--slo", "error_rate<=100%", "--clock", "real", "--step-duration", "1",
            "--warmup", "0", "--max-steps", "2", "--tokenizer", str(tok), "--results-dir", str(steps))
    assert r.returncode == 0, r.stderr
    files = sorted(steps.glob("*.jsonl"))
    assert files
    for f in files:
        assert header(f)["content"]["token_model"]["source"] == f"tokenizer:{tok}"


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != module:
                out.add(n)
    return out


def test_import_graph_has_no_cycles_and_the_engine_knows_no_runner() -> None:
    files = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    known = set(files)
    graph = {m: {d for d in _imports(p, m, known) if d.startswith("servegen_load.")} for m, p in files.items()}
    for m, deps in graph.items():
        if m.startswith("servegen_load.dispatch"):
            assert not [d for d in deps if d.startswith("servegen_load.run")], m
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:  # depth-first; a grey node met again closes a cycle
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(d):], d]))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_no_long_duplicated_code() -> None:
    if not any(os.access(Path(d) / "duplicates", os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)):
        pytest.skip("the `duplicates` tool is not on PATH")
    r = subprocess.run(["duplicates", "--repo", str(PACKAGE), "--min-lines", "9"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "servegen_load" not in r.stdout, r.stdout[-3000:]


def test_generate_takes_the_rate_override(tmp_path: Path) -> None:
    scenario = tmp_path / "n.yaml"
    scenario.write_text("naive:\n  rate: 6\n  input_tokens: 32\n  output_tokens: 4\nduration: 10\nseed: 1\n")
    r = cli("generate", str(scenario), "-o", str(tmp_path / "a.jsonl"), "--rate", "3", "-q")
    assert r.returncode == 0, r.stderr
    assert header(tmp_path / "a.jsonl")["expected_requests"] == pytest.approx(30)  # 3 req/s x 10 s, not 6 x 10


def test_one_sniffer_names_every_file_kind(tmp_path: Path) -> None:
    import json

    from servegen_load.formats import CAPACITY_FORMAT, RESULTS_FORMAT, sniff

    reqs = write_requests(tmp_path / "reqs.jsonl", make_requests([0.0]))
    (tmp_path / "res.jsonl").write_text(json.dumps({"format": RESULTS_FORMAT}) + "\n")
    (tmp_path / "cap.json").write_text(json.dumps({"format": CAPACITY_FORMAT, "plans": []}, indent=2))
    (tmp_path / "s.yaml").write_text("pool: m-small\nduration: 5\n")
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n")
    (tmp_path / "pool.npz").write_bytes(b"PK\x03\x04")
    kinds = {p: sniff(tmp_path / p) for p in ("res.jsonl", "cap.json", "s.yaml", "deep.jsonl", "pool.npz", "none")}
    assert sniff(reqs) == "requests" and kinds == {"res.jsonl": "results", "cap.json": "capacity",
                                                    "s.yaml": "scenario", "deep.jsonl": "text",
                                                    "pool.npz": "pool", "none": "missing"}
    assert sniff(tmp_path) == "directory"
