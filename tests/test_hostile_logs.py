"""Hostile logs to `fit` and `compare`, and malformed ServeGen folders to `pool import`.

Logs: garbage rows mixed with good ones are skipped, counted and reported with their line
numbers, and the command still succeeds (the pool is written and loads); a wholly unusable log is
exit 2 with one line naming it and no pool at `-o`. ServeGen folders: a malformed trace row or
length literal is exit 2 with one line naming the file, its line and field, and nothing written.
"""

from __future__ import annotations

import json
import re
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hostile import FAST, SLOW, assert_failed, assert_ok, run_cli, run_entry_point
from hypothesis import assume, given
from hypothesis import strategies as st

from servegen_load.workload.distributions import Family
from servegen_load.workload.pool import load_pool
from servegen_load.workload.servegen_import import parse_dict_literal

FORMATS = ("csv", "jsonl", "azure", "mooncake")
N_GOOD = 150


def good_rows(fmt: str, n: int = N_GOOD, seed: int = 0) -> tuple[str | None, list[str]]:
    """(header line or None, rows) of a clean log: 3 clients (csv/jsonl), ~2 requests/s."""
    rng = np.random.default_rng(seed)
    t = 1_700_000_000.0 + np.cumsum(rng.exponential(0.5, n))
    inp, out = rng.integers(1, 2000, n), rng.integers(1, 500, n)
    if fmt == "csv":
        return ("timestamp,client,input_tokens,output_tokens",
                [f"{t[i]:.3f},c{i % 3},{inp[i]},{out[i]}" for i in range(n)])
    if fmt == "jsonl":
        return None, [json.dumps({"timestamp": round(float(t[i]), 3), "client": f"c{i % 3}",
                                  "input_tokens": int(inp[i]), "output_tokens": int(out[i])}) for i in range(n)]
    if fmt == "azure":
        stamps = (np.datetime64("2023-11-16T18:00:00", "us")
                  + ((t - t[0]) * 1e6).astype("timedelta64[us]"))
        return ("TIMESTAMP,ContextTokens,GeneratedTokens",
                [f"{str(s).replace('T', ' ')}0,{inp[i]},{out[i]}" for i, s in enumerate(stamps)])
    return None, [json.dumps({"timestamp": int((t[i] - t[0]) * 1000), "input_length": int(inp[i]),
                              "output_length": int(out[i]), "hash_ids": [1, 2, 3]}) for i in range(n)]


JUNK = st.text(alphabet=[c for c in string.printable if c not in string.digits + ',;|\t"\r\n\x0b\x0c'],
               min_size=1, max_size=10).filter(lambda s: s.strip() != "")
T0 = "1700000000.5"
CSV_BAD = st.one_of(
    st.lists(st.integers(0, 99).map(str), min_size=1, max_size=7).filter(lambda x: len(x) != 4).map(",".join),
    JUNK.map(lambda j: f"{j},c1,5,5"),
    # (1e21: even a log of this one row, read in ns, is 1e12 s from 0)
    st.sampled_from(["nan", "inf", "-inf", "1e300", "-1e300", "1e21"]).map(lambda x: f"{x},c1,5,5"),
    st.sampled_from(["-1", "3.5", "abc", "", "99999999999", "1e40", "nan", "-0.5", "inf"]).flatmap(
        lambda x: st.sampled_from([f"{T0},c1,{x},5", f"{T0},c1,5,{x}"])),
    st.just(f'"{T0}",c1,"3,4",5'),
)
JSON_BAD_TIME = ["x", None, [], {}, True, 1e300, "nan", "inf", -1e21]
JSON_BAD_TOKENS = [-1, 3.5, "abc", None, [], {}, True, False, 2**40, 1e40, "1e40"]
BROKEN_JSON = ["{", "[1, 2]", "null", "42", '"x"', '{"a": 1},{"b": 2}', '{"a": 1}{"b": 2}', "[" * 3000, "\x00",
               '{"timestamp": 1e400}', "ÿþ"]


