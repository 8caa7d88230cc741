"""`run --ray`: shard actors on a small local Ray cluster bound to 127.0.0.1, against the C fake server.

The cluster is started once for the module (2 CPUs, a 200 MB object store, no dashboard) and the
driver (`servegen_load.run.run` with a `RunSpec`) runs in this process, as the CLI would call it.
Skipped when the `ray` extra is not installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_dispatch_fixtures import make_requests, poisson_times, wait_for, write_requests

ray = pytest.importorskip("ray")

pytest_plugins = ["test_dispatch_fixtures"]  # fake_server

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, object_store_memory=200_000_000, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


def ray_run(source: Path, out: Path, **over: Any) -> int:
    """`run SOURCE -o OUT --ray auto --workers 2 --progress off ...` as the CLI runs it."""
    from servegen_load.run import run
    from servegen_load.run.spec import RunSpec

    fields: dict[str, Any] = dict(source=str(source), output=str(out), progress="off", workers="2", ray="auto")
    fields.update(over)
    return run(RunSpec.build(**fields), ["servegen-load", "run", "--ray"])


def read(path: Path) -> tuple[dict, list[dict]]:
    lines = path.read_bytes().splitlines()
    return orjson.loads(lines[0]), [orjson.loads(x) for x in lines[1:]]


def schedule(lines: list[dict]) -> list[tuple[str, float]]:
    return sorted((d["id"], d["scheduled"]) for d in lines)


def test_ray_actors_send_the_single_process_schedule(cluster: None, fake_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(80, 40, seed=7), clients=[f"c{i}" for i in range(9)])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    single = tmp_path / "single.jsonl"
    content = {"prompt_format": "text", "image_patch": 14, "prefix_block": 256, "tokenizer": "words"}
    r = subprocess.run([*CLI, "run", str(source), "-o", str(single), "--endpoint", fake_server.url,
                        "--progress", "off", "--prompt-format", "text", "--image-patch", "14", "--prefix-block", "256",
                        "--tokenizer", "words"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out, summ = tmp_path / "ray.jsonl", tmp_path / "summary.json"
    code = ray_run(source, out, endpoint=fake_server.url, summary_json=str(summ), metrics_port=0, **content)
    assert code == 0
    head, merged = read(out)
    assert head["content"] == read(single)[0]["content"]  # every content option reached the actors
    assert head["content"]["image_patch"] == 14 and head["content"]["prompt_format"] == "text"
    assert head["workers"] == 2 and head["ray"] == "auto" and "shard" not in head
    assert schedule(merged) == schedule(read(single)[1])
    sched = [d["scheduled"] for d in merged]
    assert sched == sorted(sched) and {d["status"] for d in merged} == {"ok"}
    lags = sorted(d["sent"] - d["scheduled"] for d in merged)
    assert lags[len(lags) // 2] < 0.05, "the actors started together at the common instant"
    s = orjson.loads(summ.read_bytes())
    assert s["requests"]["scheduled"] == 80 and s["latency"]["ttft"]["n"] == 80
    targets = orjson.loads(out.with_name(out.name + ".prom-targets.json").read_bytes())
    assert sorted(t["labels"]["shard"] for t in targets) == ["0/2", "1/2"]
    assert all(t["targets"][0].startswith("127.0.0.1:") for t in targets)


def test_ray_sigint_stops_every_actor_and_keeps_every_line(cluster: None, fake_server, tmp_path: Path) -> None:
    reqs = make_requests([0.05 * i for i in range(300)], clients=["a", "b", "c", "d"])  # 15 s of schedule
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    out = tmp_path / "ray.jsonl"

    def interrupt() -> None:  # once the driver has received some results, as a user's Ctrl-C
        def got_lines() -> bool:
            return any(p.stat().st_size > 2000 for p in tmp_path.glob(".ray.jsonl.parts-*/part-*.jsonl"))
        wait_for(got_lines, 60, "first result lines at the driver", interval=0.05)
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    code = ray_run(source, out, endpoint=fake_server.url)
    t.join(5)
    assert code == 130
    _, merged = read(out)
    assert sorted(d["id"] for d in merged) == sorted(r.id for r in reqs)
    st = [d["status"] for d in merged]
    assert "ok" in st and st.count("cancelled") > 100


def test_ray_actors_push_one_group_per_shard(cluster: None, fake_server, pushgateway_server, tmp_path: Path) -> None:
    reqs = make_requests(poisson_times(40, 40, seed=8), clients=[f"c{i}" for i in range(5)])
    source = write_requests(tmp_path / "reqs.jsonl", reqs)
    groups = [f"{pushgateway_server.url}/metrics/job/servegen-load/shard/{s}" for s in ("0-of-2", "1-of-2")]

    def delete_groups() -> None:  # Debian's Pushgateway persists groups across restarts: leave none behind
        for g in groups:
            urllib.request.urlopen(urllib.request.Request(g, method="DELETE"), timeout=5).read()

    delete_groups()
    try:
        code = ray_run(source, tmp_path / "ray.jsonl", endpoint=fake_server.url,
                       pushgateway=pushgateway_server.address)
        assert code == 0
        pushed = pushgateway_server.metrics()
    finally:
        delete_groups()
    per_shard = {s: sum(v for k, v in pushed.items() if k.startswith("servegen_requests_total{") and f'shard="{s}"' in k)
                 for s in ("0-of-2", "1-of-2")}
    assert all(per_shard.values()) and sum(per_shard.values()) == 40, per_shard


def test_ray_actors_stop_when_the_endpoint_refuses_the_run(cluster: None, tmp_path: Path) -> None:
    """The shard actor whose first 20 answers are one 404 gives up, the driver stops the others:
    exit 3 with one line, and a line for every scheduled request."""
    from test_dispatch_fixtures import answering

    reqs = make_requests(poisson_times(200, 20, seed=4), clients=["a", "b", "c", "d"])  # 10 s of schedule
    source, out = write_requests(tmp_path / "reqs.jsonl", reqs), tmp_path / "ray.jsonl"
    with answering([404]) as url:
        code = ray_run(source, out, endpoint=url, model="m")
    assert code == 3
    _, merged = read(out)
    assert sorted(d["id"] for d in merged) == sorted(r.id for r in reqs)
    st = [d["status"] for d in merged]
    assert set(st) == {"http_error", "cancelled"} and st.count("cancelled") > 100, st


def test_a_shard_failure_is_told_by_the_actor_s_own_error_not_ray_s_traceback() -> None:
    from ray.exceptions import RayTaskError

    from servegen_load.errors import InputError
    from servegen_load.run.ray_actors import _last_line

    wrapped = RayTaskError("run", "Traceback (most recent call last):\n  File x\nray.exceptions.RayTaskError",
                           InputError("not readable on node n1", field="SOURCE"))
    assert _last_line(wrapped) == "SOURCE: not readable on node n1"
    assert _last_line(RuntimeError("a\nb")) == "b"
