"""One `/metrics` for all workers of `run --workers N`: the parent scrapes its workers and sums.

Why scrape-and-sum rather than prometheus_client's multiprocess mode: the exporter
(`metrics.prometheus.LoadMetrics`) is a custom collector over numpy arrays, not prometheus_client
metric objects, so there is nothing for multiprocess mode to share. Every series it exposes is
additive across disjoint shards: counters and histogram buckets/sums/counts obviously, and the two
gauges too (`servegen_in_flight` and `servegen_scheduled_rate` of the whole run are the workers'
sums). So the parent serves, at each scrape, the per-series sum of its workers' latest values.

Each worker serves its own `/metrics` on a private 127.0.0.1 port; when it finishes it writes its
final text to a snapshot file (`RunConfig.metrics_snapshot`) and the parent uses that from then on,
so counters never go backwards when a worker exits and the final totals are exact. A worker that
cannot be scraped for a moment contributes its last successful scrape.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ..direct import urlopen
from ..metrics.prometheus import push_text as push_text  # re-exported: one Pushgateway client
from ..metrics.prometheus import serve_text


def parse_text(text: str) -> tuple[list[str], dict[str, list[str]], dict[str, dict[str, float]]]:
    """Prometheus text -> (family order, HELP/TYPE lines per family, {family: {series: value}}).

    Only the exposition `LoadMetrics.render` writes is expected: `# HELP`/`# TYPE` before each
    family, then `name{labels} value` lines; a series is keyed by its full `name{labels}` text.
    """
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    values: dict[str, dict[str, float]] = {}
    fam = ""
    for line in text.split("\n"):  # the format's one line break (`splitlines` also cuts at \r, U+2028)
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                fam = parts[2]
                if fam not in meta:
                    order.append(fam)
                    meta[fam] = []
                    values[fam] = {}
                if line not in meta[fam]:
                    meta[fam].append(line)
            continue
        key, _, val = line.rpartition(" ")
        if not key:
            continue
        try:
            v = float(val)
        except ValueError:
            continue
        if fam not in values:
            order.append(fam)
            meta[fam] = []
            values[fam] = {}
        values[fam][key] = values[fam].get(key, 0.0) + v
    return order, meta, values


def sum_texts(texts: list[str]) -> str:
    """The per-series sum of several expositions of the same exporter (families in first-seen order)."""
    order: list[str] = []
    meta: dict[str, list[str]] = {}
    total: dict[str, dict[str, float]] = {}
    for text in texts:
        o, m, vals = parse_text(text)
        for fam in o:
            if fam not in total:
                order.append(fam)
                meta[fam] = list(m[fam])
                total[fam] = {}
            dst = total[fam]
            for k, v in vals[fam].items():
                dst[k] = dst.get(k, 0.0) + v
    out: list[str] = []
    for fam in order:
        out.extend(meta[fam])
        for k, v in total[fam].items():
            out.append(f"{k} {int(v) if v == int(v) else repr(v)}")
    return "\n".join(out) + "\n" if out else ""


class WorkerMetrics:
    """The workers' /metrics, summed; serve it with `serve()`, read it with `text()`."""

    def __init__(self, ports: list[int], snapshots: list[Path], timeout: float = 1.0) -> None:
        self.ports = ports
        self.snapshots = snapshots
        self.timeout = timeout
        self._last: list[str] = [""] * len(ports)
        self._lock = threading.Lock()
        self._server: Any = None

    def _one(self, i: int) -> str:
        snap = self.snapshots[i]
        if snap.exists():  # the worker has finished: its final values, for good
            text = snap.read_text()
        else:
            try:
                with urlopen(f"http://127.0.0.1:{self.ports[i]}/metrics", timeout=self.timeout) as r:
                    text = r.read().decode()
            except OSError:
                return self._last[i]
        self._last[i] = text
        return text

    def text(self) -> str:
        with self._lock:  # one scrape of the workers at a time
            return sum_texts([self._one(i) for i in range(len(self.ports))])

    def serve(self, port: int, host: str) -> int:
        """Serve the sum at /metrics from a daemon thread; the bound port."""
        self._server = serve_text(lambda: self.text().encode(), host, port, "metrics-sum")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
