"""Client overhead of the `servegen-load run` command against the C fake server, beside the C reference client.

    python benchmarks/dispatch.py [--duration 20] [--rates 300,1000] [--repeat 1] [--contend N]
                                  [--transports raw,aiohttp] [--api completions] [--no-tty] [--floor]
                                  [--max-tokens 128]

Why this shape: a user runs the command, not the runner API, and on a machine others share. So
each run here is `servegen-load run REQUESTS --endpoint URL --api completions -o R` with every
other option at its default (progress shown on a terminal: the command runs under a pseudo-terminal
unless `--no-tty`; `--summary-json` only to read the figures back), on a requests file made by
`servegen-load generate` from a naive scenario (Poisson arrivals at the rate, 100-token prompts,
128 output tokens). It compiles `shared/servers/fake_server.c` and `ref_client.c`, starts the fake
server (TTFT 20 ms, 5 ms per token: any TTFT above 20 ms a client reports is its own error or the
machine's) and, at each rate, runs the C reference client and then the command, alternately, in
the same invocation. `--contend N` starts N busy processes, each pinned to one CPU, for the whole
invocation: the same load beside both clients, as on a shared CI runner or laptop. `--floor` adds
`benchmarks/uvloop_floor.py` (a uvloop client that only timestamps reads): the CPU any Python
client on uvloop starts from.

Per run it prints: achieved rate, send lag p50/p99, TTFT error (reported TTFT - 20 ms) p50/p99,
the client's CPU seconds between the server's first request and its last response (the command's
start-up and summary excluded: /proc/PID/stat sampled every 20 ms; the reference reports its own),
that CPU in ms per 1000 streamed tokens (tokens counted by the server), the server's own
first-token lateness p99 (from its read of the request), its CPU as a share of one core over
the run (`srv cpu`: near 100 % its loop writes due tokens back to back and reads no new request
meanwhile, so first tokens come late whichever client runs; README, "Why TTFT p99 at 1000 req/s")
and `cpu wait` (Linux PSI: the share of the run during which some task waited for a CPU; high
means the machine itself was busy). Then ratios ours/ref (medians over
repeats) and the targets of issue 15: at 1000 req/s, TTFT error p99 within 2x the reference's (or
<= 5 ms), send lag p99 within 2x (or <= 2 ms), CPU per token <= 1.2x; at 300 req/s, TTFT error p99
<= 2 ms quiet, <= 5 ms with `--contend`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ROOT.parent / "shared" / "servers"
TTFT = 0.020
MAX_TOKENS = 128
PROMPT = 100
_TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a live process (threads included), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuSampler:
    """Samples a child's CPU every 20 ms against wall time, to cut out the run's own window."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            c = _proc_cpu(self.pid)
            if c is None:
                return
            self.samples.append((time.time(), c))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t_a: float, t_b: float) -> float:
        """CPU seconds used between two unix instants (linear between samples)."""
        if len(self.samples) < 2:
            return float("nan")
        t = np.array([s[0] for s in self.samples])
        c = np.array([s[1] for s in self.samples])
        return float(np.interp(t_b, t, c) - np.interp(t_a, t, c))


