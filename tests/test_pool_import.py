"""ServeGen import: the pools hold ServeGen's data (rates as in the CSVs, lengths within KS 0.005 of the
dataset JSONs), fallback clients are exactly those without length data, bad input fails in one line.

The originals are re-read here with independent code (`csv`, `ast.literal_eval`), not the importer's
parser. m-large is checked on the shipped file (importing it takes ~7 s); the import itself runs on
m-small, mm-image and deepseek-r1.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servegen_load.errors import InputError
from servegen_load.workload.distributions import Family, LengthTable, ks_distance
from servegen_load.workload.pool import SHIPPED, ClientPool, load_pool
from servegen_load.workload.servegen_import import import_servegen, parse_dict_literal

ROOT = Path(__file__).resolve().parents[1]
SERVEGEN = ROOT.parent / "shared" / "data" / "servegen"
FOLDERS = {"m-large": "language/m-large", "m-small": "language/m-small",
           "mm-image": "multimodal/mm-image", "deepseek-r1": "reason/deepseek-r1"}
KS_LIMIT = 0.005


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def imported() -> dict[str, tuple[ClientPool, list[str]]]:
    """m-small, mm-image, deepseek-r1 imported fresh (with the warnings they printed); m-large shipped."""
    out: dict[str, tuple[ClientPool, list[str]]] = {}
    for name in ("m-small", "mm-image", "deepseek-r1"):
        warnings: list[str] = []
        out[name] = (import_servegen(SERVEGEN / FOLDERS[name], progress=False, warn=warnings.append), warnings)
    out["m-large"] = (load_pool("m-large"), [])
    return out


def chunk_ids(name: str, kind: str) -> list[int]:
    pat = re.compile(rf"^chunk-(\d+)-{kind}$")
    return sorted(int(m.group(1)) for p in (SERVEGEN / FOLDERS[name]).iterdir() if (m := pat.match(p.name)))


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return {
        "window_start": np.array([float(r[0]) for r in rows]),
        "rate": np.array([float(r[1]) for r in rows]),
        "cv": np.array([float(r[2]) for r in rows]),
        "family": np.array([{"": 0, "Gamma": int(Family.GAMMA), "Weibull": int(Family.WEIBULL)}[r[3]] for r in rows]),
        "shape": np.array([float(r[4]) for r in rows]),
        "scale": np.array([float(r[5]) for r in rows]),
    }


def original_table(literal: str) -> LengthTable | None:
    d = ast.literal_eval(literal)
    if not d:
        return None
    return LengthTable.from_pmf(np.array(list(d.keys()), dtype=np.float64), np.array(list(d.values())))


def stored_vs_original_ks(stored: LengthTable, original: LengthTable) -> float:
    # the pool stores float32: compare on the float32 grid (0.362 and float32(0.362) are one length)
    orig32 = LengthTable(original.values.astype(np.float32).astype(np.float64), original.cdf)
    return ks_distance(stored, orig32)


# --- the dict-literal parser -------------------------------------------------------------------


def test_parser_reads_literals_in_their_forms() -> None:
    k, p = parse_dict_literal("{1: 0.25, 2: 0.75}")
    assert k.tolist() == [1.0, 2.0] and p.tolist() == [0.25, 0.75]
    k, p = parse_dict_literal(" {0.002:5e-01 ,\n 1.0: .5,} ")
    assert k.tolist() == [0.002, 1.0] and p.tolist() == [0.5, 0.5]
    k, p = parse_dict_literal("{}")
    assert k.size == 0 and p.size == 0


@pytest.mark.parametrize("text", [
    "{__import__('os').system('true'): 1.0}", "{1: 1.0", "1: 1.0}", "{1 1.0}", "{1: 0.5 2: 0.5}",
    "{'a': 1.0}", "{1: nan}", "{inf: 1.0}", "{1: 1e999}", "{1: -0.5, 2: 1.5}", "{1: 0.5, 1: 0.5}",
    "{1: 0.2, 2: 0.2}", "[1, 2]", "", "{1: 1.0}; import os", "{1: 0.5, 2: 0.5,,}",
])
def test_parser_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dict_literal(text)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(0, 10**6), st.floats(1e-6, 1.0), min_size=1, max_size=50))
def test_parser_agrees_with_literal_eval(d: dict[int, float]) -> None:
    total = sum(d.values())
    text = repr({k: v / total for k, v in d.items()})
    keys, probs = parse_dict_literal(text)
    ref = ast.literal_eval(text)
    assert keys.tolist() == [float(k) for k in ref] and probs.tolist() == list(ref.values())


# --- imported pools against ServeGen's files ---------------------------------------------------


@pytest.mark.parametrize("name,category", [("m-large", "language"), ("m-small", "language"),
                                           ("mm-image", "multimodal"), ("deepseek-r1", "reason")])
def test_each_category_imports_with_servegen_client_ids(imported, name: str, category: str) -> None:
    pool, _ = imported[name]
    assert pool.category == category
    assert pool.clients == [f"{name}:{i}" for i in chunk_ids(name, "trace.csv")]
    assert pool.window == 600.0 and pool.data_window == 21600.0
    expected_fields = {"language": ["input_tokens", "output_tokens"],
                       "reason": ["input_tokens", "output_tokens", "reason_ratio"]}.get(category)
    if expected_fields:
        assert pool.fields == expected_fields
    else:
        assert set(pool.fields) == {"text_tokens", "image_tokens", "audio_tokens", "video_tokens",
                                    "image_count", "audio_count", "video_count", "output_tokens"}
    meta = pool.meta
    assert meta["servegen_commit"] == "f891d11"
    assert meta["source"].endswith(FOLDERS[name]) and meta["ks_max"] == 0.004
    assert meta["missing_length_data"] == pool.fallback


@pytest.mark.parametrize("name", ["m-large", "m-small", "mm-image", "deepseek-r1"])
def test_rate_arrays_equal_the_csvs(imported, name: str) -> None:
    pool, _ = imported[name]
    for c, i in enumerate(chunk_ids(name, "trace.csv")):
        ref = read_csv(SERVEGEN / FOLDERS[name] / f"chunk-{i}-trace.csv")
        np.testing.assert_array_equal(pool.window_start, ref["window_start"])
        np.testing.assert_array_equal(pool.family[c], ref["family"])
        for k in ("rate", "cv", "shape", "scale"):
            np.testing.assert_allclose(getattr(pool, k)[c], ref[k], rtol=1e-6, atol=0, err_msg=f"{name} {i} {k}")
    inactive = pool.rate == 0
    assert np.all(pool.family[inactive] == Family.NONE) and np.all(pool.family[~inactive] != Family.NONE)


@pytest.mark.parametrize("name,sample", [("m-large", 24), ("m-small", 20), ("mm-image", 0), ("deepseek-r1", 20)])
def test_length_tables_within_ks_of_the_originals(imported, name: str, sample: int) -> None:
    """Every field of sampled (all, for mm-image) client x data windows: KS < 0.005; `{}` -> no table."""
    pool, _ = imported[name]
    rng = np.random.default_rng(3)
    ids = [i for i in chunk_ids(name, "trace.csv") if (SERVEGEN / FOLDERS[name] / f"chunk-{i}-dataset.json").exists()]
    if sample:  # a random sample plus the two largest files (the densest distributions)
        largest = sorted(ids, key=lambda i: -(SERVEGEN / FOLDERS[name] / f"chunk-{i}-dataset.json").stat().st_size)[:2]
        rest = [i for i in ids if i not in largest]
        ids = largest + rng.choice(rest, size=min(sample - 2, len(rest)), replace=False).tolist()
    checked = worst = 0.0
    for i in ids:
        c = pool.clients.index(f"{name}:{i}")
        doc = json.loads((SERVEGEN / FOLDERS[name] / f"chunk-{i}-dataset.json").read_text())
        keys = sorted(doc, key=float)
        picks = keys if not sample else [keys[j] for j in rng.choice(len(keys), size=min(3, len(keys)), replace=False)]
        for key in picks:
            d = int(np.flatnonzero(pool.data_start == float(key))[0])
            for f in pool.fields:
                orig = original_table(doc[key][f])
                stored = pool.table(c, d, f)
                if orig is None:
                    assert stored is None, f"{name}:{i} {key} {f}: empty literal must give no table"
                    continue
                assert stored is not None
                ks = stored_vs_original_ks(stored, orig)
                assert ks < KS_LIMIT, f"{name}:{i} window {key} {f}: KS {ks:.5f}"
                worst, checked = max(worst, ks), checked + 1
    assert checked >= (20 if sample else 200)
    if "reason_ratio" in pool.fields or "image_tokens" in pool.fields:
        assert worst > 0  # compression did happen on the fields that need it (sanity of the comparison)


@pytest.mark.parametrize("name", ["m-large", "m-small"])
def test_fallback_is_exactly_the_clients_without_dataset_json(imported, name: str) -> None:
    pool, warnings = imported[name]
    missing = sorted(set(chunk_ids(name, "trace.csv")) - set(chunk_ids(name, "dataset.json")))
    assert missing, "the shared data should miss some dataset JSONs"
    assert sorted(pool.fallback, key=lambda c: int(c.split(":")[1])) == [f"{name}:{i}" for i in missing]
    req = np.zeros((pool.n_clients, pool.data_start.size))
    dw = pool.data_window_of(pool.window_start)
    for d in range(pool.data_start.size):
        req[:, d] = pool.rate[:, dw == d].sum(axis=1) * pool.window
    # every client with traffic in a data window has a length table there; idle ones may have none
    assert np.all(pool.table_index[req > 0] >= 0)
    fb = [pool.clients.index(c) for c in pool.fallback]
    assert np.all(pool.table_index[fb][req[fb] == 0] == -1)
    if warnings:  # the fresh import said so on its warning channel, naming every fallback client
        assert any(all(c in w for c in pool.fallback) for w in warnings)


def test_fallback_table_is_the_rate_weighted_mixture_of_its_window(imported) -> None:
    """m-small, one busy data window: the fallback table is within KS of the independent mixture."""
    pool, _ = imported["m-small"]
    req = np.zeros((pool.n_clients, pool.data_start.size))
    dw = pool.data_window_of(pool.window_start)
    for d in range(pool.data_start.size):
        req[:, d] = pool.rate[:, dw == d].sum(axis=1) * pool.window
    fb = [pool.clients.index(c) for c in pool.fallback]
    d = int(np.argmax(req[fb].sum(axis=0)))
    key = f"{pool.data_start[d]:.0f}"
    c_fb = fb[int(np.argmax(req[fb, d]))]
    for f in pool.fields:
        vals, mass = [], []
        for c, cid in enumerate(pool.clients):
            if c in fb or req[c, d] <= 0:
                continue
            doc = json.loads((SERVEGEN / FOLDERS["m-small"] / f"chunk-{cid.split(':')[1]}-dataset.json").read_text())
            t = original_table(doc[key][f])
            assert t is not None
            vals.append(t.values)
            mass.append(np.diff(t.cdf, prepend=0.0) * req[c, d])
        v, inv = np.unique(np.concatenate(vals), return_inverse=True)
        mixture = LengthTable.from_pmf(v, np.bincount(inv, weights=np.concatenate(mass)))
        stored = pool.table(c_fb, d, f)
        assert stored is not None
        assert stored_vs_original_ks(stored, mixture) < KS_LIMIT
        # and it is the table every fallback client with traffic there shares
        assert {int(pool.table_index[c, d, pool.fields.index(f)]) for c in fb if req[c, d] > 0} == \
            {int(pool.table_index[c_fb, d, pool.fields.index(f)])}


def test_category_inference_and_mismatch(tmp_path: Path) -> None:
    src = SERVEGEN / FOLDERS["deepseek-r1"]
    plain = tmp_path / "somewhere" / "r1copy"
    plain.mkdir(parents=True)
    for i in (0, 1):
        for kind in ("trace.csv", "dataset.json"):
            shutil.copy(src / f"chunk-{i}-{kind}", plain)
    pool = import_servegen(plain, progress=False, warn=lambda _m: None)
    assert pool.category == "reason" and pool.clients == ["r1copy:0", "r1copy:1"] and pool.name == "r1copy"
    with pytest.raises(InputError, match="does not match the dataset fields"):
        import_servegen(plain, category="language", progress=False)


# --- command line -------------------------------------------------------------------------------


def small_copy(tmp_path: Path, ids: tuple[int, ...] = (0, 1, 2)) -> Path:
    """A few mm-image clients under a `multimodal/` parent, to corrupt."""
    dst = tmp_path / "multimodal" / "mm-image"
    dst.mkdir(parents=True)
    for i in ids:
        for kind in ("trace.csv", "dataset.json"):
            shutil.copy(SERVEGEN / FOLDERS["mm-image"] / f"chunk-{i}-{kind}", dst)
    return dst


def test_cli_import_writes_a_loadable_pool_and_records_provenance(tmp_path: Path) -> None:
    src = small_copy(tmp_path)
    (src / "chunk-2-dataset.json").unlink()  # a client without length data: kept, with fallback
    out = tmp_path / "mm.npz"
    r = cli("pool", "import", str(src), "-o", str(out), "--name", "mini")
    assert r.returncode == 0, r.stderr
    assert "mm-image:2" in r.stderr and "no dataset JSON" in r.stderr
    pool = load_pool(out)
    assert pool.name == "mini" and pool.category == "multimodal"
    assert pool.clients == ["mm-image:0", "mm-image:1", "mm-image:2"] and pool.fallback == ["mm-image:2"]
    assert pool.meta["import_command"].startswith("servegen-load pool import ")
    assert "--name mini" in pool.meta["import_command"] and pool.meta["missing_length_data"] == ["mm-image:2"]


def test_cli_malformed_literal_exits_2_naming_file_line_field(tmp_path: Path) -> None:
    src = small_copy(tmp_path)
    path = src / "chunk-1-dataset.json"
    doc = json.loads(path.read_text())
    key = sorted(doc, key=float)[1]
    doc[key]["output_tokens"] = doc[key]["output_tokens"].replace(":", ": __import__('os').getpid() or", 1)
    path.write_text(json.dumps(doc, indent=2))
    r = cli("pool", "import", str(src), "-o", str(tmp_path / "x.npz"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    line_no = next(n for n, ln in enumerate(path.read_text().splitlines(), 1) if "__import__" in ln)
    assert f"chunk-1-dataset.json:{line_no}:" in lines[0]
    assert f'"{key}".output_tokens' in lines[0] and "dict literal" in lines[0]
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("row,field", [("600,abc,1.2,Gamma,0.7,2.0", "rate"),
                                        ("600,0.5,1.2,Pareto,0.7,2.0", "family"),
                                        ("600,0.5,1.2,Gamma", None),
                                        ("600,0.5,1.2,,0,0", "family")])
def test_cli_bad_csv_row_exits_2_naming_file_line(tmp_path: Path, row: str, field: str | None) -> None:
    src = small_copy(tmp_path)
    path = src / "chunk-2-trace.csv"
    lines = path.read_text().splitlines()
    lines[1] = row
    path.write_text("\n".join(lines) + "\n")
    r = cli("pool", "import", str(src), "-o", str(tmp_path / "x.npz"), "-q")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "chunk-2-trace.csv:2:" in err[0]
    if field:
        assert f" {field}: " in err[0]


# --- shipped pools ------------------------------------------------------------------------------


def test_shipped_pools_are_small_and_load_fast() -> None:
    files = [ROOT / "servegen_load" / "pools" / f"{n}.npz" for n in SHIPPED]
    total = sum(f.stat().st_size for f in files)
    assert total <= 25e6, f"shipped pools take {total / 1e6:.1f} MB"
    for name in SHIPPED:
        t0 = time.perf_counter()
        pool = load_pool(name)
        dt = time.perf_counter() - t0
        assert pool.name == name
        assert dt < 2.0, f"load_pool({name!r}) took {dt:.2f} s"  # 0.05 s measured for m-large; CI is noisy


def test_shipped_pools_match_a_fresh_import(imported) -> None:
    """The committed files are what scripts/build_pools.sh produces from the shared data today."""
    for name in ("m-small", "mm-image", "deepseek-r1"):
        fresh, shipped = imported[name][0], load_pool(name)
        for k in ("rate", "cv", "family", "shape", "scale", "table_index", "values", "cdf", "offsets"):
            np.testing.assert_array_equal(getattr(fresh, k), getattr(shipped, k), err_msg=f"{name} {k}")
        assert fresh.clients == shipped.clients and fresh.fallback == shipped.fallback