def json_bad(fmt: str) -> st.SearchStrategy[str]:
    tk, ik, ok = ("timestamp", "input_tokens", "output_tokens") if fmt == "jsonl" else \
        ("timestamp", "input_length", "output_length")
    t = 1_700_000_000.5 if fmt == "jsonl" else 1000
    good = {tk: t, ik: 5, ok: 5}
    return st.one_of(
        st.sampled_from(BROKEN_JSON),
        st.sampled_from(JSON_BAD_TIME).map(lambda v: json.dumps({**good, tk: v})),
        st.tuples(st.sampled_from([ik, ok]), st.sampled_from(JSON_BAD_TOKENS)).map(
            lambda kv: json.dumps({**good, kv[0]: kv[1]})),
        st.just(json.dumps({"unrelated": 1})),
    )


AZURE_BAD = st.sampled_from(["not a date,1,1", "2023-13-45 99:99:99,1,1", "2023-11-16 18:00:00,abc,1",
                             "2023-11-16 18:00:00,1", ",,", "2023-11-16 18:00:00,-1,1", "2023-11-16 18:00:00,1,2.5",
                             "2023-11-16 18:00:00,,7", "garbage"]) | JUNK.map(lambda j: f"{j},1,1")
BAD = {"csv": CSV_BAD, "jsonl": json_bad("jsonl"), "azure": AZURE_BAD, "mooncake": json_bad("mooncake")}


def write_log(path: Path, header: str | None, rows: list[str]) -> None:
    text = "\n".join(([header] if header else []) + rows) + "\n"
    path.write_bytes(text.encode("utf-8"))


@st.composite
def mixed_logs(draw: st.DrawFn) -> tuple[str, str | None, list[str], list[int]]:
    """(format, header, rows, 1-based line numbers of the garbage rows) with 1-8 garbage rows
    inserted among the good ones (JSON logs keep a good first line: it names the columns)."""
    fmt = draw(st.sampled_from(FORMATS))
    header, rows = good_rows(fmt)
    bad = draw(st.lists(BAD[fmt], min_size=1, max_size=8))
    first = 0 if header else 1
    for b in bad:
        rows.insert(draw(st.integers(first, len(rows))), b)
    goods = set(good_rows(fmt)[1])
    offset = 2 if header else 1
    lines = [i + offset for i, r in enumerate(rows) if r not in goods]
    return fmt, header, rows, lines


@SLOW
@given(case=mixed_logs())
def test_garbage_rows_are_counted_and_reported(case: tuple[str, str | None, list[str], list[int]]) -> None:
    _, header, rows, bad_lines = case
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log = tmp / f"log.{'csv' if header else 'jsonl'}"
        write_log(log, header, rows)
        pool = tmp / "out" / "pool.npz"
        r = run_cli("fit", log, "-o", pool)
        assert_ok(r, pool)
        warning = [x for x in r.err.splitlines() if "warning" in x]
        assert len(warning) == 1, r
        assert str(log) in warning[0] and f"skipped {len(bad_lines)} bad row(s)" in warning[0], r
        shown = [int(x) for x in re.findall(r"line (\d+):", warning[0])]
        assert shown == bad_lines[:5], (shown, bad_lines, r)  # the first five, in file order
        p = load_pool(pool)
        assert p.meta["fit"]["requests"] == N_GOOD and p.meta["fit"]["bad_rows"] == len(bad_lines)
        ref = tmp / "ref.csv"
        write_log(ref, *good_rows("csv", seed=1))
        c = run_cli("compare", log, ref)
        assert_ok(c)
        lines = [x for x in c.err.splitlines() if x.strip() and " read as " not in x]  # what each stream was read as
        assert len(lines) == 1 and lines[0].startswith(
            f"servegen-load: warning: {log}: skipped {len(bad_lines)} bad row(s) of {N_GOOD + len(bad_lines)} ("), c
        assert [int(x) for x in re.findall(r"line (\d+):", lines[0])] == bad_lines[:5], c