def start_fake_server(binary: Path) -> tuple[subprocess.Popen, int, str]:
    """Compile `fake_server.c` to `binary`, start it (20 ms TTFT, 5 ms per token, MAX_TOKENS
    tokens) on a free port and wait until it answers; returns the process, its port and URL."""
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SERVERS / "fake_server.c")], check=True)
    port = _free_port()
    server = subprocess.Popen([str(binary), "--port", str(port), "--ttft-ms", "20", "--itl-ms", "5",
                               "--max-tokens", str(MAX_TOKENS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            _get(url + "/stats")
            break
        except OSError:
            time.sleep(0.05)
    return server, port, url


def _make_requests(d: Path, rate: float, duration: float, seed: int) -> Path:
    scen = d / f"naive-{rate:g}.yaml"
    scen.write_text(f"naive:\n  rate: {rate}\n  input_tokens: {PROMPT}\n  output_tokens: {MAX_TOKENS}\n"
                    f"duration: {duration}\nseed: {seed}\n")
    out = d / f"requests-{rate:g}-{seed}.jsonl"
    subprocess.run([sys.executable, "-m", "servegen_load.cli", "generate", str(scen), "-o", str(out),
                    "--seed", str(seed)], check=True, capture_output=True, env=_env())
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_ours(req: Path, url: str, transport: str, api: str, tty: bool, work: Path,
             timeout: float) -> dict:
    res, summ = work / "results.jsonl", work / "summary.json"
    cmd = [sys.executable, "-m", "servegen_load.cli", "run", str(req), "--endpoint", url, "--api", api,
           "-o", str(res), "--summary-json", str(summ)]
    if transport != "raw":
        cmd += ["--transport", transport]
    tail: list[bytes] = []
    if tty:  # progress as a user at a terminal sees it (rich live line on stderr)
        master, slave = pty.openpty()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL, env=_env())
        os.close(slave)

        def drain() -> None:
            with contextlib.suppress(OSError):
                while chunk := os.read(master, 65536):
                    tail.append(chunk)
                    del tail[:-20]

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
    else:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    sampler = CpuSampler(p.pid)
    try:
        if tty:
            rc = p.wait(timeout)
            reader.join(5)
            os.close(master)
            err = b"".join(tail)
        else:
            err = p.communicate(timeout=timeout)[1]
            rc = p.returncode
    finally:
        sampler.stop()
        if p.poll() is None:
            p.kill()
            p.wait()
    if rc != 0:
        raise SystemExit(f"servegen-load run failed (exit {rc}): {err[-2000:].decode('utf-8', 'replace')}")
    stats = _get(url + "/stats")
    s = json.loads(summ.read_text())
    lat = s["latency"]
    return {
        "scheduled": s["requests"]["scheduled"], "ok": s["requests"]["ok"],
        "achieved": s["fidelity"]["achieved_rate"],
        "lag_p50": lat["send_lag"]["p50"], "lag_p99": lat["send_lag"]["p99"],
        "ttft_err_p50": lat["ttft"]["p50"] - TTFT, "ttft_err_p99": lat["ttft"]["p99"] - TTFT,
        "cpu_s": sampler.between(stats["first_req_unix"] - 0.05, stats["last_done_unix"] + 0.05),
    }


def run_ref(ref: Path, rate: float, duration: float, port: int, seed: int) -> dict:
    out = subprocess.run([str(ref), "--rate", str(rate), "--duration", str(duration), "--max-tokens",
                          str(MAX_TOKENS), "--port", str(port), "--seed", str(seed)],
                         capture_output=True, text=True, timeout=duration * 4 + 60, check=True)
    d = json.loads(out.stdout)
    ms = 1e-3
    return {"scheduled": d["scheduled"], "ok": d["done"], "achieved": d["send_rate"],
            "lag_p50": d["send_lag_ms"]["p50"] * ms, "lag_p99": d["send_lag_ms"]["p99"] * ms,
            "ttft_err_p50": d["ttft_ms"]["p50"] * ms - TTFT, "ttft_err_p99": d["ttft_ms"]["p99"] * ms - TTFT,
            "cpu_s": d["cpu_s"]}


def run_floor(rate: float, duration: float, port: int, seed: int) -> dict:
    """The uvloop floor client: its CPU per token is what any Python client here starts from."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "uvloop_floor.py"), "--rate", str(rate),
                          "--duration", str(duration), "--max-tokens", str(MAX_TOKENS), "--port", str(port),
                          "--seed", str(seed)], capture_output=True, text=True, timeout=duration * 4 + 60, check=True)
    d = json.loads(out.stdout)
    nan = float("nan")  # timing is not what this client is for
    return {"scheduled": d["scheduled"], "ok": d["done"], "achieved": nan, "lag_p50": nan, "lag_p99": nan,
            "ttft_err_p50": nan, "ttft_err_p99": nan, "cpu_s": d["cpu_s"]}


def _psi_cpu_us() -> float:
    """Total µs some task waited for a CPU (Linux PSI); the growth over a run shows contention."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return float("nan")


def _wait_idle(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _get(url + "/stats")["active"] and time.monotonic() < deadline:
        time.sleep(0.1)


def _contenders(n: int) -> list[subprocess.Popen]:
    """N busy loops, each pinned to one CPU (round robin): a steady neighbour for both clients."""
    cpus = sorted(os.sched_getaffinity(0))
    code = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code, str(cpus[i % len(cpus)])]) for i in range(n)]


