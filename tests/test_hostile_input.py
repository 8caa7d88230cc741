"""Hostile input to `generate` and `inspect`: malformed scenarios, pool files and requests files.

Every malformed input must end with exit code 2 and one stderr line `servegen-load: error: ...`
naming the file (and line/field where there is one), never a traceback, and never an output file
(or a `.part` temporary) at the `-o` path. Inputs that a mutation happens to leave usable must
succeed cleanly. Hypothesis mutates the shipped scenarios and a small valid pool and requests
file; fixed cases cover what random mutation rarely reaches (alias bombs, a pickle payload). Also
here: the CLI's exit-code contract (typer usage errors, `sys.exit(1)`, `typer.Exit(1)`) and a scan
of the package source for code that could execute an input file (eval, pickle, unsafe YAML).
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import tokenize
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import yaml
from hostile import FAST, assert_clean, assert_failed, assert_ok, run_cli, run_entry_point
from hypothesis import given
from hypothesis import strategies as st

from servegen_load import cli
from servegen_load.errors import InputError
from servegen_load.workload.distributions import Family, LengthTable
from servegen_load.workload.pool import ClientPool, build_tables

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
TRACES = ROOT.parent / "shared" / "data" / "traces"

# --------------------------------------------------------------------------- values

NAN, INF = float("nan"), float("inf")
# wrong types, out-of-range and non-finite numbers, bad clock strings, structures where scalars go.
# Plausible mid-size numbers are left out on purpose: `rate: 5000` is valid and just slow.
HOSTILE_SCALARS = [None, True, False, 0, -1, 1, 2, 3, -0.5, 0.5, 1e-300, -1e-300, 1e300, -1e300, 10**30,
                   -10**30, 2**63, 2**64, -2**63, NAN, INF, -INF, 1e12, "25:99", "24:00", "20:60", "-1:00",
                   "20:00:61", "99:99:99", "1e999", "", " ", "abc", "nan", "\x00", "é" * 3, "20:00"]
HOSTILE = st.one_of(
    st.sampled_from(HOSTILE_SCALARS),
    st.integers(min_value=-3, max_value=3),
    st.text(max_size=8),
    st.sampled_from([[], {}, [1, 2, 3], [[[[]]]], {"a": 1}, {"from": "no-such-pool"}, ["m-large:0"],
                     [0.1, 0.2], {"top": -1}, [NAN, INF]]),
)


# --------------------------------------------------------------------------- scenarios

def _shipped_scenarios() -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(SCENARIOS.glob("*.yaml")):
        doc = yaml.safe_load(p.read_text())
        if "replay" in doc:  # paths in it are relative to scenarios/: make them absolute
            trace = (SCENARIOS / doc["replay"]["path"]).resolve()
            if not trace.is_file():
                continue
            doc["replay"]["path"] = str(trace)
        out[p.name] = doc
    return out


SHIPPED = _shipped_scenarios()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a decoded YAML tree (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path[:-1]:
        doc = doc[k]
    return doc


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> tuple[str, str]:
    """(base scenario name, YAML text): a shipped scenario with 1-3 values replaced, keys removed or
    unknown keys added, or the root replaced."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    doc = json.loads(json.dumps(SHIPPED[name]))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc) if isinstance(doc, dict) else []
        op = draw(st.sampled_from(["set", "set", "set", "delete", "unknown", "root"] if paths else ["root"]))
        # copies: a drawn {} or [] is the strategy's own object, and a later edit of it would change
        # what the strategy draws next (hypothesis: FlakyStrategyDefinition)
        if op == "root":
            doc = copy.deepcopy(draw(st.one_of(HOSTILE, st.lists(HOSTILE, max_size=3))))
            continue
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        if op == "set":
            parent[path[-1]] = copy.deepcopy(draw(HOSTILE))
        elif op == "delete":
            del parent[path[-1]]
        else:
            target = parent if isinstance(parent, dict) else doc
            target[draw(st.sampled_from(["unknown", "rates", "Pool", "startt", "x" * 40]))] = copy.deepcopy(draw(HOSTILE))
    return name, yaml.safe_dump(doc, allow_unicode=True)


BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 7))
# each is refused by `inspect` and `generate` alike
STRUCTURAL = [
    "", "   \n", "---\n...\n", "null\n", "[]\n", "42\n", "just a string\n", "pool: [unclosed\n",
    "pool: m-large\n\t- bad", "? [1, 2]\n: x\n",
    "pool: m-large\npool: m-small\nduration: 90\n",  # a duplicate key (YAML would keep the last)
    "pool: m-large\nduration: 90\nduration: 91\n",
    "pool: !!python/object/apply:os.system ['echo pwned']\nduration: 90\n",
    "[" * 3000 + "]" * 3000 + "\n",
    "a: &a [*a]\npool: m-large\nduration: 90\n",
    "x: &x {y: *x}\n",
    "l0: &l0 [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + BOMB + "pool: m-large\nclients: {ids: *l6}\n",
    "l0: &l0 [a, b, c, d, e, f, g, h, i, j]\n" + BOMB + "pool: m-large\nduration: 90\nclients:\n  ids: *l6\n",
]
# odd but possibly usable
RAW_SCENARIOS = [*STRUCTURAL,
                 "start: 20:00\npool: m-large\nduration: 90\n",  # unquoted clock: YAML 1.1 would read 1200
                 "pool: !!binary aGVsbG8=\nduration: 90\n",
                 "base: &b {rate: 5, input_tokens: 5, output_tokens: 5}\nnaive: {<<: *b, rate: 6}\nduration: 2\n"]


