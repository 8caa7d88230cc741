"""Pool inspection: `pool_stats` computes what its docstring says (checked on a hand-made pool), the
shipped pools show the facts measured on ServeGen's data, and the command renders and fails cleanly."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegen_load.errors import InputError
from servegen_load.inspect import detect_kind, pool_stats, render_pool_stats
from servegen_load.sparkline import sparkline
from servegen_load.workload.distributions import Family, LengthTable
from servegen_load.workload.pool import SHIPPED, ClientPool, build_tables, load_pool

ROOT = Path(__file__).resolve().parents[1]
SERVEGEN = ROOT.parent / "shared" / "data" / "servegen"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "servegen_load.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def stats() -> dict[str, dict]:
    return {name: pool_stats(load_pool(name)) for name in SHIPPED}


def tiny_pool() -> ClientPool:
    """Two clients over two days of 12 h windows; client 0 carries 3/4 of the requests."""
    ws = np.arange(4) * 43200.0
    rate = np.array([[3.0, 0.0, 3.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    family = np.where(rate > 0, [[Family.GAMMA] * 4, [Family.WEIBULL, Family.GAMMA, 0, 0]], Family.NONE).astype(np.int8)
    cv = np.array([[2.0, 0.0, 2.0, 0.0], [1.0, 5.0, 0.0, 0.0]], dtype=np.float32)
    tables = [LengthTable(np.array([10.0, 20.0]), np.array([0.5, 1.0])), LengthTable(np.array([100.0]), np.array([1.0]))]
    values, cdf, offsets = build_tables(tables)
    return ClientPool(
        name="tiny", category="language", clients=["tiny:0", "tiny:1"], window=43200.0, window_start=ws,
        rate=rate, cv=cv, family=family, shape=np.where(rate > 0, 0.5, 0).astype(np.float32),
        scale=np.ones_like(rate), data_window=86400.0, data_start=np.array([0.0, 86400.0]),
        fields=["input_tokens"], table_index=np.array([[[0], [0]], [[1], [-1]]], dtype=np.int32),
        values=values, cdf=cdf, offsets=offsets, fallback=["tiny:1"],
    )


def test_pool_stats_definitions_on_a_hand_made_pool() -> None:
    s = pool_stats(tiny_pool())
    assert s["clients"] == 2 and s["active_client_windows"] == 4 and s["client_windows"] == 8
    assert s["quiet_windows"] == 1  # the last window: every client at 0 (not a fitted pool: a collection gap)
    assert s["quiet_windows_are"] == "collection gaps (missing data)" and s["sessions"] == []
    assert s["top_share"]["top1"] == pytest.approx(0.75)
    assert s["families"] == {"gamma": 0.75, "weibull": 0.25}
    # rate weights: cv 2.0 has weight 6 of 8, cv 1.0 weight 1, cv 5.0 weight 1
    assert s["cv"] == {"p10": 1.0, "p50": 2.0, "p90": 5.0}
    # hour 0 -> windows 0 and 2 (totals 4 and 3); hour 12 -> window 1 only (window 3 is a gap)
    assert s["rate_by_hour"][0] == pytest.approx(3.5) and s["rate_by_hour"][12] == pytest.approx(1.0)
    # lengths: requests of client 0 (6 * 43200 over both days) -> {10, 20}; client 1 (2 * 43200) -> 100
    q = s["lengths"]["language"]["input_tokens"]
    assert q["p50"] == 20.0 and q["p90"] == 100.0 and q["mean"] == pytest.approx(0.375 * 10 + 0.375 * 20 + 0.25 * 100)
    assert s["fallback"] == {"clients": ["tiny:1"], "count": 1, "request_share": 0.25}
    json.dumps(s)  # plain, JSON-ready


def test_known_facts_hold_on_the_shipped_pools(stats: dict[str, dict]) -> None:
    """The data README's measurements (not tuned to): Gamma shares, top-5 shares, CV, reason_ratio modes."""
    for name, s in stats.items():
        assert 0.65 <= s["families"]["gamma"] <= 0.88, (name, s["families"])
        assert s["families"]["gamma"] + s["families"]["weibull"] == pytest.approx(1.0, abs=1e-3)
        assert 4.0 <= s["cv"]["p90"] <= 7.5, (name, s["cv"])
    assert 0.40 <= stats["m-large"]["top_share"]["top5"] <= 0.46
    assert 0.74 <= stats["m-small"]["top_share"]["top5"] <= 0.80
    assert 1.1 <= stats["m-large"]["cv"]["p50"] <= 1.3
    for name in ("mm-image", "deepseek-r1"):
        assert 0.9 <= stats[name]["cv"]["p50"] <= 1.1
    modes = stats["deepseek-r1"]["lengths"]["reason"]["reason_ratio"]["modes"]
    assert len(modes) == 2 and abs(modes[0] - 0.36) <= 0.04 and abs(modes[1] - 0.94) <= 0.04
    assert stats["m-large"]["days"] == 14 and stats["mm-image"]["days"] == 1
    assert stats["m-large"]["active_clients"] == 162
    assert set(stats["mm-image"]["lengths"]["multimodal"]) >= {"text_tokens", "image_tokens", "image_count"}