def main() -> None:
    global MAX_TOKENS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of schedule per run (default 20)")
    ap.add_argument("--rates", default="300,1000")
    ap.add_argument("--transports", default="raw", help="comma list: raw, aiohttp")
    ap.add_argument("--api", default="completions", help="completions (what the reference sends) or chat")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--contend", type=int, default=0, help="busy processes pinned beside the run")
    ap.add_argument("--no-tty", action="store_true", help="run the command with stderr on a pipe (plain progress)")
    ap.add_argument("--floor", action="store_true",
                    help="also run benchmarks/uvloop_floor.py (a do-nothing uvloop client): CPU only")
    ap.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                    help="tokens per stream (default 128, the issue's targets): fewer tokens weigh each request's "
                         "fixed work more in CPU per token")
    a = ap.parse_args()
    MAX_TOKENS = a.max_tokens

    tmp = Path(tempfile.mkdtemp(prefix="sgl-bench-"))
    fake, ref = tmp / "fake_server", tmp / "ref_client"
    subprocess.run(["gcc", "-O2", "-o", str(ref), str(SERVERS / "ref_client.c"), "-lm"], check=True)
    server, port, url = start_fake_server(fake)
    busy: list[subprocess.Popen] = []
    try:
        rates = [float(r) for r in a.rates.split(",")]
        transports = a.transports.split(",")
        busy = _contenders(a.contend)
        print(f"load: {Path('/proc/loadavg').read_text().strip()}; contenders: {a.contend}; "
              f"command progress on a {'pipe' if a.no_tty else 'terminal'}", flush=True)
        rows: list[tuple[float, str, dict]] = []
        print(f"{'rate':>6} {'client':<8} {'achieved':>9} {'lag p50':>8} {'lag p99':>8} {'ttft-err p50':>12} "
              f"{'ttft-err p99':>12} {'cpu s':>6} {'cpu/1k tok':>10} {'srv late p99':>12} {'srv cpu':>7} {'cpu wait':>8}"
              "   (ms unless noted)", flush=True)
        for rate in rates:
            for rep in range(a.repeat):
                seed = a.seed + rep
                req = _make_requests(tmp, rate, a.duration, seed)
                for client in ["ref", *(["floor"] if a.floor else []), *transports]:
                    _wait_idle(url)
                    _get(url + "/stats/reset")
                    psi0, w0 = _psi_cpu_us(), time.monotonic()
                    if client == "ref":
                        r = run_ref(ref, rate, a.duration, port, seed)
                    elif client == "floor":
                        r = run_floor(rate, a.duration, port, seed)
                    else:
                        r = run_ours(req, url, client, a.api, not a.no_tty, tmp, a.duration * 4 + 120)
                    r["cpu_wait"] = (_psi_cpu_us() - psi0) / 1e6 / (time.monotonic() - w0)
                    st = _get(url + "/stats")
                    r["srv_late_p99"] = st["first_token_late_ms"]["p99"] * 1e-3
                    span = st["last_done_unix"] - st["first_req_unix"]
                    r["srv_cpu"] = st["cpu_s"] / span if span > 0 else float("nan")
                    r["cpu_per_ktok"] = r["cpu_s"] / max(st["tokens"], 1) * 1e3
                    rows.append((rate, client, r))
                    print(f"{rate:6.0f} {client:<8} {r['achieved']:9.1f} {r['lag_p50'] * 1e3:8.3f} "
                          f"{r['lag_p99'] * 1e3:8.3f} {r['ttft_err_p50'] * 1e3:12.3f} {r['ttft_err_p99'] * 1e3:12.3f} "
                          f"{r['cpu_s']:6.2f} {r['cpu_per_ktok'] * 1e3:10.3f} {r['srv_late_p99'] * 1e3:12.3f} {r['srv_cpu'] * 100:6.0f}% "
                          f"{r['cpu_wait'] * 100:7.0f}%", flush=True)
        print("\nratios ours/ref (median over repeats): send lag p99, TTFT error p99, CPU per token")
        if a.floor:
            for rate in rates:
                fl = float(np.median([r["cpu_per_ktok"] for x, c, r in rows if x == rate and c == "floor"]))
                rf = float(np.median([r["cpu_per_ktok"] for x, c, r in rows if x == rate and c == "ref"]))
                print(f"{rate:6.0f} uvloop floor client: cpu/token {fl / rf:.2f} of the reference's")
        verdicts = []
        for rate in rates:
            rmed = {k: float(np.median([r[k] for x, c, r in rows if x == rate and c == "ref"]))
                    for k in rows[0][2]}
            for t in transports:
                med = {k: float(np.median([r[k] for x, c, r in rows if x == rate and c == t])) for k in rows[0][2]}

                def ratio(k: str, med: dict = med, rmed: dict = rmed) -> str:
                    return f"{med[k] / rmed[k]:.2f}" if rmed[k] > 1e-6 else "inf"

                print(f"{rate:6.0f} {t:<8} lag p99 {ratio('lag_p99'):>6}  ttft-err p99 {ratio('ttft_err_p99'):>6}  "
                      f"cpu/token {ratio('cpu_per_ktok'):>6}")
                if rate == 1000:
                    ok_lag = med["lag_p99"] <= max(2 * rmed["lag_p99"], 0.002)
                    ok_ttft = med["ttft_err_p99"] <= max(2 * rmed["ttft_err_p99"], 0.005)
                    ok_cpu = med["cpu_per_ktok"] <= 1.2 * rmed["cpu_per_ktok"]
                    verdicts.append(f"1000 req/s {t}: send lag p99 {med['lag_p99'] * 1e3:.2f} ms "
                                    f"({'PASS' if ok_lag else 'MISS'}), TTFT error p99 "
                                    f"{med['ttft_err_p99'] * 1e3:.2f} ms ({'PASS' if ok_ttft else 'MISS'}), "
                                    f"CPU per token {ratio('cpu_per_ktok')}x ({'PASS' if ok_cpu else 'MISS'})")
                if rate == 300:
                    limit = 0.005 if a.contend else 0.002
                    ok = med["ttft_err_p99"] <= limit
                    verdicts.append(f"300 req/s {t}: TTFT error p99 {med['ttft_err_p99'] * 1e3:.2f} ms "
                                    f"({'PASS' if ok else 'MISS'}; target <= {limit * 1e3:g} ms)")
        if verdicts:
            print("\ntargets:")
            for v in verdicts:
                print("  " + v)
    finally:
        for b in busy:
            b.kill()
            b.wait()
        server.terminate()
        server.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