@st.composite
def unusable_logs(draw: st.DrawFn) -> tuple[str | None, list[str], tuple[str, ...]]:
    """(header, rows, phrases one of which the error names) of a log without a usable row."""
    fmt = draw(st.sampled_from(FORMATS))
    header, _ = good_rows(fmt)
    kind = draw(st.sampled_from(["all_bad", "all_bad", "no_time", "binary", "header_only"]))
    if kind == "all_bad":  # (a JSON log's first object names the columns: it may have no time key)
        return header, draw(st.lists(BAD[fmt], min_size=1, max_size=6)), ("no usable rows", "no time column")
    if kind == "no_time":
        return "alpha,beta,gamma", ["1,2,3", "4,5,6"], ("no time column",)
    if kind == "binary":
        junk = draw(st.binary(min_size=1, max_size=200)).replace(b"\n", b" ").decode("latin-1")
        assume(junk.strip())
        return None, [junk], ("",)
    return header or "timestamp,input_tokens,output_tokens", [], ("no usable rows",)


@SLOW
@given(case=unusable_logs())
def test_unusable_logs_fail_with_one_line(case: tuple[str | None, list[str], tuple[str, ...]]) -> None:
    header, rows, why = case
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        log = tmp / "log.txt"
        write_log(log, header, rows)
        pool = tmp / "pool.npz"
        line = assert_failed(run_cli("fit", log, "-o", pool), log, out=pool)
        assert any(w in line for w in why), line
        ref = tmp / "ref.csv"
        write_log(ref, *good_rows("csv"))
        for argv in (("compare", ref, log), ("compare", log, ref)):
            line = assert_failed(run_cli(*argv), log)
            assert any(w in line for w in why), line


@pytest.mark.parametrize("text, why", [
    (b"", "empty"), (b"\n\n  \n", "empty"), (b"\x1f\x8b\x08garbage", ""), (b"timestamp\n" + b"1\n" * 5, "fit needs input"),
    (b"timestamp,input_tokens,output_tokens\n" + b"".join(b"%d.0,1,1\n" % i for i in range(20))
     + b"1e300,1,1\n1e15,2,2\n", None),
    (b"timestamp,client,input_tokens,output_tokens\n" + b"".join(b"%d,c%d,5,5\n" % (i * 10**7, i) for i in range(40)),
     "client-windows"),
])
def test_log_edge_cases(tmp_path: Path, text: bytes, why: str | None) -> None:
    log, pool = tmp_path / "log.csv", tmp_path / "pool.npz"
    log.write_bytes(text)
    r = run_cli("fit", log, "-o", pool, "--min-requests", "1")
    if why is None:  # 1e300 / 1e15 s are bad rows (a wrong unit), the rest fits
        assert_ok(r, pool)
        assert "skipped 2 bad row(s)" in r.err and "line 22:" in r.err and "line 23:" in r.err
    else:
        assert why in assert_failed(r, log, out=pool)


@pytest.mark.parametrize("opts, field", [
    (["--ks-max", "nan"], "--ks-max"), (["--ks-max", "0"], "--ks-max"), (["--window", "0"], "--window"),
    (["--window", "nan"], "--window"), (["--data-window", "1"], "--data-window"), (["--range", "5:1"], "--range"),
    (["--range", "nan:"], "--range"), (["--column", "bogus=x"], "--column"), (["--time-unit", "fortnights"], "time unit"),
    (["--format", "xml"], "format"), (["--category", "video"], "category"), (["--format", "requests"], "header"),
])
def test_hostile_fit_options(tmp_path: Path, opts: list[str], field: str) -> None:
    log, pool = tmp_path / "log.csv", tmp_path / "pool.npz"
    write_log(log, *good_rows("csv"))
    assert field in assert_failed(run_cli("fit", log, "-o", pool, *opts), out=pool)


@pytest.mark.parametrize("opts, field", [
    (["--range-a", "x"], "--range-a"), (["--results-time", "never"], "--results-time"),
    (["--format-b", "xml"], "format"), (["--max-distance", "nan"], "--max-distance"),
    (["--max-distance", "-1"], "--max-distance"), (["--range-b", "1e9:"], "--range-b"),
])
def test_hostile_compare_options(tmp_path: Path, opts: list[str], field: str) -> None:
    log = tmp_path / "log.csv"
    write_log(log, *good_rows("csv"))
    html = tmp_path / "cmp.html"
    assert field in assert_failed(run_cli("compare", log, log, "--html", html, *opts), out=html)


