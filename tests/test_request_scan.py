"""The fast reader of requests files (`workload.request_scan`): the same columns as the per-line
reader on what `generate` writes, and the per-line reader's exact errors on anything else."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from servegen_load.errors import InputError
from servegen_load.workload import request_scan
from servegen_load.workload.compose import generate_to_file
from servegen_load.workload.request_scan import RequestScanner

HEADER = json.dumps({"format": "servegen-load/requests/v1"}) + "\n"


def columns(path: Path, slow: bool = False) -> tuple[dict[str, np.ndarray], RequestScanner]:
    sc = RequestScanner(path)
    if slow:
        sc._fast = lambda body: None  # type: ignore[method-assign]
    blocks = list(sc.blocks())
    out = {k: np.concatenate([getattr(b, k) for b in blocks]) for k in ("t", "k", "inp", "out", "reason")}
    out["client"] = np.array(sc.clients)[np.concatenate([b.client for b in blocks])]
    out["category"] = np.array(sc.categories)[np.concatenate([b.category for b in blocks])]
    return out, sc


@pytest.mark.parametrize("pool", ["m-small", "deepseek-r1"])
def test_fast_path_reads_what_the_line_reader_reads(tmp_path: Path, pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_scan, "BLOCK_BYTES", 1 << 16)  # many blocks, lines cut across reads
    scen = tmp_path / "s.yaml"
    scen.write_text(f"pool: {pool}\nstart: 72000\nduration: 300\nseed: 3\nrate: 60\n")
    out = tmp_path / "r.jsonl"
    generate_to_file(scen, out)
    fast, sf = columns(out)
    slow, ss = columns(out, slow=True)
    assert sf.fast_lines == len(fast["t"]) > 10_000 and sf.slow_lines == 0 and ss.fast_lines == 0
    for k in fast:
        assert np.array_equal(fast[k], slow[k]), k
    if pool == "deepseek-r1":
        assert (fast["reason"] >= 0).any()


GOOD = '{"id":"a#%d","t":%s,"client":"a","category":"language","input_tokens":5,"output_tokens":3}\n'


@pytest.mark.parametrize("bad, field", [
    ('{"id":"a#9","t":-1,"client":"a","category":"language","input_tokens":5,"output_tokens":3}', "t"),
    ('{"id":"a#9","t":01.5,"client":"a","category":"language","input_tokens":5,"output_tokens":3}', None),
    ('{"id":"a#9","t":1e400,"client":"a","category":"language","input_tokens":5,"output_tokens":3}', None),
    ('{"id":"a#9","t":0.5,"client":"a","category":"language","input_tokens":5,"output_tokens":3}', "t"),  # t goes back
    ('{"id":"a#9","t":9.5,"client":"a","category":"language","input_tokens":5,"output_tokens":3,'
     '"reason_tokens":4}', "reason_tokens"),
    ('{"id":"a#9","t":9.5,"client":"a","category":"language","input_tokens":99999999999,"output_tokens":3}',
     "input_tokens"),
    ('{"id":"a#9","t":9.5,"client":"a","category":"language","input_tokens":5,"output_tokens":3', None),
])
def test_bad_lines_get_the_line_readers_error(tmp_path: Path, bad: str, field: str | None) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text(HEADER + "".join(GOOD % (i, f"{i}.25") for i in range(5)) + bad + "\n" + GOOD % (10, "10"))
    with pytest.raises(InputError) as e:
        list(RequestScanner(p).blocks())
    assert e.value.line == 7 and (field is None or e.value.field == field), str(e.value)


def test_other_shapes_take_the_line_reader(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    rows = [GOOD % (0, "0.5"), '{"id":"b#1","t":1,"client":"b\\u00e9","category":"language","input_tokens":5,'
            '"output_tokens":3,"session":"s","turn":0}\n', GOOD % (2, "2")]
    p.write_text(HEADER + "".join(rows))
    cols, sc = columns(p)
    assert sc.slow_lines == 3 and list(cols["client"]) == ["a", "bé", "a"]
    assert np.array_equal(cols["t"], [0.5, 1.0, 2.0])


def _close(a: object, b: object, path: str = "") -> None:
    """Equal dicts/lists, floats to 1e-9 relative (sums of gaps are added in another order)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and not (np.isnan(a) and np.isnan(b)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-4 if path.endswith(("p10", "p50", "p90", "mean")) else 0), path
    else:
        assert a == b or (a != a and b != b), path


