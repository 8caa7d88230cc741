"""Live Prometheus exporter for a run: latency histograms, request/token counters, gauges.

Design: finished flights are queued by the runner (one list append on the hot path) and folded
into numpy bucket arrays by `observe()` from the runner's housekeeping task a few times a
second: at request completion, never per chunk. ITL is observed per token gap (a chunk holding
k tokens counts as k gaps of gap/k, as in `metrics.stats`), which a stock `Histogram.observe`
per gap would make far too costly at 100k chunks/s; hence a small custom collector on a
dedicated registry (the process-global one is left alone). Scrapes come from the exporter's
thread, so the arrays are guarded by a lock. `/metrics` is served by
`render()` (a direct text renderer, ten times faster than prometheus_client's generic exposition,
which would hold the GIL for tens of ms per scrape); the collector protocol (`collect`) stays for
`push_to_gateway` and anyone who registers `LoadMetrics.registry` elsewhere.

Labels are bounded: `category` and `client`, where only the top clients by scheduled traffic
(in the first look-ahead window, see `runner`) keep their names and the rest are `other`;
likewise at most `max_categories` categories.

Metric names (prefix `servegen_`): `ttft_seconds`, `tpot_seconds`, `itl_seconds`,
`e2e_seconds`, `send_lag_seconds` (histograms); `requests_total{status}`,
`prompt_tokens_total`, `completion_tokens_total` (counters); `in_flight`,
`scheduled_rate` (gauges, requests and requests/s).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from . import stats

PUSH_TIMEOUT_S = 5.0  # --push-timeout: the longest the end of a run waits for a Pushgateway

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                   0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0,
                   30.0, 45.0, 60.0)
LAG_BUCKETS = (0.0001, 0.00025, 0.0005, *LATENCY_BUCKETS)
_HISTS = {
    "ttft": ("servegen_ttft_seconds", "Time to first token: first_token - sent", LATENCY_BUCKETS),
    "tpot": ("servegen_tpot_seconds", "Time per output token: (e2e - ttft) / (completion_tokens - 1)",
             LATENCY_BUCKETS),
    "itl": ("servegen_itl_seconds", "Inter-token latency (a chunk of k tokens = k gaps of gap/k)",
            LATENCY_BUCKETS),
    "e2e": ("servegen_e2e_seconds", "End-to-end latency: last_token - sent", LATENCY_BUCKETS),
    "send_lag": ("servegen_send_lag_seconds", "Send lag: sent - scheduled - queue_time", LAG_BUCKETS),
}
OTHER = "other"


class _Hist:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros((0, len(bounds) + 1), dtype=np.float64)
        self.sums = np.zeros(0, dtype=np.float64)

    def grow(self, n_keys: int) -> None:
        if n_keys > len(self.sums):
            extra = n_keys - len(self.sums)
            self.counts = np.vstack([self.counts, np.zeros((extra, self.counts.shape[1]))])
            self.sums = np.concatenate([self.sums, np.zeros(extra)])

    def add(self, keys: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        ok = np.isfinite(values)
        if not ok.all():
            keys, values = keys[ok], values[ok]
            weights = None if weights is None else weights[ok]
        if not len(values):
            return
        w = np.ones(len(values)) if weights is None else weights
        idx = np.searchsorted(self.bounds, values, side="left")  # le semantics: v <= bound
        np.add.at(self.counts, (keys, idx), w)
        np.add.at(self.sums, keys, values * w)


class LoadMetrics:
    """The run's metrics: feed finished flights with `queue()`, fold them in with `observe()`."""

    def __init__(self, top_clients: Iterable[str] = (), max_categories: int = 20) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._clients = set(top_clients)
        self._max_categories = max_categories
        self._categories: dict[str, str] = {}
        self._keys: dict[tuple[str, str], int] = {}
        self._labels: list[tuple[str, str]] = []
        self._hists = {k: _Hist(v[2]) for k, v in _HISTS.items()}
        self._requests: dict[tuple[str, str, str], float] = {}
        self._prompt = np.zeros(0)
        self._completion = np.zeros(0)
        self.in_flight = 0
        self.scheduled_rate = 0.0
        self.pending: list[Any] = []
        self.registry.register(self)  # type: ignore[arg-type]
        self._server: Any = None

    # --- labels ---
    def _key(self, category: str, client: str) -> int:
        cat = self._categories.get(category)
        if cat is None:
            cat = category if len(self._categories) < self._max_categories else OTHER
            self._categories[category] = cat
        cl = client if client in self._clients else OTHER
        pair = (cat, cl)
        k = self._keys.get(pair)
        if k is None:
            k = self._keys[pair] = len(self._labels)
            self._labels.append(pair)
        return k

    # --- feeding ---
    def queue(self, f: Any) -> None:
        self.pending.append(f)

    def observe(self, t0: float) -> None:
        """Fold the queued flights into the arrays (vectorised; call a few times a second)."""
        batch, self.pending = self.pending, []
        if not batch:
            return
        n = len(batch)
        keys = np.fromiter((self._key(f.req.category, f.req.client) for f in batch), dtype=np.int64, count=n)
        nan = float("nan")
        sent = np.array([f.sent if f.sent is not None else nan for f in batch])
        first = np.array([f.first_token if f.first_token is not None else nan for f in batch])
        last = np.array([f.last_token if f.last_token is not None else nan for f in batch])
        qt = np.array([f.queue_time or 0.0 for f in batch])
        sched = np.array([f.t_rel + t0 for f in batch])
        ctoks = np.array([f.completion_tokens if f.completion_tokens is not None else nan for f in batch])
        ptoks = np.array([f.prompt_tokens if f.prompt_tokens is not None else nan for f in batch])
        ok = np.array([f.status == "ok" for f in batch])
        nchunks = np.fromiter((len(f.chunks) for f in batch), dtype=np.int64, count=n)
        ttft = np.where(ok, stats.ttft(first, sent), nan)
        e2e = np.where(ok, stats.e2e(last, sent), nan)
        toks = stats.output_tokens(ctoks, nchunks)
        tpot = stats.tpot(e2e, ttft, toks)
        lag = stats.send_lag(sent, sched, qt)
        flat = np.fromiter(itertools.chain.from_iterable(f.chunks for f in batch), dtype=np.float64,
                           count=int(nchunks.sum()))
        itl_v, itl_w, itl_rows = stats.itl(flat, nchunks, toks, rows=ok)
        with self._lock:
            n_keys = len(self._labels)
            for h in self._hists.values():
                h.grow(n_keys)
            self._hists["ttft"].add(keys, ttft)
            self._hists["e2e"].add(keys, e2e)
            self._hists["tpot"].add(keys, tpot)
            self._hists["send_lag"].add(keys, lag)
            self._hists["itl"].add(keys[itl_rows], itl_v, itl_w)
            if len(self._prompt) < n_keys:
                self._prompt = np.concatenate([self._prompt, np.zeros(n_keys - len(self._prompt))])
                self._completion = np.concatenate([self._completion, np.zeros(n_keys - len(self._completion))])
            np.add.at(self._prompt, keys, np.nan_to_num(ptoks))
            np.add.at(self._completion, keys, np.nan_to_num(ctoks))
            for f, kk_ in zip(batch, keys.tolist(), strict=True):
                cat, cl = self._labels[kk_]
                rk = (f.status or "ok", cat, cl)
                self._requests[rk] = self._requests.get(rk, 0.0) + 1.0

    def set_gauges(self, in_flight: int, scheduled_rate: float) -> None:
        self.in_flight = in_flight
        self.scheduled_rate = scheduled_rate

    # --- exposition (prometheus_client collector protocol) ---
    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        with self._lock:
            labels = list(self._labels)
            for key, (name, doc, bounds) in _HISTS.items():
                h = self._hists[key]
                fam = HistogramMetricFamily(name, doc, labels=["category", "client"])
                for i, (cat, cl) in enumerate(labels):
                    if i >= len(h.sums):
                        break
                    cum = np.cumsum(h.counts[i])
                    buckets = [(_le(b), float(c)) for b, c in zip(bounds, cum[:-1], strict=True)]
                    buckets.append(("+Inf", float(cum[-1])))
                    fam.add_metric([cat, cl], buckets, float(h.sums[i]))
                yield fam
            req = CounterMetricFamily("servegen_requests", "Finished requests by status",
                                      labels=["status", "category", "client"])
            for (st, cat, cl), v in sorted(self._requests.items()):
                req.add_metric([st, cat, cl], v)
            yield req
            for name, doc, arr in (("servegen_prompt_tokens", "Prompt tokens (server usage)", self._prompt),
                                   ("servegen_completion_tokens", "Completion tokens (server usage)",
                                    self._completion)):
                fam = CounterMetricFamily(name, doc, labels=["category", "client"])
                for i, (cat, cl) in enumerate(labels[:len(arr)]):
                    fam.add_metric([cat, cl], float(arr[i]))
                yield fam
        yield GaugeMetricFamily("servegen_in_flight", "Requests sent and not finished", value=self.in_flight)
        yield GaugeMetricFamily("servegen_scheduled_rate", "Scheduled requests per second (last 5 s)",
                                value=self.scheduled_rate)

    # --- fast text exposition (what /metrics serves) ---
    def render(self) -> bytes:
        """The Prometheus text format (0.0.4) of everything, built straight from the arrays.

        prometheus_client's generic path costs about 5 µs per sample line, 40 ms for a few
        thousand lines, all of it holding the GIL the event loop needs; this costs about a tenth.
        """
        out: list[str] = []
        add = out.append
        with self._lock:
            labels = [f'category="{_esc(c)}",client="{_esc(cl)}"' for c, cl in self._labels]
            for key, (name, doc, bounds) in _HISTS.items():
                h = self._hists[key]
                add(f"# HELP {name} {doc}\n# TYPE {name} histogram\n")
                les = [f'le="{_le(b)}"' for b in bounds] + ['le="+Inf"']
                cum = np.cumsum(h.counts, axis=1).tolist()
                for i, lab in enumerate(labels[:len(h.sums)]):
                    row = cum[i]
                    for le, v in zip(les, row, strict=True):
                        add(f"{name}_bucket{{{lab},{le}}} {_num(v)}\n")
                    add(f"{name}_count{{{lab}}} {_num(row[-1])}\n{name}_sum{{{lab}}} {float(h.sums[i])!r}\n")
            add("# HELP servegen_requests_total Finished requests by status\n# TYPE servegen_requests_total counter\n")
            for (st, cat, cl), v in sorted(self._requests.items()):
                add(f'servegen_requests_total{{status="{st}",category="{_esc(cat)}",client="{_esc(cl)}"}} {_num(v)}\n')
            for name, doc, arr in (("servegen_prompt_tokens", "Prompt tokens (server usage)", self._prompt),
                                   ("servegen_completion_tokens", "Completion tokens (server usage)",
                                    self._completion)):
                add(f"# HELP {name}_total {doc}\n# TYPE {name}_total counter\n")
                for lab, v in zip(labels, arr.tolist(), strict=False):
                    add(f"{name}_total{{{lab}}} {_num(v)}\n")
        add("# HELP servegen_in_flight Requests sent and not finished\n# TYPE servegen_in_flight gauge\n"
            f"servegen_in_flight {self.in_flight}\n")
        add("# HELP servegen_scheduled_rate Scheduled requests per second (last 5 s)\n"
            f"# TYPE servegen_scheduled_rate gauge\nservegen_scheduled_rate {float(self.scheduled_rate)!r}\n")
        return "".join(out).encode()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve `render()` at /metrics from a daemon thread; returns the bound port.

        The thread switch interval drops to 1 ms meanwhile, so a scrape holding the GIL delays the
        event loop by at most about that much.
        """
        import sys

        server = serve_text(self.render, host, port, "metrics")
        self._server = server
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, 0.001))
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            import sys

            self._server.shutdown()
            self._server.server_close()
            self._server = None
            sys.setswitchinterval(self._switch)

    def push(self, gateway: str, job: str = "servegen-load", timeout: float = PUSH_TIMEOUT_S) -> None:
        """Push the final values to a Pushgateway (the `render()` text: the same samples as `collect`)."""
        push_text(gateway, self.render().decode(), job=job, timeout=timeout)


def push_text(gateway: str, text: str, job: str = "servegen-load", grouping: dict[str, str] | None = None,
              timeout: float = PUSH_TIMEOUT_S) -> None:
    """PUT an exposition to a Pushgateway group (what `push_to_gateway` does, from text).

    `user:password@` in the URL is sent as basic auth and never shown (errors name the redacted URL).
    """
    import base64
    import urllib.request
    from urllib.parse import quote, urlsplit, urlunsplit

    url = gateway if "://" in gateway else "http://" + gateway
    parts = urlsplit(url)
    headers = {"Content-Type": CONTENT_TYPE}
    if parts.username is not None or parts.password is not None:
        from urllib.parse import unquote

        cred = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        netloc = parts.hostname or ""
        netloc = f"[{netloc}]" if ":" in netloc else netloc
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    path = f"/metrics/job/{quote(job, safe='')}"
    for k, v in (grouping or {}).items():
        path += f"/{quote(k, safe='')}/{quote(v, safe='')}"
    req = urllib.request.Request(url.rstrip("/") + path, data=text.encode(), method="PUT", headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        r.read()


def push_bounded(push: Callable[[], None], gateway: str, timeout: float,
                 stop: threading.Event | None = None) -> str | None:
    """Run `push` in a daemon thread and wait at most `timeout` s (a Pushgateway that never answers,
    or trickles bytes, must not hold the end of the run). Returns a warning, or None when it was
    pushed. `stop` set (a signal) ends the wait early. Ctrl-C while waiting raises KeyboardInterrupt."""
    from ..dispatch.endpoint import redact_url

    result: list[BaseException | None] = []
    done = threading.Event()

    def work() -> None:
        try:
            push()
            result.append(None)
        except Exception as e:  # any failure is a warning, not the run's failure
            result.append(e)
        done.set()

    threading.Thread(target=work, name="pushgateway", daemon=True).start()
    deadline = time.monotonic() + timeout + 0.5
    silent = f"push to {redact_url(gateway)} got no answer within {timeout:g} s (--push-timeout); not pushed"
    while not done.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return silent
        if stop is not None and stop.is_set():
            return f"push to {redact_url(gateway)} abandoned (interrupted)"
        done.wait(min(left, 0.05))
    err = result[0] if result else None
    if err is None:
        return None
    if isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError):
        return silent
    return f"push to {redact_url(gateway)} failed: {redact_url(str(err) or type(err).__name__)}"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _esc(v: str) -> str:
    r"""A label value as the text format has it: `\\`, `"` and a line feed escaped (the format's
    only escapes, so two names stay two series), any other control or line-breaking character
    (`\r`, U+2028, U+0085) as U+FFFD: a client named from a requests file cannot break a line
    of the exposition (prometheus_client's parser failed on one). Controls went through the
    terminal's escaping before: a newline and a written backslash-n became one series."""
    v = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return v if v.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in v)


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


def _le(b: float) -> str:
    return repr(float(b))


def serve_text(render: Callable[[], bytes], host: str, port: int, name: str) -> Any:
    """A ThreadingHTTPServer answering GET /metrics with `render()`, serving from a daemon thread.

    One implementation for the run's exporter and the `--workers` sum, so both bind, answer and fail
    (one line, exit 2) the same way.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        from ..errors import InputError

        raise InputError(f"cannot serve metrics on {host}:{port}: {e.strerror}", field="--metrics-port") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