def test_replay_of_a_trace_with_bad_rows(tmp_path: Path) -> None:
    """A replay scenario's trace: bad rows are one warning when generation succeeds, and no warning
    precedes the error line when the scenario fails later (or the trace has no usable row)."""
    header, rows = good_rows("csv")
    rows[5], rows[9] = "garbage", "1700000000.5,c1,-3,4"
    trace = tmp_path / "trace.csv"
    write_log(trace, header, rows)
    s, out = tmp_path / "s.yaml", tmp_path / "o.jsonl"
    s.write_text("replay: {path: trace.csv, format: csv}\nseed: 1\n")
    r = run_cli("generate", s, "-o", out)
    assert_ok(r, out)
    assert [x for x in r.err.splitlines() if "warning" in x] == [
        f"servegen-load: warning: {trace}: skipped 2 bad row(s) of {N_GOOD} (line 7: expected 4 fields, got 1; "
        "line 11: input_tokens: expected a non-negative integer)"]
    out.unlink()
    s.write_text("replay: {path: trace.csv, format: csv, time_scale: 1.0e-300}\nseed: 1\n")
    assert_failed(run_cli("generate", s, "-o", out), s, out=out)
    write_log(trace, header, ["garbage", "x,y,z,w"])
    assert_failed(run_cli("generate", s, "-o", out), s, trace, "no usable rows", out=out)


def test_log_errors_through_the_entry_point(tmp_path: Path) -> None:
    log, pool = tmp_path / "log.csv", tmp_path / "pool.npz"
    write_log(log, "timestamp,input_tokens,output_tokens", ["x,1,1", "y,2,2"])
    a, b = run_cli("fit", log, "-o", pool), run_entry_point("fit", log, "-o", pool)
    assert_failed(b, log, out=pool)
    assert (a.code, a.err) == (b.code, b.err)


# --------------------------------------------------------------------------- ServeGen folders

N_CLIENTS, N_WINDOWS = 3, 6


def servegen_folder(root: Path) -> Path:
    """A valid ServeGen language pool folder: 3 clients, 6 rate windows, 2 data windows."""
    folder = root / "language" / "m-x"
    folder.mkdir(parents=True)
    for c in range(N_CLIENTS):
        rows = [f"{w * 600},{0.5 + 0.1 * c},{1.2 + 0.1 * w},{'Gamma' if w % 2 else 'Weibull'},{0.8 + 0.1 * c},1.5"
                for w in range(N_WINDOWS)]
        (folder / f"chunk-{c}-trace.csv").write_text("\n".join(rows) + "\n")
        ds = {str(s): {"input_tokens": "{10: 0.25, 20: 0.5, 400: 0.25}", "output_tokens": "{5: 0.5, 50: 0.5}"}
              for s in (0, 1800)}
        (folder / f"chunk-{c}-dataset.json").write_text(json.dumps(ds, indent=2))
    return folder


def _not_a_literal(s: str) -> bool:
    try:
        parse_dict_literal(s)
    except ValueError:
        return True
    return False


BAD_LITERALS = st.one_of(
    st.sampled_from([
        "__import__('os').system('touch pwned')", "{1: __import__('os')}", "eval('{1: 1.0}')", "{1: 1.0} or 1",
        "{-5: 1.0}", "{1e300: 1.0}", "{1: inf}", "{1: nan}", "{1: 0.5}", "{1: 1.5, 2: -0.5}", "{1: 0.5, 1: 0.5}",
        "{1: 1.0", "1: 1.0}", "[1, 2]", "{'a': 1.0}", "{1: 1.0, }}", "{0x10: 1.0}", "{1: 1e-999, 2: 1.0}x", "",
        "{" * 1000, "{1:1.0}" * 2, "{1.0.0: 1.0}",
    ]),
    st.text(max_size=30).filter(_not_a_literal),
)
FAMILIES = {m.lower() for m in Family.__members__}