def _scenario_dir(tmp: Path) -> Path:
    """A folder with the shipped scenarios (a mutated naive.yaml still finds its `of:` file)."""
    for p in SCENARIOS.glob("*.yaml"):
        shutil.copy(p, tmp / p.name)
    return tmp


@FAST
@given(case=st.one_of(mutated_scenarios(), st.tuples(st.just("raw"), st.sampled_from(RAW_SCENARIOS)),
                      st.tuples(st.just("binary"), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))))
def test_malformed_scenarios_generate_and_inspect(case: tuple[str, str]) -> None:
    kind, text = case
    with tempfile.TemporaryDirectory() as d:
        tmp = _scenario_dir(Path(d))
        s = tmp / "hostile.yaml"
        s.write_bytes(text.encode("latin-1" if kind == "binary" else "utf-8"))
        r = run_cli("inspect", s)
        assert_clean(r, s)
        out = tmp / "out" / "requests.jsonl"
        g = run_cli("generate", s, "-o", out, "-q")
        assert_clean(g, s, out=out)
        if r.code == 2:  # inspect validates the file alone; generation cannot accept what it refused
            assert g.code == 2, (r, g)


EXTREMES = [None, True, -1, 0, 1e-300, NAN, INF, -INF, 1e300, 10**30, 2**64, "25:99", "", [], {"a": 1}]
SCENARIO_PATHS = [(name, path) for name, doc in SHIPPED.items() for path in _paths(doc)]


@pytest.mark.parametrize("name, path", SCENARIO_PATHS, ids=lambda x: ".".join(map(str, x)) if isinstance(x, tuple) else x)
def test_every_scenario_field_with_extreme_values(tmp_path: Path, name: str, path: tuple[Any, ...]) -> None:
    """Exhaustive where hypothesis samples: every field of every shipped scenario set to each extreme
    value (non-finite, huge, negative, wrong type) and removed."""
    tmp = _scenario_dir(tmp_path)
    for v in [*EXTREMES, "<delete>"]:
        doc = json.loads(json.dumps(SHIPPED[name]))
        parent = _parent(doc, path)
        if v == "<delete>":
            del parent[path[-1]]
        else:
            parent[path[-1]] = v
        s = tmp / "hostile.yaml"
        s.write_text(yaml.safe_dump(doc))
        r = run_cli("inspect", s)
        assert_clean(r, s)
        if r.code:
            continue  # generation validates the same way (the hypothesis test checks it)
        out = tmp / "o.jsonl"
        short = [] if path[-1] == "duration" else ["--duration", "5"]  # keep the valid cases quick
        assert_clean(run_cli("generate", s, "-o", out, "-q", *short), s, out=out)
        out.unlink(missing_ok=True)


@pytest.mark.parametrize("text", STRUCTURAL, ids=lambda t: repr(t[:24]))
def test_structural_yaml_attacks_fail_fast(tmp_path: Path, text: str) -> None:
    s = tmp_path / "s.yaml"
    s.write_text(text)
    out = tmp_path / "o.jsonl"
    assert_failed(run_cli("generate", s, "-o", out), s, out=out)
    assert_failed(run_cli("inspect", s), s)


def test_scenario_errors_name_the_field(tmp_path: Path) -> None:
    """... and the line to edit (the errors had no line), and the field a typo meant."""
    cases = {
        'pool: m-large\nstart: "25:99"\nduration: 90\n': ("start", 2),
        "pool: m-large\nduration: -5\n": ("duration", 2),
        "pool: m-large\nduration: .nan\n": ("duration", 2),
        "pool: m-large\nduration: 90\nrate: .inf\n": ("rate", 3),
        "pool: m-large\nduration: 90\nseed: 99999999999999999999999\n": ("seed", 3),
        "pool: m-large\nduration: 90\nspeed: 2\n": ("speed", 3),
        "pools:\n  - pool: m-large\n    weight: -1\nduration: 90\n": ("pools[0].weight", 3),
        "naive: {rate: 5, input_tokens: 1e30, output_tokens: 5}\nduration: 9\n": ("naive.input_tokens", 1),
        "pool: m-large\nduration: 90\nclients: {cv: [3, 1]}\n": ("clients.cv", 3),
        "pool: m-large\nduration: 90\nsessions:\n  turns: 0\n": ("sessions.turns", 4),
        "pool: m-large\nduration: 90\nsessions:\n  turns: {values: [0, 3]}\n": ("sessions.turns", 4),
    }
    for text, (field, n) in cases.items():
        s = tmp_path / "s.yaml"
        s.write_text(text)
        line = assert_failed(run_cli("inspect", s), s)
        assert f"{s}:{n}: {field}: " in line, line
    s.write_text("pool: m-large\nduraton: 90\nrate: 6\n")
    assert f"{s}:2: duraton: unknown field; did you mean duration?" in assert_failed(run_cli("inspect", s), s)


