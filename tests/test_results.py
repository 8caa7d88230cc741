"""Results files: the sink's flush contract, the reader's columns, merging, and its errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from servegen_load.dispatch.stream import Flight
from servegen_load.errors import InputError
from servegen_load.requests import Request
from servegen_load.results import RESULTS_FORMAT, ResultSink, read_results, result_line, unsent_line

T0 = 1000.0


def _flight(i: int, *, status: str = "ok", chunks: int = 3, usage: bool = True) -> Flight:
    req = Request(id=f"r{i}", t=0.1 * i, client=f"c{i % 2}", category="language", input_tokens=10,
                  output_tokens=chunks, session="s1" if i == 0 else None, turn=2 if i == 0 else None)
    f = Flight(req, b"")
    f.sent = T0 + 0.1 * i + 0.0005
    f.queue_time = 0.0
    if chunks:
        f.first_token = f.first_answer_token = f.sent + 0.02
        f.chunks.extend(f.first_token + 0.005 * k for k in range(chunks))
    if usage:
        f.prompt_tokens, f.completion_tokens = 10, chunks
    f.status = status
    f.http_status = 200
    return f


def test_sink_writes_only_on_flush_and_reader_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    sink = ResultSink(out, {"endpoint": "http://x/v1", "model": "m"})
    sink.add(result_line(_flight(0), T0))
    sink.add(result_line(_flight(1, usage=False), T0))
    assert out.read_bytes().count(b"\n") == 1  # header only: lines wait for the flush
    sink.flush()
    sink.add(unsent_line(Request(id="r9", t=0.9, client="c1", category="language", input_tokens=1, output_tokens=1)))
    sink.close()
    res = read_results(out)
    assert res.n == 3 and res.headers[0]["format"] == RESULTS_FORMAT and res.headers[0]["model"] == "m"
    assert res["id"].tolist() == ["r0", "r1", "r9"]
    assert res["status"].tolist() == ["ok", "ok", "cancelled"]
    assert res["scheduled"].tolist() == [0.0, 0.1, 0.9]
    assert res["sent"][0] == pytest.approx(0.0005) and math.isnan(res["sent"][2])
    assert math.isnan(res["completion_tokens"][1]) and res["completion_tokens"][0] == 3
    assert res["session"].tolist() == ["s1", None, None] and res["turn"][0] == 2
    assert res.chunk_counts.tolist() == [3, 3, 0]
    assert res.chunk_times[:3].tolist() == [0.0, 0.005, 0.01]  # offsets from first_token, µs-rounded


def test_merge_keeps_every_row_and_its_file(tmp_path: Path) -> None:
    paths = []
    for k in range(2):
        p = tmp_path / f"r{k}.jsonl"
        sink = ResultSink(p, {"shard": k})
        for i in range(3 + k):
            sink.add(result_line(_flight(i), T0))
        sink.close()
        paths.append(p)
    res = read_results(*paths)
    assert res.n == 7 and res.file_index.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert [h["shard"] for h in res.headers] == [0, 1]
    assert res.chunk_offsets[-1] == 21


def _write(p: Path, *lines: bytes, header: bool = True) -> Path:
    head = orjson.dumps({"format": RESULTS_FORMAT}) + b"\n" if header else b""
    p.write_bytes(head + b"".join(lines))
    return p


def _ok(**kw) -> bytes:
    d = {"id": "a", "scheduled": 0.0, "status": "ok", "sent": 0.1, "chunk_times": [0.0]}
    d.update(kw)
    return orjson.dumps(d) + b"\n"


@pytest.mark.parametrize(("lines", "where", "what"), [
    ((_ok(), b"{not json\n"), ":3", "invalid JSON"),
    ((_ok(), b"[1, 2]\n"), ":3", "JSON object"),
    ((_ok(id=None) .replace(b'"id":null,', b""),), ":2", "id"),
    ((_ok(status="weird"),), ":2", "unknown status"),
    ((_ok(), _ok(sent="late")), ":3", "sent"),
    ((_ok(chunk_times=[0.0, "x"]),), ":2", "chunk_times"),
])
def test_bad_lines_name_file_and_line(tmp_path: Path, lines: tuple[bytes, ...], where: str, what: str) -> None:
    p = _write(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(InputError) as e:
        read_results(p)
    assert f"{p}{where}" in str(e.value) and what in str(e.value)


def test_not_a_results_file(tmp_path: Path) -> None:
    p = _write(tmp_path / "x.jsonl", _ok(), header=False)
    with pytest.raises(InputError, match=r"x\.jsonl:1: not a results file"):
        read_results(p)


def test_a_closed_file_cut_later_says_how_many_lines_it_lacks(tmp_path: Path) -> None:
    """The header counts the lines at close: `head -100 results.jsonl`, or a copy cut mid-line,
    said `complete: true` and a gate passed on the part."""
    from servegen_load.gate import run_gate
    from servegen_load.slo import build_slos

    out = tmp_path / "r.jsonl"
    sink = ResultSink(out, {"model": "m"})
    for i in range(10):
        sink.add(result_line(_flight(i), T0))
    sink.close()
    head = orjson.loads(out.read_bytes().splitlines()[0])
    assert head["complete"] is True and head["lines"] == 10
    whole = read_results(out)
    assert not whole.warnings and run_gate([str(out)], build_slos(["error_rate<=1%"])).passed
    lines = out.read_bytes().splitlines(keepends=True)
    for name, data in (("head.jsonl", b"".join(lines[:5])), ("cut.jsonl", b"".join(lines[:8]) + lines[8][:30])):
        (tmp_path / name).write_bytes(data)
        res = read_results(tmp_path / name)
        assert any("result lines are missing" in w for w in res.warnings), res.warnings
        g = run_gate([str(tmp_path / name)], build_slos(["error_rate<=1%"]))
        assert not g.passed and "the file was cut" in (g.incomplete or ""), name


def test_a_truncated_last_line_is_a_crash_artefact(tmp_path: Path) -> None:
    p = _write(tmp_path / "r.jsonl", _ok(), _ok(id="b")[:20])  # killed mid-write: no newline
    res = read_results(p)
    assert res.n == 1 and "truncated" in res.warnings[0]
    p2 = _write(tmp_path / "r2.jsonl", _ok(id="b")[:20] + b"\n", _ok())  # but not in the middle
    with pytest.raises(InputError, match=":2"):
        read_results(p2)


def test_empty_results(tmp_path: Path) -> None:
    res = read_results(_write(tmp_path / "e.jsonl"))
    assert res.n == 0 and len(res.chunk_offsets) == 1
    assert np.asarray(res["sent"]).size == 0