@st.composite
def broken_folders(draw: st.DrawFn) -> tuple[str, int, int | None, str | None, str]:
    """(where, client, 1-based line or None, field named or None, replacement) of one corruption."""
    where = draw(st.sampled_from(["trace", "trace", "literal", "literal", "dataset"]))
    c = draw(st.integers(0, N_CLIENTS - 1))
    if where == "trace":
        w = draw(st.integers(0, N_WINDOWS - 1))
        good = [str(w * 600), "0.5", "1.2", "Gamma", "0.8", "1.5"]
        kind = draw(st.sampled_from(["count", "junk", "value", "family", "shape"]))
        if kind == "count":
            n = draw(st.integers(1, 9).filter(lambda n: n != 6))
            return where, c, w + 1, None, ",".join((good * 2)[:n])
        if kind == "junk":
            j = draw(st.sampled_from([0, 1, 2, 4, 5]))
            junk = draw(JUNK)
            row = good.copy()
            row[j] = junk
            named = None if "," in junk else ["window_start", "rate", "iat_cv", None, "shape", "scale"][j]
            return where, c, w + 1, named, ",".join(row)
        if kind == "value":
            j = draw(st.sampled_from([0, 1, 2, 4, 5]))
            row = good.copy()
            row[j] = draw(st.sampled_from(["-1", "nan", "inf", "-inf", "1e39", "1e400"]))
            return where, c, w + 1, ["window_start", "rate", "iat_cv", None, "shape", "scale"][j], ",".join(row)
        if kind == "family":
            fam = draw(st.one_of(JUNK, st.just("")).filter(lambda s: s.strip().lower() not in FAMILIES))
            row = good.copy()
            row[3] = fam
            return where, c, w + 1, None if "," in fam else "family", ",".join(row)
        row = good.copy()
        row[4] = draw(st.sampled_from(["1e-9", "1e9", "0"]))
        return where, c, w + 1, "shape", ",".join(row)
    if where == "literal":
        field = draw(st.sampled_from(["input_tokens", "output_tokens"]))
        start = draw(st.sampled_from(["0", "1800"]))
        return where, c, None, f'"{start}".{field}', f"{start}|{field}|{draw(BAD_LITERALS)}"
    kind = draw(st.sampled_from(["truncate", "root", "deep", "nonstr", "key"]))
    return where, c, None, None, kind + "|" + str(draw(st.integers(1, 10**6)))


def _corrupt(folder: Path, case: tuple[str, int, int | None, str | None, str]) -> Path:
    where, c, line, _, what = case
    if where == "trace":
        f = folder / f"chunk-{c}-trace.csv"
        rows = f.read_text().splitlines()
        rows[line - 1] = what  # type: ignore[operator]
        f.write_text("\n".join(rows) + "\n")
        return f
    f = folder / f"chunk-{c}-dataset.json"
    doc = json.loads(f.read_text())
    if where == "literal":
        start, field, lit = what.split("|", 2)
        doc[start][field] = lit
        f.write_text(json.dumps(doc, indent=2))
        return f
    kind, n = what.split("|")
    text = json.dumps(doc, indent=2)
    if kind == "truncate":
        text = text[:int(n) % (len(text) - 1)]
    elif kind == "root":
        text = json.dumps([doc])
    elif kind == "deep":
        text = "[" * 50000 + "]" * 50000
    elif kind == "nonstr":
        doc["0"]["input_tokens"] = {"10": 1.0}
        text = json.dumps(doc)
    else:
        doc["soon"] = doc.pop("0")
        text = json.dumps(doc)
    f.write_text(text)
    return f


def test_valid_servegen_folder_imports(tmp_path: Path) -> None:
    out = tmp_path / "p.npz"
    assert_ok(run_cli("pool", "import", servegen_folder(tmp_path), "-o", out, "-q"), out)
    assert load_pool(out).n_clients == N_CLIENTS