@pytest.mark.parametrize("pool", ["m-small", "deepseek-r1"])
def test_streaming_statistics_equal_the_whole_file_ones(tmp_path: Path, pool: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Folding 64 KB blocks (windows and clients cut across blocks) gives what one block of the
    whole file gives, and that matches direct numpy on the columns (quantiles, gap CVs)."""
    from servegen_load.workload.fidelity import (
        _wq,
        fidelity,
        read_columns,
        request_stats,
        scan_requests,
        window_cvs,
    )

    scen = tmp_path / "s.yaml"
    scen.write_text(f"pool: {pool}\nstart: 72000\nduration: 1500\nseed: 4\nrate: 40\ntime_scale: 2\n")
    out = tmp_path / "r.jsonl"
    generate_to_file(scen, out)
    cols = read_columns(out)
    whole = request_stats(cols, window=300.0)
    whole_fid = fidelity(cols, scen)
    monkeypatch.setattr(request_scan, "BLOCK_BYTES", 1 << 16)
    stats, fid = scan_requests(out, scen)
    _close(whole, stats)
    _close(whole_fid, fid)
    # against direct computations on the columns
    cat = stats["lengths"][cols.categories[0]]
    sel = cols.category == 0
    for name, x in (("input_tokens", cols.inp[sel]), ("output_tokens", cols.out[sel])):
        p = np.quantile(x, (0.5, 0.9, 0.99), method="inverted_cdf")
        assert [cat[name][k] for k in ("p50", "p90", "p99")] == [float(v) for v in p]
    _c, _w, cnt, cv = window_cvs(cols.t, cols.client, np.arange(0.0, 1500.0 + 300.0, 300.0))
    assert stats["cv"]["client_windows"] == cv.size > 20
    assert [stats["cv"][k] for k in ("p10", "p50", "p90")] == pytest.approx(_wq(cv, cnt.astype(float), (0.1, 0.5, 0.9)))
    if pool == "deepseek-r1":
        r = cols.reason >= 0
        share = cols.reason[r] / np.maximum(cols.out[r], 1)
        exact = np.quantile(share, (0.5, 0.9, 0.99), method="inverted_cdf")
        got = [cat["reason_share"][k] for k in ("p50", "p90", "p99")]
        assert np.all(np.abs(np.array(got) - exact) < 1e-5) and np.all(np.array(got) <= exact)
        assert cat["reason_share"]["mean"] == pytest.approx(round(float(share.mean()), 4), abs=1e-4)
    assert fid["counts"]["dof"] > 0 and fid["gap_cv"] and fid["lengths"]


def test_memory_does_not_grow_with_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak Python/numpy memory of inspect's pass over 200k and 800k requests: within 1.3x (the
    whole-file columns alone would be 4x)."""
    import tracemalloc

    from servegen_load.workload.fidelity import scan_requests

    monkeypatch.setattr(request_scan, "BLOCK_BYTES", 1 << 20)
    peaks = []
    for dur in (100, 400):
        scen = tmp_path / f"s{dur}.yaml"
        scen.write_text(f"pool: m-small\nstart: 72000\nduration: {dur}\nseed: 1\nrate: 2000\n")
        out = tmp_path / f"r{dur}.jsonl"
        generate_to_file(scen, out)
        tracemalloc.start()
        stats, fid = scan_requests(out, scen)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert fid is not None and stats["requests"] == fid["total"]["observed"] > 1500 * dur
        out.unlink()
    assert peaks[1] < 1.3 * peaks[0], peaks
