"""`report --html`: one self-contained page that headless Chromium renders without console errors.

The page is checked as a browser shows it: Chromium (Debian's `chromium` package) dumps the DOM
after rendering and takes a screenshot; the DOM must hold the inline SVG plots with their titles,
the console must stay silent, and the screenshot must be a picture (coloured plot pixels), not a
blank page; and a layout probe (injected into a copy of the page) measures every element: none
may stick out of the page. A missing Chromium fails (the README's test set-up installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import orjson
import pytest

from servegen_load.requests import REQUESTS_FORMAT
from servegen_load.sim.process import SimProcess

CLI = [sys.executable, "-c", "from servegen_load.cli import main; main()"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def needs_chromium(test):  # the page must really render: a missing browser fails, never skips
    return test



def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def chromium(page: Path, tmp: Path, *mode: str, width: int = 1200) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: `apt-get install -y chromium` (the README's test set-up)")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'chromium'}",
         "--enable-logging=stderr", "--v=0", f"--window-size={width},2400", *mode, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)


LAYOUT_PROBE = """<script>
addEventListener("load", () => {
  const page = document.documentElement.clientWidth;
  let worst = 0, who = "";
  for (const el of document.querySelectorAll("body *")) {
    if (el.closest("svg") && el.tagName.toLowerCase() !== "svg") continue;  // plot internals are clipped
    const r = el.getBoundingClientRect();
    if (r.right - page > worst) { worst = r.right - page; who = el.tagName + " " + (el.textContent || "").slice(0, 60); }
  }
  const out = document.createElement("pre");
  out.id = "layout-probe";
  out.textContent = JSON.stringify({page, scroll: document.documentElement.scrollWidth, worst, who});
  document.body.appendChild(out);
});
</script>"""


def assert_fits_page(page: Path, tmp: Path, width: int) -> None:
    """Render a copy of `page` with the layout probe at `width` px: no element wider than the page."""
    probe = tmp / f"probe-{width}-{page.name}"
    probe.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = chromium(probe, tmp, "--dump-dom", "--virtual-time-budget=5000", width=width)
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom.stdout, re.S)
    assert m, "the layout probe did not run"
    got = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert got["scroll"] <= got["page"] and got["worst"] <= 1, got


def png_pixels(path: Path) -> np.ndarray:
    """RGB(A) pixels of an 8-bit non-interlaced PNG (what Chromium writes), decoded with zlib."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big"), \
                body[8], body[9], body[10], body[11], body[12]
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            ch = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + w * ch)
    out = np.zeros((h, w * ch), dtype=np.int32)
    prev = np.zeros(w * ch, dtype=np.int32)
    for y in range(h):  # undo the per-row filters (PNG spec 9.2)
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        cur = np.zeros_like(line)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        else:
            for x in range(w * ch):
                a = cur[x - ch] if x >= ch else 0
                b, c = prev[x], prev[x - ch] if x >= ch else 0
                pred = a if f == 1 else (a + b) // 2 if f == 3 else _paeth(a, b, c)
                cur[x] = (line[x] + pred) & 255
        out[y], prev = cur, cur
    return out.reshape(h, w, ch)[:, :, :3]


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s simulator run: two categories, five clients, 5% injected HTTP 500s."""
    tmp = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.exponential(1 / 25, 120))
    t = t[t < 3.0]
    req = tmp / "requests.jsonl"
    with req.open("wb") as fh:
        fh.write(orjson.dumps({"format": REQUESTS_FORMAT, "seed": 3, "source": "test"}) + b"\n")
        for i, x in enumerate(t):
            fh.write(orjson.dumps({"id": f"h{i}", "t": round(float(x), 6), "client": f"client-{i % 5}",
                                   "category": "multimodal" if i % 3 == 0 else "language",
                                   "input_tokens": int(rng.integers(50, 400)),
                                   "output_tokens": int(rng.integers(8, 40))}) + b"\n")
    out = tmp / "results.jsonl"
    with SimProcess(faults={"http_500": 0.05}, seed=1) as sim:
        p = cli("run", str(req), "-o", str(out), "--endpoint", sim.url, "--progress", "off")
    assert p.returncode == 0, p.stderr
    return out


def test_report_json_and_text_still_work(results: Path, tmp_path: Path) -> None:
    p = cli("report", str(results))
    assert p.returncode == 0 and "latency (ms)" in p.stdout
    js = tmp_path / "s.json"
    p = cli("report", str(results), "--json", "-o", str(js))
    doc = json.loads(p.stdout)
    saved = json.loads(js.read_text())
    assert "samples" not in doc  # stdout is for reading: no per-request columns
    assert doc == {k: v for k, v in saved.items() if k != "samples"}
    assert doc["format"] == "servegen-load/summary/v1" and saved["samples"]["rows"] == doc["requests"]["ok"]


@needs_chromium
def test_html_report_renders_in_chromium(results: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    p = cli("report", str(results), "--html", str(page))
    assert p.returncode == 0, p.stderr
    html = page.read_text()
    # self-contained: no scripts, no stylesheets or images fetched from anywhere
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?:https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    dom = chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, console
    text = dom.stdout
    assert text.count("<svg") >= 8
    for title in ("Request rate: scheduled vs achieved", "TTFT over time", "TPOT over time", "E2E over time",
                  "TTFT CDF", "E2E CDF", "send lag over time", "send lag CDF", "Token throughput over time",
                  "Errors over time by status", "category: requests", "client: TTFT", "Top clients (5 of 5"):
        assert title in text, title
    assert "http_error" in text  # the injected HTTP 500s are in the error plot's legend and table
    # errors grouped by status, HTTP code and normalised message: one row for the 500s, with a count
    rows = re.findall(r"<tr><td>(\d+)</td><td>http_error</td><td>500</td>", text)
    assert len(rows) == 1 and int(rows[0]) == json.loads(cli("report", str(results), "--json").stdout)[
        "requests"]["by_status"]["http_error"]
    for width in (1200, 800):
        assert_fits_page(page, tmp_path, width)

    shot = tmp_path / "report.png"
    s = chromium(page, tmp_path, f"--screenshot={shot}")
    assert s.returncode == 0 and shot.exists(), s.stderr[-2000:]
    px = png_pixels(shot)
    assert px.shape[0] >= 1000 and px.shape[1] >= 1000
    non_white = (px < 245).any(axis=2).mean()
    r, g, b = px[:, :, 0], px[:, :, 1], px[:, :, 2]
    blue = ((b > 150) & (r < 100)).mean()   # the plot lines and bars (#1f77b4)
    red = ((r > 180) & (g < 80) & (b < 80)).mean()  # p99 lines, bars, the error legend
    assert non_white > 0.04, non_white
    # red: how much depends on the run (5 % random errors; one CI run drew 0.000297): present, not a size
    assert blue > 0.001 and red > 0.0001, (blue, red)


@needs_chromium
def test_capacity_page_renders_in_chromium(tmp_path: Path) -> None:
    def step(i: int, scale: float, v: float, ok: bool, sat: bool) -> dict:
        return {"step": i, "scale": scale, "rate": 10 * scale, "offered_rate": 10 * scale,
                "served_rate": min(10 * scale, 25.0), "completion_rate": min(10 * scale, 25.0), "requests": 100,
                "passed": ok, "saturated": sat, "seconds": 5.0, "metrics": {"ttft_p99": v},
                "checks": [{"slo": "ttft_p99<=1s", "metric": "ttft_p99", "scope": "all", "op": "<=",
                            "threshold": 1.0, "value": v, "passed": v <= 1, "note": ""}], "results": None}

    def plan(cap: float) -> dict:
        steps = [step(1, 1.0, 0.2, True, False), step(2, 2.0, 0.6, True, False), step(3, cap, 0.95, True, False),
                 step(4, 4.0, 6.0, False, True)]
        return {"scenario": "x.yaml", "kind": "realistic", "endpoint": None, "model": "m", "base_rate": 10.0,
                "capacity": {"scale": cap, "rate": 10 * cap, "failing_scale": 4.0, "failing_rate": 40.0,
                             "converged": True},
                "knee": {"rate": 25.0, "scale": 2.5, "reached": True, "max_served_rate": 25.0, "method": "m"},
                "steps": steps, "order": [1.0, 2.0, 4.0, cap]}

    doc = {"format": "servegen-load/capacity/v1", "scenario": "x.yaml",
           "slo": {"slo": ["ttft_p99<=1s"], "request_slo": None}, "options": {}, "plan": plan(2.2),
           "naive": plan(3.0), "comparison": {"realistic_rate": 22.0, "naive_rate": 30.0, "ratio": 30 / 22,
                                              "under_provisioning": 1 - 22 / 30}}
    cap = tmp_path / "capacity.json"
    cap.write_text(json.dumps(doc))
    page = tmp_path / "capacity.html"
    p = cli("report", str(cap), "--html", str(page))
    assert p.returncode == 0 and "naive vs realistic: 30 vs 22 req/s = 1.36x" in p.stdout, p.stdout + p.stderr
    dom = chromium(page, tmp_path, "--dump-dom")
    assert not [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    for text in ("ttft_p99", "SLO &lt;= 1 s", "realistic capacity 22", "naive capacity 30", "realistic knee 25",
                 "naive knee 25", "served vs offered", "offered req/s", "planned = scale x"):
        assert text in dom.stdout, text
    for width in (1200, 800):
        assert_fits_page(page, tmp_path, width)
    shot = tmp_path / "capacity.png"
    s = chromium(page, tmp_path, f"--screenshot={shot}")
    assert s.returncode == 0 and shot.exists(), s.stderr[-2000:]
    assert (png_pixels(shot) < 245).any(axis=2).mean() > 0.02  # a picture, not a blank page


def test_html_report_shows_the_slo_verdicts_and_the_warm_up(results: Path, tmp_path: Path) -> None:
    """`report --warmup 10 --slo ... --html` showed goodput but neither the SLO verdicts (the text and
    JSON had the FAIL) nor that requests had been left out."""
    page = tmp_path / "r.html"
    p = cli("report", str(results), "--warmup", "1", "--slo", "ttft_p99<=1us", "--slo", "error_rate<=100%",
            "--html", str(page))
    assert p.returncode == 0, p.stderr
    text = page.read_text()
    assert "<h2>SLO checks</h2>" in text and "ttft_p99&lt;=1us" in text
    assert text.count('<span class="warn">FAIL</span>') == 1 and text.count('<span class="pass">PASS</span>') == 1
    assert "first 1 s left out (warm-up)" in text
