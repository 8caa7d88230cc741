"""Log readers: every format parses to the same columns, bad rows are counted with their line numbers,
structural problems are one InputError, and the CSV fast path agrees with the csv module."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegen_load.errors import InputError
from servegen_load.workload.logs import ColumnMap, detect_format, load_log, read_log

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT.parent / "shared" / "data" / "traces"
AZURE_CODE = TRACES / "azure2023" / "AzureLLMInferenceTrace_code.csv"
MOONCAKE = TRACES / "mooncake" / "synthetic_trace.jsonl"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_azure_trace_matches_csv_module() -> None:
    log = load_log(AZURE_CODE)
    with AZURE_CODE.open() as fh:
        rows = list(csv.DictReader(fh))
    assert log.fmt == "azure" and len(log) == len(rows) == 8819 and log.bad.count == 0
    stamps = np.array([r["TIMESTAMP"] for r in rows], dtype="datetime64[ns]")
    expect = (stamps - stamps[0]).astype(np.int64) / 1e9
    np.testing.assert_allclose(log.t, expect, atol=1e-6)
    assert log.t[1] == pytest.approx(0.052, abs=1e-9)  # 18:17:03.9799600 -> 18:17:04.0319600
    np.testing.assert_array_equal(log.input, [int(r["ContextTokens"]) for r in rows])
    np.testing.assert_array_equal(log.output, [int(r["GeneratedTokens"]) for r in rows])
    assert log.wall_clock and log.origin == pytest.approx(1700158623.97996)
    assert not log.has_client and log.clients == ["all"] and not log.present("client")


def test_mooncake_trace() -> None:
    log = load_log(MOONCAKE)
    lines = [json.loads(x) for x in MOONCAKE.read_text().splitlines()]
    assert log.fmt == "mooncake" and len(log) == len(lines)
    np.testing.assert_allclose(log.t, [(d["timestamp"] - lines[0]["timestamp"]) / 1000 for d in lines])
    np.testing.assert_array_equal(log.input, [d["input_length"] for d in lines])
    np.testing.assert_array_equal(log.output, [d["output_length"] for d in lines])
    assert not log.wall_clock


def _write_csv(path: Path, n: int, seed: int = 0) -> list[tuple[float, str, int, int, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    t = 1_700_000_000.0
    for i in range(n):
        t += float(rng.exponential(0.5))
        rows.append((round(t, 6), f"tenant-{rng.integers(0, 7)}", int(rng.integers(1, 9000)),
                     int(rng.integers(1, 900)), f"s{i // 3}"))
    with path.open("w") as fh:
        fh.write("ts,tenant,prompt,completion,conv\n")
        for r in rows:
            fh.write(f"{r[0]:.6f},{r[1]},{r[2]},{r[3]},{r[4]}\n")
    return rows


def test_generic_csv_column_map_and_chunking(tmp_path: Path) -> None:
    p = tmp_path / "gw.csv"
    rows = _write_csv(p, 5000)
    cols = ColumnMap(time="ts", client="tenant", input="prompt", output="completion", session="conv")
    whole = load_log(p, "csv", cols)
    chunks = list(read_log(p, "csv", cols, chunk_rows=777))
    assert len(chunks) > 5 and sum(len(c) for c in chunks) == len(whole) == 5000
    names = [whole.clients[c] for c in whole.client]
    assert names == [r[1] for r in rows]
    # codes are stable across chunks: the same name has the same code in every chunk
    last = chunks[-1].clients
    got = [last[c] for ch in chunks for c in ch.client]
    assert got == names
    np.testing.assert_allclose(whole.t, np.array([r[0] for r in rows]) - rows[0][0], atol=2e-6)
    np.testing.assert_array_equal(whole.input, [r[2] for r in rows])
    sess = whole.session
    assert sess is not None and sess[0] == sess[2] != sess[3]
    assert whole.wall_clock and whole.has_client


def test_guessed_columns_ms_crlf_gzip_no_trailing_newline(tmp_path: Path) -> None:
    body = "timestamp_ms,user_id,input_tokens,output_tokens\r\n1000,a,10,5\r\n1500,b,20,6\r\n4000,a,30,7"
    p = tmp_path / "x.csv.gz"
    p.write_bytes(gzip.compress(body.encode()))
    log = load_log(p, columns=ColumnMap(time="timestamp_ms", time_unit="ms"))
    np.testing.assert_allclose(log.t, [0.0, 0.5, 3.0])
    assert [log.clients[c] for c in log.client] == ["a", "b", "a"]
    np.testing.assert_array_equal(log.output, [5, 6, 7])


def test_quoted_csv_slow_path_and_iso_offsets(tmp_path: Path) -> None:
    p = tmp_path / "q.csv"
    p.write_text('time,client,input_tokens,output_tokens\n'
                 '2024-05-01T10:00:00Z,"acme, inc",100,10\n'
                 '2024-05-01T12:00:01.5+02:00,"acme, inc",200,20\n'
                 '2024-05-01T10:00:03,"b",300,30\n')
    log = load_log(p)
    np.testing.assert_allclose(log.t, [0.0, 1.5, 3.0])
    assert log.clients[log.client[0]] == "acme, inc"


def test_many_iso_times_with_offsets_on_the_fast_csv_path(tmp_path: Path) -> None:
    """Unquoted CSV times are read as bytes; numpy 2.4 killed the process (SIGSEGV) casting a
    few hundred of them with a "Z" or "+02:00" offset. In a child process: a crash must fail
    this test, not the whole run."""
    p = tmp_path / "gw.csv"
    base = np.datetime64("2024-05-29T16:00:00", "ms")
    rows = []
    for i in range(3000):  # alternately written in UTC+2, UTC and UTC-05:30, 0.25 s apart
        t = base + np.timedelta64(250 * i, "ms")
        text = str(t + np.timedelta64(2, "h")) + "+02:00" if i % 3 == 0 else (
            str(t) + "Z" if i % 3 == 1 else str(t - np.timedelta64(330, "m")) + "-05:30")
        rows.append(f"{text},c{i % 4},{100 + i % 50},{10 + i % 7}")
    p.write_text("time,client,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    code = ("import sys, numpy as np; from servegen_load.workload.logs import load_log; "
            "log = load_log(sys.argv[1]); print(len(log.t), float(np.abs(np.diff(log.t) - 0.25).max()))")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    n, worst = r.stdout.split()
    assert int(n) == 3000 and float(worst) < 1e-6
    r = cli("fit", str(p), "-o", str(tmp_path / "gw.npz"))
    assert r.returncode == 0 and "fitted 3000 requests" in r.stderr, r.stderr


def test_bad_rows_counted_with_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("time,input_tokens,output_tokens\n"
                 "0.0,10,5\n"
                 "1.0,abc,5\n"        # line 3: not a number
                 "2.0,10\n"           # line 4: field count
                 "\n"                 # blank: skipped, not bad
                 ",10,5\n"            # line 6: empty time
                 "4.0,-3,5\n"         # line 7: negative
                 "5.0,10,5\n")
    log = load_log(p, warn=False)
    assert len(log) == 2 and log.bad.count == 4 and log.rows == 6
    assert [ln for ln, _ in sorted(log.bad.examples)] == [3, 4, 6, 7]
    text = log.bad.describe()
    assert "line 3: input_tokens: expected a number" in text and "line 4: expected 3 fields, got 2" in text
    np.testing.assert_allclose(log.t, [0.0, 5.0])
    err = io.StringIO()
    from servegen_load.workload.logs import warn_bad_rows

    warn_bad_rows(log, err)
    assert err.getvalue().count("\n") == 1 and "skipped 4 bad row(s) of 6" in err.getvalue()


def test_bad_rows_in_jsonl_and_all_bad_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
                 '{"timestamp": 10, "input_length": 5\n'
                 '[1, 2]\n'
                 '{"timestamp": 20, "input_length": "x", "output_length": 1}\n'
                 '{"timestamp": 30, "input_length": 7, "output_length": 2}\n')
    log = load_log(p, "mooncake", warn=False)
    assert len(log) == 2 and log.bad.count == 3
    assert [ln for ln, _ in sorted(log.bad.examples)] == [2, 3, 4]
    q = tmp_path / "allbad.csv"
    q.write_text("time,input_tokens,output_tokens\nx,1,1\ny,2,2\n")
    with pytest.raises(InputError, match=r"no usable rows.*line 2"):
        load_log(q)


def test_leading_bad_chunks_keep_origin_and_columns(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text("nope\n" * 5 + "".join(
        json.dumps({"time": 100.0 + i, "input_tokens": 3, "output_tokens": 2, "reasoning_tokens": 1}) + "\n"
        for i in range(7)))
    q = tmp_path / "x.csv"
    q.write_text("time,input_tokens,output_tokens\n" + "x,1,1\n" * 5 + "".join(f"{100 + i:.1f},3,2\n" for i in range(7)))
    for path, fmt in ((p, "jsonl"), (q, "csv")):
        log = load_log(path, fmt, chunk_rows=2, warn=False)
        assert len(log) == 7 and log.bad.count == 5 and log.rows == 12
        assert log.origin == 100.0 and log.t[0] == 0.0
    assert load_log(p, "jsonl", chunk_rows=2, warn=False).present("reason")


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text log"),
    (b"a,b,c\n1,2,3\n", "no time column"),
])
def test_structural_errors(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "f.csv"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_log(p)


def test_named_column_must_exist(tmp_path: Path) -> None:
    p = tmp_path / "f.csv"
    p.write_text("time,input_tokens,output_tokens\n0,1,1\n")
    with pytest.raises(InputError, match="no column 'tenant' for client"):
        load_log(p, columns=ColumnMap(client="tenant"))


def test_requests_and_results_files(tmp_path: Path) -> None:
    req = tmp_path / "r.jsonl"
    lines = [{"format": "servegen-load/requests/v1", "seed": 1},
             {"id": "a#0", "t": 1.0, "client": "a", "category": "multimodal", "input_tokens": 10,
              "output_tokens": 3, "images": [576, 576], "session": "s1", "turn": 1},
             {"id": "b#0", "t": 2.5, "client": "b", "category": "multimodal", "input_tokens": 20,
              "output_tokens": 4}]
    req.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert detect_format(req) == "requests"
    log = load_log(req)
    np.testing.assert_allclose(log.t, [0.0, 1.5])
    assert log.origin == 1.0 and not log.wall_clock
    np.testing.assert_array_equal(log.media["image_count"], [2, -1])
    np.testing.assert_array_equal(log.media["image_tokens"], [1152, -1])
    assert log.present("image_count") and not log.present("video_count")
    assert log.session is not None and log.session[0] >= 0 and log.session[1] == -1

    res = tmp_path / "res.jsonl"
    recs = [{"format": "servegen-load/results/v1"},
            {"id": "a#0", "client": "a", "scheduled": 0.5, "sent": 0.51, "input_tokens": None,
             "output_tokens": None, "prompt_tokens": 11, "completion_tokens": 3, "status": "ok"},
            {"id": "a#1", "client": "a", "scheduled": 0.2, "sent": 0.9, "input_tokens": None,
             "output_tokens": None, "prompt_tokens": 12, "completion_tokens": 4, "status": "ok"}]
    res.write_text("".join(json.dumps(x) + "\n" for x in recs))
    assert detect_format(res) == "results"
    # results come in completion order: times are relative to the first row, not sorted
    by_sched = load_log(res)
    np.testing.assert_allclose(by_sched.t, [0.0, -0.3])
    np.testing.assert_array_equal(by_sched.input, [11, 12])  # usage when the request's own count is null
    by_sent = load_log(res, columns=ColumnMap(time="sent"))
    np.testing.assert_allclose(by_sent.t, [0.0, 0.39])


def test_cli_fit_reports_bad_rows(tmp_path: Path) -> None:
    p = tmp_path / "gw.csv"
    rows = [f"{i * 0.7:.3f},c{i % 2},{100 + i},{10 + i % 9}" for i in range(200)]
    rows[10] = "oops,c1,5,5"
    rows[150] = "150.0,c0,5"
    p.write_text("time,client,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    r = cli("fit", str(p), "-o", str(tmp_path / "gw.npz"))
    assert r.returncode == 0, r.stderr
    warning = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warning) == 1 and f"{p}: skipped 2 bad row(s)" in warning[0]
    assert "line 12: time: expected a finite number" in warning[0] and "line 152: expected 4 fields" in warning[0]
    assert "fitted 198 requests" in r.stderr


def test_cli_unreadable_log_is_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "garbage.bin"
    p.write_bytes(bytes(range(256)) * 10)
    r = cli("fit", str(p), "-o", str(tmp_path / "x.npz"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and str(p) in r.stderr
    assert not (tmp_path / "x.npz").exists()


def test_nested_usage_of_a_gateway_log_is_found(tmp_path: Path) -> None:
    """OpenAI-style response logs keep the counts in `usage`: guessed as `usage.prompt_tokens`
    and `usage.completion_tokens` (and named so with --input-column), `user` as the client."""
    p = tmp_path / "gw.jsonl"
    rows = [{"id": f"c{i}", "created": 1715299200 + i, "model": "m", "user": f"t{i % 3}",
             "usage": None if i == 0 else {"prompt_tokens": 100 + i, "completion_tokens": 10 + i,
                                           "completion_tokens_details": {"reasoning_tokens": i % 5}}}
            for i in range(50)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    log = load_log(p)
    np.testing.assert_array_equal(log.input, [100 + i for i in range(1, 50)])  # row 0 has no counts: bad row
    np.testing.assert_array_equal(log.output, [10 + i for i in range(1, 50)])
    assert sorted(log.clients) == ["t0", "t1", "t2"]
    assert log.reason is not None and list(log.reason[:3]) == [1, 2, 3]
    named = load_log(p, columns=ColumnMap(input="usage.prompt_tokens", output="usage.completion_tokens"))
    np.testing.assert_array_equal(named.input, log.input)


def test_json_logs_are_decoded_in_bounded_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch ends at `JSON_CHUNK_BYTES` as well as at a row count (Bailian rows carry hundreds of
    hash ids: a million of them decoded at once took gigabytes); the log read is the same."""
    from servegen_load.workload import logs

    p = tmp_path / "b.jsonl"
    p.write_text("\n".join(json.dumps({"timestamp": 1000 * i, "input_length": 50 + i, "output_length": 5 + i % 7,
                                       "hash_ids": list(range(i % 40))}) for i in range(3000)) + "\n")
    whole = load_log(p)
    monkeypatch.setattr(logs, "JSON_CHUNK_BYTES", 4096)
    chunks = list(read_log(p))
    assert len(chunks) > 20 and max(c.rows for c in chunks) < 100
    parts = load_log(p)
    np.testing.assert_array_equal(parts.t, whole.t)
    np.testing.assert_array_equal(parts.input, whole.input)