@pytest.mark.parametrize("text, why", [
    ("pool: m-large\nduration: 90\nrate: 1e300\n", "requests"),
    ("pool: m-large\nduration: 90\ntime_scale: 1e-300\n", "run would last"),
    ("pool: m-large\nduration: 90\ntime_scale: 1e12\n", "req/s"),
    ("naive: {rate: 1e9, input_tokens: 5, output_tokens: 5}\nduration: 1e6\n", "requests"),
])
def test_absurd_sizes_are_refused_before_writing(tmp_path: Path, text: str, why: str) -> None:
    """A rate or duration off by orders of magnitude is one line, not hours of work or an OOM kill."""
    s = tmp_path / "s.yaml"
    s.write_text(text)
    out = tmp_path / "o.jsonl"
    assert why in assert_failed(run_cli("generate", s, "-o", out), s, out=out)


def test_failure_while_writing_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in the middle of the stream (after the header and a block are written) removes the
    temporary file: nothing at -o looks complete."""
    from servegen_load import requests_writer

    calls = {"n": 0}
    real = requests_writer.RowFormatter.format

    def failing(self: Any, b: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] > 1:
            raise InputError("simulated failure in the middle of the stream", path="block")
        return real(self, b)

    monkeypatch.setattr(requests_writer.RowFormatter, "format", failing)
    s = tmp_path / "s.yaml"
    s.write_text("naive: {rate: 2000, input_tokens: 5, output_tokens: 5}\nduration: 200\n")
    out = tmp_path / "o.jsonl"
    assert_failed(run_cli("generate", s, "-o", out), "simulated", out=out)
    assert calls["n"] == 2


def test_output_path_errors_name_the_output(tmp_path: Path) -> None:
    s = tmp_path / "s.yaml"
    s.write_text("naive: {rate: 5, input_tokens: 5, output_tokens: 5}\nduration: 2\n")
    (tmp_path / "adir").mkdir()
    assert_failed(run_cli("generate", s, "-o", tmp_path / "adir"), tmp_path / "adir")
    assert not list((tmp_path).glob(".adir.*.part"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_failed(run_cli("generate", s, "-o", blocker / "o.jsonl"), blocker / "o.jsonl")


@pytest.mark.parametrize("opts, field", [
    (["--seed", "-1"], "--seed"), (["--seed", str(2**64)], "--seed"), (["--shard", "3/2"], "--shard"),
    (["--shard", "x"], "--shard"), (["--duration", "nan"], "--duration"), (["--duration", "-1"], "--duration"),
    (["--duration", "inf"], "duration"),
])
def test_hostile_generate_options(tmp_path: Path, opts: list[str], field: str) -> None:
    s = tmp_path / "s.yaml"
    s.write_text("naive: {rate: 5, input_tokens: 5, output_tokens: 5}\nduration: 2\n")
    out = tmp_path / "o.jsonl"
    assert field in assert_failed(run_cli("generate", s, "-o", out, *opts), out=out)


# --------------------------------------------------------------------------- pools

def small_pool() -> ClientPool:
    """3 clients, 6 rate windows of 600 s, 2 data windows: ~900 requests over the hour."""
    c, w = 3, 6
    rate = np.full((c, w), 0.5, np.float32)
    rate[2, :2] = 0.0
    active = rate > 0
    tables = [LengthTable(np.array([10.0, 20.0, 40.0]), np.array([0.3, 0.8, 1.0])),
              LengthTable(np.array([5.0, 50.0]), np.array([0.5, 1.0]))]
    values, cdf, offsets = build_tables(tables)
    table_index = np.zeros((c, 2, 2), np.int32)
    table_index[:, :, 1] = 1
    return ClientPool(
        name="tiny", category="language", clients=["tiny:0", "tiny:1", "tiny:2"], window=600.0,
        window_start=np.arange(w) * 600.0, rate=rate, cv=np.where(active, 1.2, 0).astype(np.float32),
        family=np.where(active, Family.GAMMA, Family.NONE).astype(np.int8),
        shape=np.where(active, 0.8, 0).astype(np.float32), scale=np.ones((c, w), np.float32),
        data_window=1800.0, data_start=np.array([0.0, 1800.0]), fields=["input_tokens", "output_tokens"],
        table_index=table_index, values=values.astype(np.float32), cdf=cdf.astype(np.float32), offsets=offsets)


def _pool_arrays() -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "p.npz"
        small_pool().save(p)
        buf.write(p.read_bytes())
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


BASE_POOL = _pool_arrays()
BASE_META = json.loads(BASE_POOL["meta_json"].tobytes())
POKES = [NAN, INF, -INF, -1, -1e30, 1e30, 1e39, 2**40, 0, 5, 127, -128, 0.5]


def _poke(a: np.ndarray, i: int, v: float) -> np.ndarray:
    b = a.astype(np.float64) if (a.dtype.kind in "iu" and (not float(v).is_integer() or abs(v) > 2**31)) else a.copy()
    if b.size:
        with np.errstate(over="ignore", invalid="ignore"):
            b.flat[i % b.size] = v
    return b


@st.composite
def mutated_pools(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], str]:
    """(arrays, byte edit) of a pool file: 1-2 array or metadata edits, optionally a byte edit."""
    arrays = {k: v.copy() for k, v in BASE_POOL.items()}
    meta = json.loads(json.dumps(BASE_META))
    meta_raw: bytes | None = None
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["array", "array", "meta", "meta_raw"]))
        if kind == "array":
            k = draw(st.sampled_from(sorted(k for k in arrays if k != "meta_json")))
            a = arrays[k]
            edit = draw(st.sampled_from(["drop", "reverse", "str", "complex", "empty", "flatten", "extra_dim",
                                         "poke", "poke", "poke", "object", "float", "transpose", "bool"]))
            if edit == "drop":
                del arrays[k]
            elif edit == "reverse":
                arrays[k] = a[::-1].copy()
            elif edit == "str":
                arrays[k] = a.astype(str)
            elif edit == "complex":
                arrays[k] = a.astype(np.complex128)
            elif edit == "empty":
                arrays[k] = a[:0]
            elif edit == "flatten":
                arrays[k] = a.reshape(-1)
            elif edit == "extra_dim":
                arrays[k] = a[..., None]
            elif edit == "object":
                arrays[k] = np.array([{"payload": 1}, None], dtype=object)
            elif edit == "float":
                arrays[k] = a.astype(np.float64) + 0.5
            elif edit == "transpose":
                arrays[k] = a.T.copy()
            elif edit == "bool":
                arrays[k] = a.astype(bool)
            else:
                arrays[k] = _poke(a, draw(st.integers(0, 10**6)), draw(st.sampled_from(POKES)))
        elif kind == "meta":
            key = draw(st.sampled_from(["format", "name", "category", "clients", "window", "data_window", "fields",
                                        "fallback"]))
            if draw(st.booleans()):
                meta.pop(key, None)
            else:
                meta[key] = draw(HOSTILE)
        else:
            meta_raw = draw(st.one_of(st.binary(max_size=64), st.sampled_from(
                [b"", b"null", b"[]", b"{}", b"[" * 100000, b'{"format": "servegen-load/pool/v1"}'])))
    arrays["meta_json"] = np.frombuffer(meta_raw if meta_raw is not None else
                                        json.dumps(meta).encode(), dtype=np.uint8)
    byte_edit = draw(st.sampled_from(["none", "none", "flip", "truncate"]))
    return arrays, byte_edit


def _write_pool(path: Path, arrays: dict[str, np.ndarray], byte_edit: str, seed: int) -> None:
    np.savez_compressed(path, **arrays)  # object arrays are pickled here; loading must refuse them
    if byte_edit == "none":
        return
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    if byte_edit == "truncate":
        del data[int(rng.integers(0, len(data))):]
    else:
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[i] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))


@FAST
@given(case=mutated_pools(), seed=st.integers(0, 2**32 - 1))
def test_corrupted_pools_inspect_and_generate(case: tuple[dict[str, np.ndarray], str], seed: int) -> None:
    arrays, byte_edit = case
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pool = tmp / "pool.npz"
        _write_pool(pool, arrays, byte_edit, seed)
        r = run_cli("inspect", pool)
        assert_clean(r, pool)
        s = tmp / "s.yaml"
        s.write_text(f"pool: {pool}\nstart: 0\nduration: 600\n")
        out = tmp / "o.jsonl"
        g = run_cli("generate", s, "-o", out, "-q")
        if r.code == 2:  # a pool inspect refuses cannot be generated from; both files are named
            assert_failed(g, s, pool, out=out)
        else:
            assert_clean(g, s, out=out)


ARRAY_EDITS = {
    "drop": lambda a: None, "reverse": lambda a: a[::-1].copy(), "str": lambda a: a.astype(str),
    "complex": lambda a: a.astype(np.complex128), "empty": lambda a: a[:0], "flatten": lambda a: a.reshape(-1),
    "extra_dim": lambda a: a[..., None], "object": lambda a: np.array([{"x": 1}, None], dtype=object),
    "float": lambda a: a.astype(np.float64) + 0.5, "bool": lambda a: a.astype(bool),
    "huge_int": lambda a: _poke(a.astype(np.int64), 1, 2**62),
    **{f"poke {v!r}": functools.partial(lambda a, v: _poke(a, 1, v), v=v) for v in POKES},
}


@pytest.mark.parametrize("array", sorted(k for k in BASE_POOL if k != "meta_json"))
def test_every_pool_array_with_every_edit(tmp_path: Path, array: str) -> None:
    """Exhaustive where hypothesis samples: each array of the pool file dropped, retyped, reshaped or
    given a non-finite, negative or huge element, through `inspect` and generation."""
    s = tmp_path / "s.yaml"
    for i, (edit, f) in enumerate(ARRAY_EDITS.items()):
        arrays = dict(BASE_POOL)
        new = f(arrays[array])
        note = f"{array}: {edit}"
        if new is None:
            del arrays[array]
        else:
            arrays[array] = new
        pool = tmp_path / f"p{i}.npz"
        np.savez(pool, **arrays)
        r = run_cli("inspect", pool)
        assert r.code in (0, 2), note
        assert_clean(r, pool)
        s.write_text(f"pool: {pool}\nduration: 600\n")
        out = tmp_path / "o.jsonl"
        g = run_cli("generate", s, "-o", out, "-q")
        if r.code == 2:
            assert_failed(g, s, pool, out=out)
        else:
            assert_clean(g, s, out=out)
        out.unlink(missing_ok=True)


@pytest.mark.parametrize("key", ["format", "name", "category", "clients", "window", "data_window", "fields",
                                 "fallback"])
def test_every_pool_metadata_key_with_extreme_values(tmp_path: Path, key: str) -> None:
    for i, v in enumerate([*EXTREMES, "<delete>", ["x"] * 3, [1, 2, 3], "m-large"]):
        meta = json.loads(json.dumps(BASE_META))
        if v == "<delete>":
            meta.pop(key)
        else:
            meta[key] = v
        arrays = {**BASE_POOL, "meta_json": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        pool = tmp_path / f"p{i}.npz"
        np.savez(pool, **arrays)
        assert_clean(run_cli("inspect", pool), pool)


def test_pool_with_pickled_object_array_is_not_unpickled(tmp_path: Path) -> None:
    """A .npz whose array would need pickle: refused with one line, and the payload never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    arrays = dict(BASE_POOL)
    arrays["rate"] = np.array([Payload()], dtype=object)
    pool = tmp_path / "evil.npz"
    np.savez(pool, **arrays)
    assert_failed(run_cli("inspect", pool), pool)
    s = tmp_path / "s.yaml"
    s.write_text(f"pool: {pool}\nduration: 60\n")
    assert_failed(run_cli("generate", s, "-o", tmp_path / "o.jsonl"), s, pool, out=tmp_path / "o.jsonl")
    assert not marker.exists()


