"""Command line: thin typer commands, one per pipeline stage; the logic lives in the modules.

Every user mistake surfaces as one line on stderr and exit code 2 (see `main`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

# One BLAS thread, set before numpy loads: this package's matrices are small, and OpenBLAS's extra
# threads spin after start-up on the core the event loop needs (0.15 s of CPU per command here).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer

from .errors import InputError, printable

if TYPE_CHECKING:
    from .run.spec import RunSpec

app = typer.Typer(
    name="servegen-load",
    help="Realistic per-client LLM workloads (ServeGen) and an open-loop load generator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("servegen-load")
        except PackageNotFoundError:
            from . import __version__ as v
        print(f"servegen-load {v}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                       callback=_version, is_eager=True)) -> None:
    """Realistic per-client LLM workloads (ServeGen) and an open-loop load generator."""




def _flags_take_no_value() -> None:
    """typer 0.29 shows `<bool>` beside every flag (`--json`, even `--help`), as if it took a
    value: a flag's type column stays empty."""
    from typer.core import TyperOption

    show = TyperOption.display_type_rich
    if getattr(show, "_flags_fixed", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:  # type: ignore[name-defined]
        return None if self.is_flag else show(self, ctx)

    display_type_rich._flags_fixed = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()
pool_app = typer.Typer(help="Client pools: import ServeGen data, list shipped pools.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


# --- workload commands (pool import, generate, inspect) ---


@pool_app.command("import")
def pool_import(
    folder: str = typer.Argument(..., help="A ServeGen pool folder, e.g. data/language/m-large."),
    output: str = typer.Option(..., "-o", "--output", help="Pool file to write (.npz)."),
    name: str | None = typer.Option(None, help="Pool name (default: the folder's name)."),
    category: str | None = typer.Option(None, help="language, multimodal or reason (default: inferred)."),
    ks_max: float = typer.Option(0.004, "--ks-max", help="Max KS distance of each stored length table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Import one ServeGen pool folder (trace CSVs + dataset JSONs) into a compact pool file."""
    import shlex

    from .outputs import check_paths
    from .workload.servegen_import import import_servegen

    check_paths([("-o", output)], [("FOLDER", folder)])  # outputs hook: never overwrite the input
    cmd = shlex.join(["servegen-load", "pool", "import", folder, "-o", output]
                     + (["--name", name] if name else []) + (["--category", category] if category else [])
                     + ["--ks-max", f"{ks_max:g}"])
    pool = import_servegen(folder, name=name, category=category, ks_max=ks_max, command=cmd, progress=not quiet)
    pool.save(output)
    print(f"wrote {output}: {pool.name} ({pool.category}), {pool.n_clients} clients, "
          f"{pool.span / 86400:g} day{'' if pool.span == 86400 else 's'}, {pool.offsets.size - 1} length tables, "
          f"{len(pool.fallback)} with fallback lengths", file=sys.stderr)


@app.command("generate")
def generate_cmd(
    scenario: str = typer.Argument(..., help="Scenario YAML (see scenarios/)."),
    output: str = typer.Option(..., "-o", "--output", help="Requests file to write (JSONL)."),
    seed: int | None = typer.Option(None, "--seed", help="Replace the scenario's seed."),
    shard: str | None = typer.Option(None, "--shard", help="i/N: only shard i (0-based) of N, split by client."),
    duration: float | None = typer.Option(None, "--duration", help="Replace the scenario's `duration` (seconds)."),
    rate: float | None = typer.Option(None, "--rate", help="Replace the scenario's rate level by this mean req/s (as `run --rate`; not for a replay)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line."),
) -> None:
    """Generate a scenario's requests as time-ordered JSONL (deterministic by seed, streaming)."""
    from .outputs import check_paths
    from .workload.compose import generate_to_file

    check_paths([("-o", output)], [("SCENARIO", scenario)])  # outputs hook: never overwrite the input
    source: object = scenario
    if rate is not None:
        from .run.source import scenario_with

        if not rate > 0:
            raise InputError(f"expected a rate > 0, got {rate}", field="--rate")
        source = scenario_with(scenario, rate)
        if source.kind == "replay":  # type: ignore[attr-defined]
            raise InputError("a replay keeps its trace's timing: set replay.time_scale", field="--rate")
    r = generate_to_file(source, output, shard=shard, seed=seed, duration=duration,  # type: ignore[arg-type]
                         progress=not quiet and sys.stderr.isatty())
    d = r["duration"]
    per_s = (lambda n: f"{n / d:.3g} req/s") if d > 0 else (lambda n: "-")
    print(f"wrote {r['output']}: {r['requests']} requests ({per_s(r['requests'])}) from {r['active_clients']} of "
          f"{r['clients']} clients over {d:g} s; intended {r['expected_requests']:g} ({per_s(r['expected_requests'])}) "
          f"in {r['seconds']:.2f} s", file=sys.stderr)


@pool_app.command("list")
def pool_list() -> None:
    """List the shipped pools: clients, span, category."""
    from .inspect import render_shipped, shipped_pools

    render_shipped(shipped_pools())


@app.command("inspect")
def inspect_cmd(
    target: str = typer.Argument(..., help="A pool (.npz or shipped name), requests JSONL or scenario YAML."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    scenario: str | None = typer.Option(None, "--scenario", help="Requests only: the scenario they came from."),
) -> None:
    """Statistics of a pool, a requests file or a scenario."""
    from .inspect import detect_kind, inspect_pool, inspect_requests_file, print_scenario

    kind = detect_kind(target)
    if kind == "pool":
        inspect_pool(target, as_json=as_json)
    elif kind == "requests":  # servegen_load.workload.fidelity.inspect_requests, imported lazily
        inspect_requests_file(target, scenario=scenario, as_json=as_json)
    else:  # servegen_load.scenario.load_scenario, imported lazily
        print_scenario(target, as_json=as_json)


# --- fit / compare commands ---


# The log-column options `fit` and `compare` share (one declaration, one meaning).
TimeColumn = Annotated[str | None, typer.Option("--time-column", help="Time column of the log(s) (default: guessed).")]
TimeUnit = Annotated[str, typer.Option("--time-unit", help="auto, s, ms, us, ns or iso (logs).")]
ClientColumn = Annotated[str | None, typer.Option("--client-column", help="Client/tenant column ('' for none).")]
SessionColumn = Annotated[str | None, typer.Option("--session-column", help="Session/conversation id column.")]
InputColumn = Annotated[str | None, typer.Option("--input-column", help="Input (prompt) token column.")]
OutputColumn = Annotated[str | None, typer.Option("--output-column", help="Output (completion) token column.")]
ReasonColumn = Annotated[str | None, typer.Option("--reason-column", help="Reasoning token column.")]
ColumnRoles = Annotated[list[str], typer.Option("--column", help="ROLE=NAME for any role, e.g. image_count=n_images.")]


def _requests_duration(path: str) -> float | None:
    """The schedule's length a requests file's header gives (`generate` writes it), else None."""
    from .formats import first_object

    with open(path, "rb") as fh:
        head = first_object(fh.readline())
    d = head.get("duration") if head is not None else None
    return float(d) if isinstance(d, int | float) and d > 0 else None


def _column_map(time_column: str | None, time_unit: str, client_column: str | None, session_column: str | None,
                input_column: str | None, output_column: str | None, reason_column: str | None,
                column: list[str]) -> object:
    """ColumnMap from the options; `--column ROLE=NAME` covers every role (media columns too)."""
    from .workload.logs import ROLES, ColumnMap

    named: dict[str, str | None] = {"time": time_column, "client": client_column, "session": session_column,
                                    "input": input_column, "output": output_column, "reason": reason_column}
    for item in column:
        role, sep, name = item.partition("=")
        role = role.strip().replace("-", "_")
        if not sep or role not in ROLES:
            raise InputError(f"--column expects ROLE=NAME with ROLE one of {', '.join(ROLES)}, got {item!r}")
        named[role] = name.strip()
    return ColumnMap(time_unit=time_unit, **{k: v for k, v in named.items() if v is not None})


def _time_range(text: str | None, option: str) -> tuple[float, float | None] | None:
    """`START:END` (seconds after the first request; END may be empty) -> (start, end)."""
    if text is None:
        return None
    a, sep, b = text.partition(":")
    try:
        start = float(a) if a.strip() else 0.0
        end = float(b) if b.strip() else None
    except ValueError:
        start, end, sep = 0.0, None, ""
    if end == float("inf"):
        end = None  # to the end
    if not sep or not 0 <= start < float("inf") or (end is not None and not end > start):
        raise InputError(f"{option} expects START:END in seconds after the first request (END optional), "
                         f"got {text!r}")
    return start, end


@app.command("fit")
def fit_cmd(
    logs: list[str] = typer.Argument(..., help="Request logs: Azure/Mooncake traces, CSV, JSONL, requests or results files."),  # noqa: B008
    output: str = typer.Option(..., "-o", "--output", help="Pool file to write (.npz)."),
    fmt: str = typer.Option("auto", "--format", help="auto, azure, mooncake, bailian, burstgpt, csv, jsonl, requests, results."),
    time_column: TimeColumn = None,
    time_unit: TimeUnit = "auto",
    client_column: ClientColumn = None,
    session_column: SessionColumn = None,
    input_column: InputColumn = None,
    output_column: OutputColumn = None,
    reason_column: ReasonColumn = None,
    column: ColumnRoles = [],  # noqa: B006
    window: float | None = typer.Option(None, "--window", help="Rate window (s): rate and gap family per window. "
                                        "Default 600, or 300/120/60 where a main client bursts for less and the "
                                        "finer window matches its counts clearly better (printed, in the pool)."),
    data_window: float = typer.Option(21600.0, "--data-window", help="Length-table window (s)."),
    name: str | None = typer.Option(None, "--name", help="Pool name (default: the first log's file name)."),
    category: str | None = typer.Option(None, "--category", help="language, multimodal or reason (default: from the columns)."),
    min_requests: int = typer.Option(50, "--min-requests", min=0, help="Clients with fewer requests are merged into 'other'."),
    start_of_day: bool = typer.Option(False, "--start-of-day", help="Pool time 0 = the midnight before the first request (on the log's own clock: UTC, or the offset its times carry)."),
    ks_max: float = typer.Option(0.004, "--ks-max", help="Max KS distance of each stored length table."),
    time_range: str | None = typer.Option(None, "--range", help="Fit only START:END seconds after the first request."),
) -> None:
    """Fit a pool (per-client rate windows, gap families, length tables) to request logs."""
    from .outputs import check_paths
    from .workload.fit import FitOptions, fit_logs

    check_paths([("-o", output)], [("LOGS", p) for p in logs])

    cols = _column_map(time_column, time_unit, client_column, session_column, input_column, output_column,
                       reason_column, column)
    opts = FitOptions(window=window, data_window=data_window, name=name, category=category,
                      min_requests=min_requests, start_of_day=start_of_day, ks_max=ks_max,
                      time_range=_time_range(time_range, "--range"))
    pool, report = fit_logs(logs, fmt, cols, opts)
    pool.save(output)
    print(report.summary(pool), file=sys.stderr)
    print(f"wrote {output}", file=sys.stderr)


@app.command("compare")
def compare_cmd(
    a: str = typer.Argument(..., help="Stream A: a log, requests file or results file."),
    b: str = typer.Argument(..., help="Stream B, the reference: a log, requests file or results file."),
    format_a: str = typer.Option("auto", "--format-a", help="Format of A (auto, azure, mooncake, bailian, burstgpt, csv, jsonl, requests, results)."),
    format_b: str = typer.Option("auto", "--format-b", help="Format of B."),
    results_time: str = typer.Option("scheduled", "--results-time", help="Time of results files: scheduled or sent."),
    html_out: str | None = typer.Option(None, "--html", help="Also write the table as a self-contained HTML file."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    max_distance: float | None = typer.Option(None, "--max-distance", help="Exit 1 when the distance exceeds this."),
    ignore: list[str] = typer.Option([], "--ignore", help="Row keys (globs) left out of the distance, e.g. 'rate.*'."),  # noqa: B008
    range_a: str | None = typer.Option(None, "--range-a", help="Use only START:END seconds after A's first request."),
    range_b: str | None = typer.Option(None, "--range-b", help="Use only START:END seconds after B's first request."),
    time_column: TimeColumn = None,
    time_unit: TimeUnit = "auto",
    client_column: ClientColumn = None,
    session_column: SessionColumn = None,
    input_column: InputColumn = None,
    output_column: OutputColumn = None,
    reason_column: ReasonColumn = None,
    column: ColumnRoles = [],  # noqa: B006
) -> None:
    """Realism statistics of two request streams side by side, one distance at the bottom.

    The column options are `fit`'s and apply to the log(s) among A and B (CSV, JSONL, Azure,
    Mooncake), not to requests or results files, whose columns are known."""
    import json

    from .atomic import atomic_write
    from .metrics.realism import compare_streams, render_html, render_rich, render_text, stream_stats
    from .outputs import check_paths
    from .workload.logs import ColumnMap, detect_format, load_log, warn_bad_rows

    check_paths([("--html", html_out)], [("A", a), ("B", b)])
    if results_time not in ("scheduled", "sent"):
        raise InputError(f"--results-time expects scheduled or sent, got {results_time!r}")
    if max_distance is not None and not max_distance >= 0:
        raise InputError(f"expected a distance >= 0, got {max_distance}", field="--max-distance")
    logs = []
    read_as: list[str] = []  # printed once both streams are usable (bad input stays one line)
    log_cols = _column_map(time_column, time_unit, client_column, session_column, input_column, output_column,
                           reason_column, column)

    def load(path: str, fmt: str, rng: str | None, option: str, which: str) -> object:
        window = _time_range(rng, option)
        f = detect_format(path) if fmt == "auto" else fmt
        cols = ColumnMap(time=results_time) if f == "results" else None if f == "requests" else log_cols
        log = load_log(path, f, cols, warn=False)  # bad-row warnings once both streams are usable
        read_as.append(f"servegen-load: {which}: {path}: read as {log.describe()}")
        logs.append(log)
        start, end = None, None  # the stream's span, where it is known (else its first to last request)
        if f in ("requests", "results"):  # the schedule's t = 0 (log times count from the first row's),
            start, end = -log.origin, _requests_duration(path) if f == "requests" else None  # to its length
            end = None if end is None else end - log.origin
        if window is not None:
            first = float(log.t.min()) if len(log) else 0.0  # ranges count from the first request
            log = log.time_range(*window)
            if len(log) == 0:
                raise InputError(f"no requests in {option} {rng}", path=path)
            start, end = first + window[0], None if window[1] is None else first + window[1]
        return stream_stats(log, path if window is None else f"{path} [{rng}]", start, end)

    sa, sb = load(a, format_a, range_a, "--range-a", "A"), load(b, format_b, range_b, "--range-b", "B")
    for line in read_as:
        print(line, file=sys.stderr)
    for log in logs:
        warn_bad_rows(log)
    cmp = compare_streams(sa, sb, ignore=ignore)
    if html_out:
        with atomic_write(html_out, "w") as fh:
            fh.write(render_html(cmp, max_distance))
    if as_json:
        print(json.dumps(cmp.to_dict(max_distance), indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(render_rich(cmp, max_distance))
    else:
        print(render_text(cmp, max_distance))
    if max_distance is not None and cmp.distance > max_distance:
        sys.exit(1)  # SystemExit passes through `main` (typer.Exit would be swallowed in non-standalone mode)


# --- run / sim commands ---


# --- reliability (docs/reliability.md): run's exit codes and failure statuses ---
RUN_EPILOG = (
    "Exit codes: 0 the schedule ran to its end (failed requests are results: judge them with "
    "`gate`; an endpoint that goes away mid-run keeps the run going, its requests end as connect_error); "
    "1 an SLO (--slo, a scenario's slo:) failed; 2 bad input; 3 not one request succeeded; "
    "4 the results could not be written; 130 stopped by SIGINT or SIGTERM (the results file still "
    "holds one line per scheduled request). Failure statuses: http_error (with http_status), timeout, "
    "disconnect, connect_error, protocol_error (incl. a stream without [DONE]), client_error, cancelled; "
    "see docs/reliability.md."
)


@app.command("run", epilog=RUN_EPILOG)
def run_cmd(
    source: str = typer.Argument(..., help="A requests file (JSONL) or a scenario (.yaml, generated on the fly)."),
    output: str = typer.Option(..., "-o", "--output", help="Results file to write (JSONL, streamed)."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000 (default: start the embedded simulator)."),
    model: str | None = typer.Option(None, "--model", help="Model name (default: the first id of the endpoint's /v1/models)."),
    api: str = typer.Option("chat", "--api", help="chat (/v1/chat/completions) or completions (/v1/completions)."),
    server_family: str | None = typer.Option(None, "--server-family", help="How output length is forced: vllm, sglang, llamacpp, openai, sim (default: vllm; sim without --endpoint)."),
    api_key_file: str | None = typer.Option(None, "--api-key-file", help="File holding the API key (default: $OPENAI_API_KEY): sent as Authorization: Bearer, or, written as 'api-key: KEY', as that header. Never written anywhere."),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="Cap on requests in flight; waiting time is recorded as queue_time."),
    duration: float | None = typer.Option(None, "--duration", help="Only requests scheduled before this many seconds (after --rate)."),
    rate: float | None = typer.Option(None, "--rate", help="Mean req/s: a scenario's own `rate` (same duration); a requests file or replay is compressed in time to it (same count)."),
    count: int | None = typer.Option(None, "--count", help="Stop after the first N requests."),
    slo: list[str] = typer.Option([], "--slo", help="SLO checked when the run ends, e.g. 'ttft_p99<=2s' (repeatable; adds to a scenario's `slo:`); a failed one exits 1."),  # noqa: B008
    timeout_connect: float = typer.Option(10.0, "--timeout-connect", help="Seconds to open a connection."),
    timeout_first_token: float = typer.Option(300.0, "--timeout-first-token", help="Seconds from send to the first token."),
    timeout_total: float = typer.Option(1800.0, "--timeout-total", help="Seconds from send to the end of the response."),
    timeout_idle: float = typer.Option(120.0, "--timeout-idle", help="Seconds without a token after the first one (a stalled stream ends as timeout)."),
    retries: int = typer.Option(0, "--retries", help="Re-send a request that failed with HTTP 429/503, could not connect, or whose kept-alive connection closed before any byte of answer, up to N times (default 0: never re-sent). Counted in `retries` and `attempts`."),
    retry_max_wait: float = typer.Option(10.0, "--retry-max-wait", help="Cap in seconds on a retry's wait (Retry-After, else back-off 0.5 s, 1 s, 2 s...)."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Send the whole schedule even when the first 20 answers are all one refusal (the same HTTP 400/401/403/404/405/422, or protocol_error); by default the run stops there (exit 3)."),
    insecure: bool = typer.Option(False, "--insecure", help="Do not verify the endpoint's TLS certificate (self-signed test servers)."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="Serve Prometheus /metrics on this port (0: any free port)."),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="Address the /metrics server binds."),
    metrics_linger: float = typer.Option(0.0, "--metrics-linger", help="Keep /metrics up this many seconds after the run (final values)."),
    pushgateway: str | None = typer.Option(None, "--pushgateway", help="Push the final metrics to this Pushgateway (host:port or URL)."),
    push_timeout: float = typer.Option(5.0, "--push-timeout", help="Seconds the end of the run waits for the Pushgateway (then warns and exits)."),
    transport: str = typer.Option("raw", "--transport", help="raw (lean asyncio HTTP/1.1, default) or aiohttp (a second HTTP stack: slower per chunk; no proxies, as raw)."),
    max_event_bytes: int = typer.Option(4 << 20, "--max-event-bytes", help="Cap on one SSE event of an answer (bytes); past it the request ends as protocol_error."),
    max_prompt_tokens: int = typer.Option(1 << 21, "--max-prompt-tokens", help="Cap on a request's input + media tokens, checked before its body is built; past it the request is not sent (client_error)."),
    lag_threshold_ms: float = typer.Option(10.0, "--lag-threshold-ms", help="Warn when the send lag p99 exceeds this."),
    progress: str = typer.Option("auto", "--progress", help="auto, live, plain or off (progress goes to stderr)."),
    summary_json: str | None = typer.Option(None, "--summary-json", help="Also write the summary as JSON here."),
    sim_preset: str | None = typer.Option(None, "--sim-preset", help="Engine preset of the embedded simulator (no --endpoint)."),
    # --- scale-out (servegen_load/scale) ---
    shard: str | None = typer.Option(None, "--shard", help="i/N: send only shard i (0-based) of N, split by client (merge the N results files with `report`)."),
    shard_by: str = typer.Option("client", "--shard-by", help="How --shard splits: client, or request (request k to shard k mod N; --workers/--ray pick it when there are fewer clients than shards)."),
    start_at: float | None = typer.Option(None, "--start-at", help="Unix time (s) of t = 0, shared by all shards; already past: start at once, lateness shows as send lag."),
    start_barrier: bool = typer.Option(False, "--start-barrier", help="When set up (source read, connections open), write `ready` to stdout and read t = 0 (unix s) from a line of stdin: how --workers starts its processes together; end of input: exit 130, nothing sent."),
    workers: str | None = typer.Option(None, "--workers", help="N or auto: run N processes (one shard each, common start), merge into one results file and summary."),
    ray: str | None = typer.Option(None, "--ray", help="[ADDRESS] One Ray actor per shard (needs the `ray` extra). ADDRESS: auto (RAY_ADDRESS / running cluster), ray://host:port, host:port; bare --ray: a local cluster. Shards: --workers N, else the cluster's CPUs."),
    # --- request content (servegen_load/content, payload) ---
    prompt_format: str = typer.Option("auto", "--prompt-format", help="ids, text or auto: token-id prompts on /v1/completions (auto: on llama.cpp, vLLM, SGLang and the simulator) for exact prompt lengths."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="How text tokens are counted: DIR (a local HF tokenizer directory; `tokenizers` extra), server (the server's /tokenize, default for real servers) or words (one token per word, default for the simulator)."),
    image_patch: int = typer.Option(28, "--image-patch", help="Pixels per image token side (Qwen2-VL: 28): images are sized so that (w/patch)*(h/patch) = their tokens."),
    prefix_block: int = typer.Option(512, "--prefix-block", help="Tokens per shared-prefix block id (a request's `prefix`, e.g. Mooncake hash_ids)."),
    content_salt: str | None = typer.Option(None, "--content-salt", help="Hex salt of nonces and prefix blocks (default: random per run, so an earlier run's cache never helps)."),
) -> None:
    """Send every request at its scheduled time (open loop) and record one result line per request."""
    spec = _run_spec(dict(locals()))  # every parameter above is a RunSpec field of the same name
    from .run import run

    code = run(spec)
    if code:
        sys.exit(code)


def _run_spec(params: dict[str, Any]) -> RunSpec:
    from .run.spec import RunSpec

    return RunSpec.build(**{k: tuple(v) if k == "slo" else v for k, v in params.items()})


def parse_run_argv(args: list[str]) -> RunSpec:
    """The spec `servegen-load run ARGS` would run (nothing is run): what a `--workers` child parses
    from `RunSpec.to_argv`, so tests can compare the two."""
    group: Any = typer.main.get_command(app)
    ctx = group.commands["run"].make_context("run", list(args))
    return _run_spec(ctx.params)


@app.command("report")
def report_cmd(
    results: list[str] = typer.Argument(..., help="One or more results files (merged)."),  # noqa: B008
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (without the per-request samples -o writes)."),
    output: str | None = typer.Option(None, "-o", "--output", help="Also write the JSON summary, with per-request samples for `gate --baseline`, to this file."),
    lag_threshold_ms: float = typer.Option(10.0, "--lag-threshold-ms", help="Send lag p99 above this means the client fell behind."),
    html: str | None = typer.Option(None, "--html", help="Also write a self-contained HTML report with plots (needs the `report` extra)."),
    csv: str | None = typer.Option(None, "--csv", help="Also write one CSV row per request to this file (- : stdout)."),
    warmup: float = typer.Option(0.0, "--warmup", help="Exclude requests scheduled in the first S seconds."),
    slo: list[str] = typer.Option([], "--slo", help="Also check this SLO, e.g. 'ttft_p99<=2s' (repeatable; `gate` makes it an exit code)."),  # noqa: B008
    slo_file: str | None = typer.Option(None, "--slo-file", help="YAML file with `slo:` and optional `request_slo:`."),
    request_slo: str | None = typer.Option(None, "--request-slo", help="Per-request SLO defining goodput, e.g. 'ttft<=2s,tpot<=100ms'."),
    merge_unrelated: bool = typer.Option(False, "--merge-unrelated", help="Merge results files of different runs (refused by default)."),
) -> None:
    """Summarize results: TTFT, TPOT, ITL, E2E, send lag, throughput, errors, goodput (or a plan's capacity file)."""
    from .report.command import report_command
    from .results import spooled
    from .slo import build_slos, check_lag_threshold

    slos = build_slos(slo, slo_file, request_slo) if slo or slo_file or request_slo else None
    if as_json and csv == "-":
        raise InputError("--json and --csv - both write to standard output; give --csv a file")
    with spooled(results) as paths:  # `run -o - | report -`
        code = report_command(paths, as_json=as_json, output=output,
                              lag_threshold=check_lag_threshold(lag_threshold_ms), html=html, warmup=warmup,
                              slos=slos, csv=csv, merge_unrelated=merge_unrelated, slo_file=slo_file)
    if code:
        sys.exit(code)


@app.command()
def sim(
    port: int = typer.Option(8000, help="Port to listen on; 0 picks a free one (printed on the ready line)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    preset: str = typer.Option("llama3-8b-h100", help="Engine preset name, or a YAML file (base: + overrides)."),
    param: list[str] = typer.Option([], "--param", help="Engine parameter override NAME=VALUE (repeatable)."),  # noqa: B008
    fault: list[str] = typer.Option([], "--fault", help="Fault injection NAME=RATE (repeatable)."),  # noqa: B008
    seed: int = typer.Option(0, help="Seed of the fault draws and of natural output lengths."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Slow the engine down (2.0 = twice as slow)."),
    stall_seconds: float = typer.Option(5.0, "--stall-seconds", help="Pause of the stall_resume fault."),
    slow_accept_seconds: float = typer.Option(2.0, "--slow-accept-seconds", help="Delay of slow_accept."),
    hang_seconds: float = typer.Option(600.0, "--hang-seconds", help="How long stall_hang holds a connection."),
    list_presets: bool = typer.Option(False, "--list-presets", help="List the engine presets and exit."),
) -> None:
    """Serve the embedded OpenAI-compatible LLM simulator (engine model, no GPU) until Ctrl-C."""
    from .sim.config import build_config
    from .sim.presets import format_presets

    if list_presets:
        typer.echo(format_presets())
        return
    cfg = build_config(preset, param, fault, seed=seed, time_scale=time_scale, host=host, port=port,
                       stall_seconds=stall_seconds, slow_accept_seconds=slow_accept_seconds,
                       hang_seconds=hang_seconds)
    from .sim.server import run as run_sim

    run_sim(cfg)


# --- verdict commands (report, gate, plan) ---


@app.command("gate")
def gate_cmd(
    results: list[str] = typer.Argument(..., help="One or more results files (merged)."),  # noqa: B008
    slo: list[str] = typer.Option([], "--slo", help="SLO, e.g. 'ttft_p99<=2s', 'error_rate<=0.5%', 'ttft_p99[category=multimodal]<=4s' (repeatable)."),  # noqa: B008
    slo_file: str | None = typer.Option(None, "--slo-file", help="YAML file with `slo:` (list of specs) and optional `request_slo:`."),
    request_slo: str | None = typer.Option(None, "--request-slo", help="Per-request SLO for goodput, e.g. 'ttft<=2s,tpot<=100ms'."),
    baseline: str | None = typer.Option(None, "--baseline", help="Baseline: `report RESULTS --json -o baseline.json` output, or a results file."),
    max_regression: str | None = typer.Option(None, "--max-regression", help="Allowed slowdown of each percentile vs the baseline (default 10%)."),
    metric: list[str] = typer.Option([], "--metric", help="Percentile compared with the baseline (repeatable; default ttft/tpot/e2e p50/p90/p99)."),  # noqa: B008
    confidence: str = typer.Option("95%", "--confidence", help="Bootstrap confidence level of the regression CIs."),
    warmup: float = typer.Option(0.0, "--warmup", help="Exclude requests scheduled in the first S seconds (both sides)."),
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    lag_threshold_ms: float = typer.Option(10.0, "--lag-threshold-ms", help="Send lag p99 above this means the client fell behind."),
    merge_unrelated: bool = typer.Option(False, "--merge-unrelated", help="Merge results files of different runs (refused by default)."),
) -> None:
    """Check SLOs and regressions: exit 0 when all hold, 1 when one fails, 2 on bad input."""
    from .gate import DEFAULT_METRICS, print_gate, run_gate
    from .results import spooled
    from .slo import build_slos, check_lag_threshold, parse_fraction

    if baseline is None and (max_regression is not None or metric):  # a check that would silently not run
        raise InputError("compares with a baseline: give --baseline", field="--max-regression" if max_regression else "--metric")
    slos = build_slos(slo, slo_file, request_slo)
    with spooled(results) as paths:  # `run -o - | gate -`
        g = run_gate(paths, slos, baseline=baseline,
                     max_regression=parse_fraction(max_regression or "10%", "--max-regression"),
                     warmup=warmup, metrics=tuple(metric) or DEFAULT_METRICS,
                     confidence=parse_fraction(confidence, "--confidence"),
                     lag_threshold=check_lag_threshold(lag_threshold_ms), merge_unrelated=merge_unrelated)
    print_gate(g, as_json=as_json)
    if g.exit_code:
        sys.exit(g.exit_code)


@app.command("plan")
def plan_cmd(
    scenario: str = typer.Argument(..., help="Scenario YAML whose load is scaled."),
    slo: list[str] = typer.Option([], "--slo", help="SLO every step must meet, e.g. 'ttft_p99<=2s' (repeatable)."),  # noqa: B008
    slo_file: str | None = typer.Option(None, "--slo-file", help="YAML file with `slo:` and optional `request_slo:`."),
    request_slo: str | None = typer.Option(None, "--request-slo", help="Per-request SLO for goodput, e.g. 'ttft<=2s,tpot<=100ms'."),
    endpoint: str | None = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL (default: the embedded simulator)."),
    model: str | None = typer.Option(None, "--model", help="Model name (default: the endpoint's first model)."),
    api: str = typer.Option("chat", "--api", help="chat or completions."),
    server_family: str | None = typer.Option(None, "--server-family", help="vllm, sglang, llamacpp, openai, sim (default: vllm; sim without --endpoint)."),
    api_key_file: str | None = typer.Option(None, "--api-key-file", help="File holding the API key (default: $OPENAI_API_KEY)."),
    preset: str | None = typer.Option(None, "--preset", help="Engine preset or preset YAML (e.g. from `calibrate`) planned without --endpoint (default llama3-8b-h100)."),
    clock: str = typer.Option("auto", "--clock", help="virtual: the preset's engine model on a virtual clock (seconds for hours of load); real: run every step; auto: virtual without --endpoint."),
    sim_param: list[str] = typer.Option([], "--sim-param", help="Simulator engine parameter NAME=VALUE (repeatable)."),  # noqa: B008
    sim_time_scale: float = typer.Option(1.0, "--sim-time-scale", help="Slow the simulated engine down (2.0 = twice as slow)."),
    replicas_for: float | None = typer.Option(None, "--replicas-for", help="Peak rate (req/s) to size replicas for."),
    headroom: str = typer.Option("20%", "--headroom", help="Headroom above the peak when sizing replicas."),
    step_duration: float = typer.Option(30.0, "--step-duration", help="Measured seconds of each step (after the warm-up)."),
    warmup: float = typer.Option(5.0, "--warmup", help="Seconds at the start of each step excluded from the verdict."),
    tolerance: str = typer.Option("5%", "--tolerance", help="Stop bisecting when the bracket is this narrow."),
    start_scale: float = typer.Option(1.0, "--start-scale", help="First scale tried (1 = the scenario's own rate)."),
    max_steps: int = typer.Option(14, "--max-steps", help="At most this many steps per plan."),
    compare: str | None = typer.Option(None, "--compare", help="`naive`: also plan the scenario's naive baseline and compare."),
    html: str | None = typer.Option(None, "--html", help="Also write the capacity curve as a self-contained HTML page."),
    output: str | None = typer.Option(None, "-o", "--output", help="Write the capacity JSON here (capacity.json)."),
    results_dir: str | None = typer.Option(None, "--results-dir", help="Keep every step's results file in this folder."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="As `run --tokenizer`: how steps count text tokens (DIR, server or words)."),
    prompt_format: str = typer.Option("auto", "--prompt-format", help="As `run --prompt-format`: ids, text or auto."),
    concurrency: str | None = typer.Option(None, "--concurrency", help="Closed-loop sweep instead of the search: levels like 1,2,4,8, each keeping N requests in flight (servegen_load/sweep.py)."),
    concurrency_rounds: int = typer.Option(8, "--concurrency-rounds", help="Requests per sweep level = rounds x N (at least 16)."),
) -> None:
    """Search the largest load scale meeting every SLO; the capacity curve, knee and replicas (or a concurrency sweep)."""
    import json
    from pathlib import Path

    from .atomic import atomic_write
    from .capacity import PlanInterrupted, PlanOptions, plan_capacity
    from .dispatch.endpoint import load_api_key
    from .report.text import print_capacity
    from .sim.presets import parse_params
    from .slo import build_slos, parse_fraction

    if compare not in (None, "naive"):
        raise InputError(f"expected naive, got {compare!r}", field="--compare")
    from .scenario import load_scenario

    # the scenario's `slo:` as `run` takes it, `--slo`/`--slo-file` adding more
    sc = load_scenario(scenario)
    slos = build_slos([*(sc.slo or []), *slo], slo_file, request_slo)
    if any(x.scope for x in slos.slos):  # a typo said now, not after the whole search
        from .slo import check_scope_names
        from .workload.resolve import resolve

        check_scope_names(slos.slos, resolve(sc).names(), f"the scenario {Path(scenario).name}")
    opts = PlanOptions(step_duration=step_duration, warmup=warmup, tolerance=parse_fraction(tolerance, "--tolerance"),
                       start_scale=start_scale, max_steps=max_steps, endpoint=endpoint, model=model, api=api,
                       server_family=server_family, api_key=load_api_key(Path(api_key_file) if api_key_file else None),
                       preset=preset, sim_params=parse_params(sim_param, "--sim-param"), sim_time_scale=sim_time_scale,
                       results_dir=results_dir, clock=clock, tokenizer=tokenizer, prompt_format=prompt_format)
    if endpoint is not None and (preset or sim_param or sim_time_scale != 1.0):
        raise InputError("--preset/--sim-param/--sim-time-scale apply to the embedded simulator only (no --endpoint)")
    from .outputs import check_paths

    check_paths([("-o", output), ("--html", html)],  # before the search, not after
                [("SCENARIO", scenario), ("--slo-file", slo_file), ("--preset", _file_or_none(preset))])
    if html:
        from .report.plots import mpl

        mpl()  # installed? (the search can take hours against a real endpoint)
    if concurrency is not None and (compare or replicas_for is not None):
        raise InputError("a concurrency sweep has no capacity to compare or size replicas for: drop --compare/"
                         "--replicas-for, or --concurrency", field="--concurrency")
    if concurrency is not None:  # sweep hook: closed-loop levels (servegen_load/sweep.py)
        from .sweep import concurrency_sweep, parse_levels, render_sweep

        sweep = concurrency_sweep(scenario, parse_levels(concurrency), slos, opts, rounds=concurrency_rounds)
        if output:
            with atomic_write(output) as fh:
                fh.write(json.dumps(sweep, indent=2) + "\n")
        print(render_sweep(sweep), flush=True)
        return
    try:
        doc = plan_capacity(scenario, slos, opts, compare_naive=compare == "naive", replicas_for=replicas_for,
                            headroom=parse_fraction(headroom, "--headroom"))
    except PlanInterrupted as e:  # the steps done are written and shown, then the exit of a Ctrl-C
        doc = e.doc
        interrupted = True
    else:
        interrupted = False
    if output:
        with atomic_write(output) as fh:
            fh.write(json.dumps(doc, indent=2) + "\n")
    if html:
        from .report.html import capacity_html

        with atomic_write(html) as fh:
            fh.write(capacity_html(doc))
    print_capacity(doc)
    if interrupted:
        steps = sum(len((doc.get(k) or {}).get("steps", [])) for k in ("plan", "naive"))
        kept = " and ".join(x for x in (output, html) if x)
        print(f"servegen-load: plan interrupted after {steps} step(s)" + (f"; they are in {kept}" if kept else "")
              + ": the capacity above is their bracket, not a converged one", file=sys.stderr)
        sys.exit(130)


@app.command("calibrate")
def calibrate_cmd(
    paths: list[str] = typer.Argument(None, help="With --from: results files to fit; with --check: the held-out scenario."),  # noqa: B008
    endpoint: str | None = typer.Option(None, "--endpoint", help="OpenAI-compatible base URL to probe (or to check against)."),
    from_results: bool = typer.Option(False, "--from", help="Fit the results files given as arguments instead of probing (streamed runs with chunk times); directories are rounds (a kept --probe-dir, or one directory per probe)."),
    output: str = typer.Option("calibrated.yaml", "-o", "--output", help="The preset YAML to write."),
    model: str | None = typer.Option(None, "--model", help="Model name (default: the endpoint's first model)."),
    server_family: str | None = typer.Option(None, "--server-family", help="vllm, sglang, llamacpp, openai, sim (how exact output lengths are asked for; default vllm)."),
    api_key_file: str | None = typer.Option(None, "--api-key-file", help="File holding the API key (default: $OPENAI_API_KEY)."),
    probe_dir: str | None = typer.Option(None, "--probe-dir", help="Keep the probe's results files here (for `calibrate --from`)."),
    probe_concurrency: int = typer.Option(16, "--probe-concurrency", help="Largest burst of the probe (set it above the server's batch limit to measure it)."),
    probe_output: int = typer.Option(48, "--probe-output", help="Output tokens of each burst request."),
    probe_max_prompt: int = typer.Option(2048, "--probe-max-prompt", help="Longest probe prompt (the long bursts use half); keep it near your traffic's long prompts."),
    probe_budget: float = typer.Option(180.0, "--probe-budget", help="Seconds the probe may take before noisy phases stop being repeated."),
    probe_steady: float = typer.Option(30.0, "--probe-steady", help="Seconds of steady open-loop load at the end of the probe (its mean step time scales the twin's step costs; 0: none)."),
    rounds: int = typer.Option(3, "--rounds", help="Probes run back to back, each fitted; the preset is the round whose saturation rate is the median (a round in a slow or fast spell of the host is outvoted)."),
    check: bool = typer.Option(False, "--check", help="Replay SCENARIO on --endpoint and on --preset's twin; print predicted vs measured."),
    preset: str | None = typer.Option(None, "--preset", help="With --check: the calibrated preset YAML."),
    slo: list[str] = typer.Option([], "--slo", help="With --check: also plan both with these SLOs and compare capacities (repeatable)."),  # noqa: B008
    step_duration: float = typer.Option(20.0, "--step-duration", help="With --check --slo: measured seconds of each plan step."),
    warmup: float = typer.Option(3.0, "--warmup", help="With --check --slo: warm-up seconds of each plan step."),
    max_steps: int = typer.Option(8, "--max-steps", help="With --check --slo: at most this many steps per plan."),
    results: str | None = typer.Option(None, "--results", help="With --check: keep the measured run's results here."),
    as_json: str | None = typer.Option(None, "--json", help="Also write what was printed as JSON to this file."),
) -> None:
    """Fit the simulator's engine model to an endpoint (a twin for `plan --preset`), or --check a twin."""
    import json
    from pathlib import Path

    from .atomic import atomic_write
    from .calibrate import command as cal
    from .dispatch.endpoint import load_api_key
    from .outputs import check_paths

    key = load_api_key(Path(api_key_file) if api_key_file else None)
    paths = list(paths or [])
    check_paths([("--json", as_json), ("--results", results)] + ([] if check else [("-o", output)]),
                [("PATH", p) for p in paths] + [("--preset", _file_or_none(preset))])  # before any probe or run
    if slo and not check:
        raise InputError("plans both sides of a --check: give --check (a calibration itself checks no SLO)", field="--slo")
    if check:
        if not (preset and endpoint and len(paths) == 1):
            raise InputError("--check needs --preset FILE, --endpoint URL and one SCENARIO")
        scenario = paths[0]
        from .slo import build_slos

        doc = cal.check(preset=preset, endpoint=endpoint, scenario=scenario, model=model, server_family=server_family,
                        api_key=key, results=results, slos=build_slos(slo, None, None) if slo else None,
                        step_duration=step_duration, warmup=warmup, max_steps=max_steps)
    else:
        if paths and not from_results:
            raise InputError("results files are fitted with --from; a SCENARIO is only used with --check")
        if from_results and not paths:
            raise InputError("--from needs results files")
        doc = cal.calibrate(endpoint=endpoint, inputs=paths, output=output, model=model,
                            server_family=server_family, api_key=key, probe_dir=probe_dir,
                            max_concurrency=probe_concurrency, probe_output=probe_output,
                            probe_max_prompt=probe_max_prompt, probe_budget=probe_budget,
                            probe_steady=probe_steady, rounds=rounds)
    if as_json:
        with atomic_write(as_json) as fh:
            fh.write(json.dumps(doc, indent=2, default=str) + "\n")


def main() -> None:
    """Entry point: map expected errors to one-line messages and exit code 2, never a traceback.

    Typer runs in standalone mode, so usage errors exit 2 and `typer.Exit(code)` keeps its code;
    our own `InputError`s and unreadable files escape it and are turned into one line here.
    """
    from .run.ray_address import optional_ray_address  # `run --ray` without an address

    sys.argv[1:] = optional_ray_address(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        # a terminal or pipe that cannot show a character (LANG=en_US.ISO-8859-1, PYTHONIOENCODING=
        # ascii, a Windows console) gets an escape for it, not a traceback mid-report
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    import signal

    # SIGTERM unwinds like Ctrl-C (`run` installs its own handler), so partial outputs are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from rich.console import Console
    from typer.exceptions import Abort, TyperException

    Console.on_broken_pipe = _raise_broken_pipe  # type: ignore[method-assign]  # rich exits 1 itself: to click's EPIPE path

    try:
        rv = app(standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here (an EPIPE OSError, below), not in the interpreter's exit
    except SystemExit as e:  # click turns EPIPE into exit 1 after wrapping stdout: a gate's FAIL, said nowhere
        if e.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _stdout_closed()
        raise
    except TyperException as e:  # a mistyped option or value (usage error): one line, not a boxed panel
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = e.format_message()  # type: ignore[attr-defined]
        if message:  # none: no arguments at all, and the help was shown
            print(f"servegen-load: error: {printable(message)}{where}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except Abort:  # Ctrl-C outside `run` (which handles its own): said, and the exit a shell expects
        print("servegen-load: interrupted", file=sys.stderr)
        sys.exit(130)
    except InputError as e:
        print(f"servegen-load: error: {printable(str(e))}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno == errno.EPIPE and e.filename is None:  # BrokenPipeError: standard output closed
            _stdout_closed()
        if e.filename is None:  # not about a file the user named (e.g. a socket): a real failure
            raise
        print(f"servegen-load: error: {printable(f'{e.filename}: {e.strerror or e}')}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)  # a command's `typer.Exit(code)` comes back as its code


def _file_or_none(p: str | None) -> str | None:
    """A `--preset` that names a file (an input an output must not replace), not a shipped preset's name."""
    return p if p is not None and os.path.isfile(p) else None


def _raise_broken_pipe(_console: Any) -> None:
    raise BrokenPipeError(errno.EPIPE, "broken pipe")


def _stdout_closed() -> None:
    """The reader of standard output went away (`| head -1`, `| true`): one line and exit 4, as
    for `run`'s results (docs/reliability.md), never 1, which `gate` means as FAIL."""
    with contextlib.suppress(OSError):  # nothing more may reach the closed pipe, at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    from .formats import EXIT_STORAGE

    print("servegen-load: error: standard output was closed before everything was written (broken pipe)",
          file=sys.stderr)
    sys.exit(EXIT_STORAGE)


if __name__ == "__main__":
    main()