def test_zero_output_rows_are_said_not_silently_made_one_token(tmp_path: Path) -> None:
    """BurstGPT logs failed requests with 0 response tokens: kept as arrivals, and the fit says
    they will be generated with 1 token (no request asks for 0)."""
    p = tmp_path / "bg.csv"
    rows = [f"{i * 0.5:.1f},ChatGPT,{100 + i},{0 if i % 10 == 0 else 20 + i % 9},{120 + i},Conversation log"
            for i in range(400)]
    p.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + "\n".join(rows) + "\n")
    r = cli("fit", str(p), "-o", str(tmp_path / "bg.npz"))
    assert r.returncode == 0, r.stderr
    assert "40 request(s) (10.0%) have 0 output tokens" in r.stderr and "fitted 400 requests" in r.stderr


@pytest.mark.parametrize("name,values", [("time_s", "0,1.5,3"), ("timestamp_ms", "0,1500,3000"),
                                         ("arrival_time_us", "0,1500000,3000000")])
def test_a_time_column_named_with_its_unit_is_found(tmp_path: Path, name: str, values: str) -> None:
    """`time_s` (the README's own example of a unit in a name) and `timestamp_ms` were no time column."""
    p = tmp_path / "log.csv"
    p.write_text(f"{name},prompt_tokens,completion_tokens\n" + "".join(f"{v},10,5\n" for v in values.split(",")))
    log = load_log(p)
    assert log.roles["time"] == name
    assert np.allclose(np.sort(log.t) - log.t.min(), [0.0, 1.5, 3.0])