@pytest.mark.parametrize("edit, field", [
    (lambda a, m: a.update(rate=_poke(a["rate"], 3, NAN)), "rate"),
    (lambda a, m: a.update(offsets=_poke(a["offsets"], 1, -5)), "offsets"),
    (lambda a, m: a.update(table_index=_poke(a["table_index"], 0, 99)), "table_index"),
    (lambda a, m: a.update(table_index=a["table_index"].astype(np.float32)), "table_index"),
    (lambda a, m: a.update(cdf=_poke(a["cdf"], 0, 2.0)), "cdf"),
    (lambda a, m: a.update(shape=_poke(a["shape"], 2, 1e-9)), "shape"),
    (lambda a, m: a.update(window_start=a["window_start"][::-1].copy()), "window_start"),
    (lambda a, m: m.update(clients=["x", "x", "y"]), "clients"),
    (lambda a, m: m.update(fields=["output_tokens", "foo"]), "fields"),
    (lambda a, m: m.update(window="600"), "window"),
])
def test_pool_errors_name_the_array(tmp_path: Path, edit: Any, field: str) -> None:
    arrays, meta = dict(BASE_POOL), json.loads(json.dumps(BASE_META))
    edit(arrays, meta)
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    pool = tmp_path / "p.npz"
    np.savez(pool, **arrays)
    assert f": {field}: " in assert_failed(run_cli("inspect", pool), pool)


