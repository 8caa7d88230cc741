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