@pytest.mark.parametrize("name", ["m-large", "m-small"])
def test_inspect_json_lists_the_fallback_clients(name: str) -> None:
    r = cli("inspect", name, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    folder = SERVEGEN / "language" / name
    ids = {int(m.group(1)) for p in folder.iterdir() if (m := re.match(r"chunk-(\d+)-trace\.csv$", p.name))}
    have = {int(m.group(1)) for p in folder.iterdir() if (m := re.match(r"chunk-(\d+)-dataset\.json$", p.name))}
    assert sorted(doc["fallback"]["clients"]) == sorted(f"{name}:{i}" for i in ids - have)
    assert doc["fallback"]["count"] == len(ids - have) and 0 < doc["fallback"]["request_share"] < 1
    assert len(doc["rate_by_hour"]) == 24 and doc["clients"] == len(ids)


def test_inspect_plain_text_when_not_a_terminal() -> None:
    r = cli("inspect", "deepseek-r1")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b[" not in out  # no terminal escapes in a pipe
    for needle in ("pool: deepseek-r1 (reason)", "top5", "gap families: gamma", "reason_ratio", "modes",
                   "rate by hour", "fallback lengths: none"):
        assert needle in out, needle


def test_rich_rendering_holds_the_same_figures(stats: dict[str, dict]) -> None:
    buf = io.StringIO()
    render_pool_stats(stats["m-small"], rich=True, file=buf)
    out = buf.getvalue()
    assert "m-small" in out and "m-small:11" in out and "input_tokens" in out
    assert f"{100 * stats['m-small']['top_share']['top5']:.1f}%" in out


def test_sparkline_scales_to_the_max() -> None:
    assert sparkline([0.0, 1.0, 2.0, None]) == "▁▅█ "


def test_pool_list_shows_every_shipped_pool() -> None:
    r = cli("pool", "list")
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    assert set(rows) == set(SHIPPED)
    assert rows["m-large"][1:4] == ["language", "162", "14"] and rows["deepseek-r1"][1:3] == ["reason", "73"]


def test_detect_kind(tmp_path: Path) -> None:
    req = tmp_path / "r.jsonl"
    req.write_text(json.dumps({"format": "servegen-load/requests/v1", "seed": 1}) + "\n{}\n")
    scen = tmp_path / "s.yaml"
    scen.write_text("pool: m-large\n")
    assert detect_kind("m-large") == "pool" and detect_kind(str(req)) == "requests"
    assert detect_kind(str(scen)) == "scenario"
    other = tmp_path / "x.jsonl"
    other.write_text('{"format": "something/else"}\n')
    with pytest.raises(InputError):
        detect_kind(str(other))


@pytest.mark.parametrize("content,suffix", [(b"hello\n", ".txt"), (b"garbage", ".npz"), (b"PK\x03\x04trunc", ".bin"),
                                            (b"\x93NUMPY\x01\x00v\x00", ".npz")])
def test_inspect_non_pool_file_exits_2_in_one_line(tmp_path: Path, content: bytes, suffix: str) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    r = cli("inspect", str(bad))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in r.stderr


def test_inspect_unknown_name_exits_2() -> None:
    r = cli("inspect", "no-such-pool")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "shipped" in r.stderr


def test_fitted_pool_calls_empty_windows_quiet_not_gaps(tmp_path: Path) -> None:
    """A log silent for its middle 10 minutes: a quiet window of the log (kept in the rate curve),
    not a collection gap, in the stats and in the printout."""
    t0 = 86400 * 19000.0
    ts = [t0 + i * 6.0 for i in range(100)] + [t0 + 1200 + i * 6.0 for i in range(100)]
    log = tmp_path / "q.csv"
    log.write_text("time,input_tokens,output_tokens\n" + "".join(f"{t:.3f},10,5\n" for t in ts))
    r = cli("fit", str(log), "-o", str(tmp_path / "q.npz"), "--window", "600")
    assert r.returncode == 0, r.stderr
    s = pool_stats(load_pool(tmp_path / "q.npz"))
    assert s["quiet_windows"] == 1 and s["quiet_windows_are"] == "silences of the log"
    hour = [v for v in s["rate_by_hour"] if v is not None]
    assert hour == [pytest.approx(200 / 1800, rel=0.02)]  # the silent window counts as 0, not as missing
    out = cli("inspect", str(tmp_path / "q.npz")).stdout
    assert "quiet windows (every client at 0): 1, silences of the log" in out and "collection gap" not in out


def test_a_terminal_that_cannot_show_the_sparklines_gets_escapes_not_a_traceback() -> None:
    """LANG=en_US.ISO-8859-1 or PYTHONIOENCODING=ascii: the block characters are escaped."""
    import os

    p = subprocess.run([sys.executable, "-m", "servegen_load.cli", "inspect", "m-large"], capture_output=True,
                       env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr[-2000:]
    assert b"\\u2581" in p.stdout or b"\\u2588" in p.stdout  # the sparkline, escaped


def test_a_fitted_log_ending_inside_its_last_window_is_counted_for_its_seconds(tmp_path: Path) -> None:
    """A 5-minute log in a 600 s window: `inspect` counted the window whole (4,445 requests and half
    the rate, where 1,552 were fitted)."""
    from servegen_load.workload.fit import FitOptions, fit_logs

    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 300, 1552))
    log = tmp_path / "five.csv"
    log.write_text("time,prompt_tokens,completion_tokens\n" + "".join(f"{1796000000 + x:.3f},100,10\n" for x in t))
    pool, _ = fit_logs([log], options=FitOptions(window=600.0), stream=io.StringIO())
    s = pool_stats(pool)
    assert abs(s["requests"] - 1552) <= 5 and s["mean_rate"] == pytest.approx(1552 / 300, rel=0.01), s