def test_pool_rewritten_under_the_same_name_is_reloaded(tmp_path: Path) -> None:
    """The per-process pool cache is keyed by the file's version: a repaired pool is not shadowed
    by the broken one read earlier (nor the reverse)."""
    pool, s = tmp_path / "p.npz", tmp_path / "s.yaml"
    s.write_text(f"pool: {pool}\nduration: 600\n")
    small_pool().save(pool)
    assert_ok(run_cli("generate", s, "-o", tmp_path / "a.jsonl"), tmp_path / "a.jsonl")
    arrays = dict(BASE_POOL)
    arrays["rate"] = _poke(arrays["rate"], 0, NAN)
    np.savez(pool, **arrays)
    os.utime(pool, ns=(1, 1))
    assert_failed(run_cli("generate", s, "-o", tmp_path / "b.jsonl"), pool, out=tmp_path / "b.jsonl")


# --------------------------------------------------------------------------- requests files

HEADER = {"format": "servegen-load/requests/v1", "seed": 1, "source": "hostile", "duration": 30.0}


def base_requests() -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.exponential(0.5, 40))
    out = []
    for i, ti in enumerate(t):
        d: dict[str, Any] = {"id": f"c{i % 3}#{i}", "t": round(float(ti), 6), "client": f"c{i % 3}",
                             "category": "reason" if i % 4 == 0 else "language",
                             "input_tokens": int(rng.integers(1, 900)), "output_tokens": int(rng.integers(5, 300))}
        if i % 4 == 0:
            d["reason_tokens"] = d["output_tokens"] // 2
        if i % 5 == 0:
            d["images"] = [576, 576]
        out.append(d)
    return out