@FAST
@given(case=broken_folders())
def test_malformed_servegen_folders(case: tuple[str, int, int | None, str | None, str]) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        folder = servegen_folder(tmp)
        bad_file = _corrupt(folder, case)
        out = tmp / "out" / "pool.npz"
        r = run_cli("pool", "import", folder, "-o", out, "-q")
        _, _, line, field, _ = case
        where = f"{bad_file}:{line}: " if line else str(bad_file)
        msg = assert_failed(r, where, out=out)
        if field:
            assert f"{field}: " in msg, msg
        assert not (tmp / "pwned").exists() and not Path("pwned").exists()


def test_servegen_errors_through_the_entry_point(tmp_path: Path) -> None:
    folder = servegen_folder(tmp_path)
    bad = _corrupt(folder, ("literal", 1, None, None, "0|input_tokens|__import__('os').system('touch pwned')"))
    out = tmp_path / "p.npz"
    a, b = run_cli("pool", "import", folder, "-o", out, "-q"), run_entry_point("pool", "import", folder, "-o", out, "-q",
                                                                               cwd=tmp_path)
    assert_failed(b, bad, '"0".input_tokens', out=out)
    assert (a.code, a.err) == (b.code, b.err)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("stray", ["1970-01-01T00:00:00Z", "2099-12-31T23:59:59Z"])
def test_a_stray_clock_row_is_dropped_not_a_pool_of_decades(tmp_path: Path, stray: str) -> None:
    """One row at epoch 0 beside three hours of traffic made a 56-year pool (3 million windows,
    1 GB, an `inspect` that never ended), and `--range` counted from 1970."""
    rng = np.random.default_rng(4)
    t0 = np.datetime64("2026-11-30T09:00:00", "s").astype(np.int64)
    times = np.sort(t0 + rng.uniform(0, 3 * 3600, 3000))
    rows = [f"{np.datetime64(int(x), 's')}Z,{rng.integers(10, 900)},{rng.integers(1, 300)}" for x in times]
    rows.insert(1500, f"{stray},100,10")
    log = tmp_path / "log.csv"
    write_log(log, "timestamp,prompt_tokens,completion_tokens", rows)
    r = run_cli("fit", log, "-o", tmp_path / "p.npz", "--range", "0:3600")
    assert_ok(r)
    assert "dropped 1 row(s) timed far from all the others" in r.err and stray[:10] in r.err
    pool = load_pool(tmp_path / "p.npz")
    assert pool.window_start.size <= 7 and 900 <= round(float(pool.rate.sum()) * pool.window) <= 1100


def test_the_client_is_the_account_not_a_mostly_empty_user_field(tmp_path: Path) -> None:
    """A LiteLLM spend log (api_key, user, team_id; `user` empty on most rows): `user` was guessed,
    and its empty value became one client holding 90 % of the traffic, without a word."""
    rng = np.random.default_rng(2)
    t0 = np.datetime64("2026-11-30T09:00:00", "s").astype(np.int64)
    rows = []
    for i, x in enumerate(np.sort(t0 + rng.uniform(0, 3600, 2000))):
        key = f"{'abc'[i % 3] * 8}{i % 3}"
        user = f"u{i % 7}" if i % 10 == 0 else ""
        rows.append(f"r{i},{np.datetime64(int(x), 's')}Z,{key},{user},team-{i % 3},{rng.integers(10, 900)},"
                    f"{rng.integers(1, 300)}")
    log = tmp_path / "spend.csv"
    write_log(log, "request_id,startTime,api_key,user,team_id,prompt_tokens,completion_tokens", rows)
    r = run_cli("fit", log, "-o", tmp_path / "p.npz")
    assert_ok(r)
    assert "client 'api_key'" in r.err and "WARNING" not in r.err, r.err
    assert load_pool(tmp_path / "p.npz").n_clients == 3
    r = run_cli("fit", log, "-o", tmp_path / "q.npz", "--client-column", "user")
    assert_ok(r)
    assert "WARNING: 90% of rows have an empty client value ('user' column)" in r.err, r.err