BASE_REQUESTS = base_requests()
# per field: values that break the record's contract (each must be refused)
INVALID = {
    "id": [None, [], {}, 1.5, True],
    "t": ["x", -1, None, True, 1e300, [], "1.5", -1e-9],
    "client": [None, [], {}, 1.5, False],
    "category": [None, 5, [], {}],
    "input_tokens": [-1, 1.5, "5", None, True, 2**31, 2**70, 1e300, [], {}],
    "output_tokens": [-3, 0.25, "x", None, False, 2**40],
    "reason_tokens": ["x", -1, 1.5, 10**9, []],
    "images": [5, [-1], ["a"], [1.5], {}, [True], [2**40]],
    "prefix": ["ab", [None]],
    "turn": [-1, "x", 1.5],
    "think_time": [-1, "x", [], 1e300],
    "session": [[], {}, 1.5],
}
BROKEN_LINES = ["{", '{"id": 1', "null", "[]", '"x"', "1", '{"a": 1}', '{"a": 1}{"b": 2}', '{"a": 1},{"b": 2}',
                "\x00\x01", "ÿþ", '{"t": NaN}', "[" * 5000]
BAD_HEADERS = [
    ({**HEADER, "seed": "one"}, "seed"), ({**HEADER, "seed": -1}, "seed"), ({**HEADER, "duration": "x"}, "duration"),
    ({**HEADER, "duration": -5}, "duration"), ({**HEADER, "duration": 1e300}, "duration"),
    ({**HEADER, "shard": 5}, "shard"), ({**HEADER, "shard": "3/2"}, "shard"), ({**HEADER, "source": []}, "source"),
]


def _dump(d: Any) -> str:
    return json.dumps(d, allow_nan=True) if not isinstance(d, str) else d


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[list[str], int | None, str | None]:
    """(lines, expected error line or None when the file stays usable, expected field)."""
    reqs = json.loads(json.dumps(BASE_REQUESTS))
    lines = [_dump(HEADER)] + [_dump(r) for r in reqs]
    kind = draw(st.sampled_from(["field", "field", "drop", "broken", "order", "header", "harmless", "hostile"]))
    i = draw(st.integers(0, len(reqs) - 1))
    n = i + 2  # 1-based file line of request i
    if kind == "field":
        k = draw(st.sampled_from(sorted(INVALID)))
        v = draw(st.sampled_from(INVALID[k]))
        lines[i + 1] = _dump({**reqs[i], k: v})
        return lines, n, None  # the field is named unless the value breaks JSON itself (NaN, 2**70)
    if kind == "drop":
        k = draw(st.sampled_from(["id", "t", "client", "category", "input_tokens", "output_tokens"]))
        lines[i + 1] = _dump({kk: vv for kk, vv in reqs[i].items() if kk != k})
        return lines, n, k
    if kind == "broken":
        lines[i + 1] = draw(st.sampled_from(BROKEN_LINES))
        return lines, n, None
    if kind == "order":
        j = draw(st.integers(0, len(reqs) - 1).filter(lambda j: j != i))
        a, b = min(i, j), max(i, j)
        lines[a + 1], lines[b + 1] = lines[b + 1], lines[a + 1]
        return lines, a + 3, "t"  # request a (line a + 2) now holds a later t than the next line
    if kind == "header":
        head, field = draw(st.sampled_from(BAD_HEADERS))
        lines[0] = _dump(head)
        return lines, 1, field
    if kind == "harmless":  # keys other tools add, blank lines, integer ids, integral floats
        edit = draw(st.sampled_from(["extra", "blank", "int_id", "float_tokens"]))
        if edit == "extra":
            lines[i + 1] = _dump({**reqs[i], "x-trace": {"a": [1]}})
        elif edit == "blank":
            lines.insert(i + 1, "   ")
        elif edit == "int_id":
            lines[i + 1] = _dump({**reqs[i], "id": 7})
        else:
            lines[i + 1] = _dump({**reqs[i], "input_tokens": 12.0})
        return lines, None, None
    k = draw(st.sampled_from(sorted(reqs[i])))
    lines[i + 1] = _dump({**reqs[i], k: draw(HOSTILE)})
    return lines, -1, None  # may or may not be valid


@FAST
@given(case=mutated_requests())
def test_malformed_requests_files(case: tuple[list[str], int | None, str | None]) -> None:
    lines, bad_line, field = case
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "requests.jsonl"
        p.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
        r = run_cli("inspect", p, "--json")
        if bad_line is None:
            assert_ok(r)
            assert json.loads(r.out)["requests"] == len(BASE_REQUESTS)
        elif bad_line == -1:
            assert_clean(r, p)
        else:
            where = f"{p}:{bad_line}: " if bad_line > 1 or field else str(p)
            line = assert_failed(r, where)
            if field:
                assert f": {field}: " in line, line


def test_request_field_errors_name_line_and_field(tmp_path: Path) -> None:
    for k, values in INVALID.items():
        for v in values:
            if (isinstance(v, float) and math.isnan(v)) or (type(v) is int and v >= 2**64):
                continue  # not JSON orjson reads: an "invalid JSON" line error instead
            lines = [_dump(HEADER), _dump(BASE_REQUESTS[0]), _dump({**BASE_REQUESTS[4], k: v})]
            p = tmp_path / "r.jsonl"
            p.write_text("\n".join(lines) + "\n")
            assert_failed(run_cli("inspect", p), f"{p}:3: {k}: ")


def test_requests_with_scenario_fidelity_reject_bad_lines(tmp_path: Path) -> None:
    s = tmp_path / "s.yaml"
    s.write_text("naive: {rate: 20, input_tokens: 5, output_tokens: 7}\nduration: 5\nseed: 3\n")
    out = tmp_path / "r.jsonl"
    assert_ok(run_cli("generate", s, "-o", out, "-q"), out)
    assert_ok(run_cli("inspect", out, "--scenario", s))
    lines = out.read_text().splitlines()
    lines[3] = lines[3].replace('"output_tokens":7', '"output_tokens":-7')
    out.write_text("\n".join(lines) + "\n")
    assert_failed(run_cli("inspect", out, "--scenario", s), f"{out}:4: output_tokens: ")


# --------------------------------------------------------------------------- the real entry point

def test_entry_point_behaves_like_in_process(tmp_path: Path) -> None:
    """The console script gives the same exit code and the same one line as `cli.main` in-process."""
    s = tmp_path / "s.yaml"
    s.write_text('pool: m-large\nstart: "25:99"\nduration: 90\n')
    pool = tmp_path / "p.npz"
    arrays = dict(BASE_POOL)
    arrays["rate"] = np.array([object()], dtype=object)
    np.savez(pool, **arrays)
    req = tmp_path / "r.jsonl"
    req.write_text(_dump(HEADER) + "\n" + _dump({**BASE_REQUESTS[0], "t": "soon"}) + "\n")
    out = tmp_path / "o.jsonl"
    for argv in (["generate", s, "-o", out], ["inspect", s], ["inspect", pool], ["inspect", req]):
        a, b = run_cli(*argv), run_entry_point(*argv)
        assert_failed(b, argv[1], out=out)
        assert (a.code, a.err) == (b.code, b.err)
    usage = run_entry_point("generate")
    assert usage.code == 2 and "Traceback" not in usage.err and "Missing argument" in usage.err


# --------------------------------------------------------------------------- exit codes of the CLI

@pytest.mark.parametrize("argv, text", [
    (["generate"], "Missing argument"),
    (["generate", "s.yaml"], "Missing option"),
    (["generate", "s.yaml", "-o", "x", "--seed", "abc"], "--seed"),
    (["inspect", "x", "--bogus"], "--bogus"),
    (["no-such-command"], "no-such-command"),
    (["pool", "import"], "Missing argument"),
    (["fit", "a.csv", "-o", "p.npz", "--window", "ten"], "--window"),
])
def test_usage_errors_exit_2(argv: list[str], text: str) -> None:
    """One line naming the mistake and where the help is, as for any bad input (not click's panel)."""
    r = run_cli(*argv)
    assert r.code == 2 and "Traceback" not in r.err and text in r.err, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("servegen-load: error: ") and "--help" in lines[0], r


@pytest.fixture
def exit_commands() -> Any:
    """Two throwaway commands on the real app: one raises typer.Exit(code), one calls sys.exit(code)."""
    @cli.app.command("zz-typer-exit")
    def typer_exit(code: int = typer.Option(1, "--code")) -> None:
        raise typer.Exit(code)

    @cli.app.command("zz-sys-exit")
    def sys_exit(code: int = typer.Option(1, "--code")) -> None:
        sys.exit(code)

    @cli.app.command("zz-input-error")
    def input_error() -> None:
        raise InputError("bad thing", path="f.txt", line=3, field="x")

    yield
    cli.app.registered_commands[:] = [c for c in cli.app.registered_commands if not (c.name or "").startswith("zz-")]


@pytest.mark.parametrize("cmd", ["zz-typer-exit", "zz-sys-exit"])
@pytest.mark.parametrize("code", [0, 1, 3])
def test_commands_keep_their_exit_code(exit_commands: Any, cmd: str, code: int) -> None:
    r = run_cli(cmd, "--code", code)
    assert r.code == code and "Traceback" not in r.err, r


def test_input_error_is_one_line_exit_2(exit_commands: Any) -> None:
    r = run_cli("zz-input-error")
    assert_failed(r, "f.txt:3: x: bad thing")


def test_compare_max_distance_exits_1(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("t,input_tokens,output_tokens\n" + "".join(f"{i},{10 + i},{5}\n" for i in range(200)))
    b.write_text("t,input_tokens,output_tokens\n" + "".join(f"{i * 3},{900 + i},{50}\n" for i in range(200)))
    r = run_cli("compare", a, b, "--max-distance", "0.01")  # whole-number relative times: unit unknown
    assert r.code == 2 and "--time-unit" in r.err and "Traceback" not in r.err, r
    r = run_cli("compare", a, b, "--time-unit", "s", "--max-distance", "0.01")
    assert r.code == 1 and "Traceback" not in r.err and "FAIL" in r.out, r
    assert run_cli("compare", a, a, "--time-unit", "s", "--max-distance", "0.01").code == 0


# --------------------------------------------------------------------------- no code execution

PACKAGE = ROOT / "servegen_load"


def _code_only(path: Path) -> list[tuple[int, str]]:
    """(line number, source line) with comments and string literals blanked out."""
    src = path.read_text(encoding="utf-8")
    lines = src.splitlines()
    out = [list(x) for x in lines]
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                row = out[r - 1]
                a = c0 if r == r0 else 0
                b = c1 if r == r1 else len(row)
                row[a:b] = " " * (b - a)
    return [(i + 1, "".join(x)) for i, x in enumerate(out)]


FORBIDDEN = [
    (re.compile(r"\beval\s*\(|literal_eval|\bexec\s*\("), "eval/exec"),
    (re.compile(r"\bimport\s+(c?pickle|dill|shelve|marshal|joblib)\b|\bfrom\s+(c?pickle|dill|shelve|marshal|joblib)\b"
                r"|\b(c?pickle|dill|shelve|marshal)\.\w+"), "pickle-like deserialisation"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"yaml\.(unsafe_load|full_load|load_all|unsafe_load_all)\s*\(|Loader\s*=\s*yaml\.(Loader|FullLoader|UnsafeLoader)\b"),
     "unsafe YAML"),
]


def test_package_source_never_executes_input() -> None:
    """No eval/exec, no pickle (or a relative), no unsafe YAML anywhere in the package; every
    `yaml.load(` passes a SafeLoader subclass and every `np.load(` says `allow_pickle=False`."""
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for f in files:
        code = _code_only(f)
        text = "\n".join(c for _, c in code)
        for n, line in code:
            for rx, what in FORBIDDEN:
                if rx.search(line):
                    problems.append(f"{f.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
        for m in re.finditer(r"yaml\.load\s*\(", text):
            call = text[m.end():m.end() + 200]
            loader = re.search(r"Loader\s*=\s*([\w.]+)", call)
            cls = None
            if loader:
                mod = ".".join(f.relative_to(ROOT).with_suffix("").parts)
                ns = vars(__import__(mod, fromlist=["_"]))
                cls = ns.get(loader.group(1)) or getattr(yaml, loader.group(1).removeprefix("yaml."), None)
            if not (isinstance(cls, type) and issubclass(cls, yaml.SafeLoader)):
                n = text[:m.start()].count("\n") + 1
                problems.append(f"{f.relative_to(ROOT)}:{n}: yaml.load without a SafeLoader subclass")
        for m in re.finditer(r"\bnp\.load\s*\(", text):
            depth, j = 1, m.end()
            while depth and j < len(text):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            if not re.search(r"allow_pickle\s*=\s*False", text[m.end():j]):
                n = text[:m.start()].count("\n") + 1
                problems.append(f"{f.relative_to(ROOT)}:{n}: np.load without allow_pickle=False")
    assert not problems, "\n".join(problems)


def test_source_scan_catches_what_it_looks_for(tmp_path: Path) -> None:
    """The scanner itself: each forbidden construct is found, and the same words in comments or
    strings are not."""
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nx = eval('1')\ny = np.load(f, allow_pickle=True)\nimport yaml\n"
                   "z = yaml.full_load(s)\n# eval( pickle in a comment\ns = 'eval( pickle.loads'\n")
    found = {what for n, line in _code_only(bad) for rx, what in FORBIDDEN if rx.search(line)}
    assert found == {"eval/exec", "pickle-like deserialisation", "allow_pickle=True", "unsafe YAML"}
    hits = [n for n, line in _code_only(bad) for rx, _ in FORBIDDEN if rx.search(line)]
    assert max(hits) <= 5
