"""Bad input to the commands a red team tried first: one line naming what is wrong, exit 2, no
traceback, and nothing sent before the line (each case here once ended otherwise: a traceback, a
silent misreading or an exit code that meant something else)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hostile import assert_failed, assert_ok, run_cli
from test_dispatch_fixtures import make_requests, write_requests

NOT_UTF8 = bytes(range(128, 256)) * 8


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid results file: 30 requests against the simulator."""
    from servegen_load.sim import SimProcess

    tmp = tmp_path_factory.mktemp("res")
    reqs = write_requests(tmp / "req.jsonl", make_requests([0.05 * i for i in range(30)], output_tokens=8))
    out = tmp / "res.jsonl"
    with SimProcess("tiny-cpu") as sim:
        assert_ok(run_cli("run", reqs, "-o", out, "--endpoint", sim.url, "--progress", "off"))
    return out


def test_a_bare_number_over_one_is_not_a_fraction(results: Path) -> None:
    """`--max-regression 10` read as 1000 % made the regression gate unable to fail."""
    r = run_cli("gate", results, "--baseline", results, "--max-regression", "10")
    assert "10%" in assert_failed(r, "--max-regression")
    assert_ok(run_cli("gate", results, "--baseline", results, "--max-regression", "10%"))


@pytest.mark.parametrize("cmd", [["gate", "{res}", "--slo-file", "{bad}"], ["report", "{res}", "--slo-file", "{bad}"],
                                 ["plan", "{scen}", "--preset", "{bad}", "--slo", "ttft_p90<=2s"]])
def test_files_that_are_not_utf8_text(tmp_path: Path, results: Path, cmd: list[str]) -> None:
    bad = tmp_path / "garbage.yaml"
    bad.write_bytes(NOT_UTF8)
    scen = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"
    r = run_cli(*(a.format(res=results, bad=bad, scen=scen) for a in cmd))
    assert "UTF-8" in assert_failed(r, bad)


def test_inspect_a_requests_file_where_no_client_sends_twice(tmp_path: Path) -> None:
    src = write_requests(tmp_path / "one.jsonl", make_requests([0.0], output_tokens=4))
    r = run_cli("inspect", src)
    assert_ok(r)
    assert "output_tokens" in r.out


def test_inspect_refuses_a_requests_file_that_run_would_refuse(tmp_path: Path) -> None:
    """Duplicate ids: `inspect` described the file, `run` refused it."""
    src = write_requests(tmp_path / "dup.jsonl", make_requests([0.0, 0.1, 0.2], output_tokens=4))
    src.write_bytes(src.read_bytes().replace(b'"id":"r2"', b'"id":"r0"'))
    line = assert_failed(run_cli("inspect", src), "r0")
    assert f"{src}:4: id: duplicate request id" in line


@pytest.mark.parametrize("opts,field", [(["--endpoint", "http://[::1"], "--endpoint"),
                                        (["--pushgateway", "http://[::1"], "--pushgateway"),
                                        (["--pushgateway", "localhost:99999"], "--pushgateway"),
                                        (["--summary-json", "/proc/servegen-load-x"], "--summary-json"),
                                        (["--slo", "banana"], "--slo")])
def test_bad_urls_and_outputs_are_refused_before_any_traffic(tmp_path: Path, opts: list[str], field: str) -> None:
    """Port 9 (discard) has no listener here: an error about the connection would mean the
    command went on to the network before checking its options."""
    src = write_requests(tmp_path / "r.jsonl", make_requests([0.0], output_tokens=4))
    base = ["--endpoint", "http://127.0.0.1:9"] if "--endpoint" not in opts else []
    r = run_cli("run", src, "-o", tmp_path / "out.jsonl", *base, *opts)
    line = assert_failed(r, field)
    assert "connection" not in line and not (tmp_path / "out.jsonl").exists()


def test_a_scenario_slo_that_does_not_parse_is_refused_before_any_traffic(tmp_path: Path) -> None:
    """It was found only after the whole run."""
    scen = tmp_path / "s.yaml"
    scen.write_text("naive:\n  rate: 1\n  input_tokens: 10\n  output_tokens: 4\nduration: 2\n"
                    "slo: [ttft_p99<=2s, banana]\n")
    r = run_cli("run", scen, "-o", tmp_path / "out.jsonl", "--endpoint", "http://127.0.0.1:9")
    line = assert_failed(r, "banana")
    assert "slo" in line and "connection" not in line and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("make", ["requests", "scenario"])
def test_a_source_that_schedules_nothing_is_refused_before_anything_starts(tmp_path: Path, make: str) -> None:
    """It started the embedded simulator (or asked the endpoint for its models), ran an empty
    schedule and wrote an empty results file before its exit 2."""
    if make == "requests":
        src = write_requests(tmp_path / "r.jsonl", [])
    else:
        src = tmp_path / "s.yaml"
        src.write_text("naive:\n  rate: 0.001\n  input_tokens: 10\n  output_tokens: 4\nduration: 1\n")
    out = tmp_path / "out.jsonl"
    line = assert_failed(run_cli("run", src, "-o", out, "--progress", "off"), src, out=out)
    assert "scheduled no request" in line


def test_a_first_token_before_its_send_is_no_measurement(tmp_path: Path, results: Path) -> None:
    """A TTFT below zero (an edited or foreign file) passed `gate --slo ttft_p99<=1ms`."""
    head, *lines = results.read_text().splitlines()
    d = json.loads(lines[3])
    d["first_token"] = d["sent"] - 5.0
    lines[3] = json.dumps(d)
    bad = tmp_path / "edited.jsonl"
    bad.write_text("\n".join([head, *lines]) + "\n")
    assert f"{bad}:5: first_token" in assert_failed(run_cli("gate", bad, "--slo", "ttft_p99<=1ms"), bad)


@pytest.mark.parametrize("field,text", [("rate", "naive:\n  rate: true\n  input_tokens: 10\n  output_tokens: 5\nduration: 2\n"),
                                        ("duration", "naive:\n  rate: 2\n  input_tokens: 10\n  output_tokens: 5\nduration: true\n"),
                                        ("seed", "naive:\n  rate: 2\n  input_tokens: 10\n  output_tokens: 5\nduration: 2\nseed: yes\n")])
def test_booleans_are_not_numbers(tmp_path: Path, field: str, text: str) -> None:
    """YAML's `true` (and `yes`) is no rate, duration or seed: pydantic read it as 1."""
    p = tmp_path / "s.yaml"
    p.write_text(text)
    out = tmp_path / "req.jsonl"
    assert "expected a number" in assert_failed(run_cli("generate", p, "-o", out), p, field, out=out)
    assert not os.path.exists(out)


@pytest.mark.parametrize("cmd", [["gate", "{res}", "--slo", "error_rate<=1%"], ["report", "{res}"]])
@pytest.mark.parametrize("opts,field", [(["--warmup", "nan"], "--warmup"), (["--lag-threshold-ms", "-1"],
                                                                              "--lag-threshold-ms")])
def test_reading_options_out_of_range_are_bad_input(results: Path, cmd: list[str], opts: list[str], field: str) -> None:
    """`--warmup nan` ended as exit 1 "no requests in scope"; `--lag-threshold-ms -1` was taken
    (and every run then "fell behind")."""
    r = run_cli(*(a.format(res=results) for a in cmd), *opts)
    assert_failed(r, field)


@pytest.mark.parametrize("cmd", [["calibrate", "--endpoint", "http://127.0.0.1:9", "-o", "{dir}"],
                                 ["plan", "{scen}", "--slo", "ttft_p90<=2s", "-o", "{dir}"],
                                 ["plan", "{scen}", "--slo", "ttft_p90<=2s", "--html", "{dir}"]])
def test_plan_and_calibrate_check_their_outputs_before_the_work(tmp_path: Path, cmd: list[str]) -> None:
    """A probe of minutes, or a search of hours, once ended in "Is a directory"."""
    scen = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"
    r = run_cli(*(a.format(dir=tmp_path, scen=scen) for a in cmd))
    line = assert_failed(r, "is a folder")
    assert "connection" not in line and "step" not in r.err, r.err


@pytest.mark.parametrize("opts,field", [(["--sim-time-scale", "0"], "--sim-time-scale"),
                                        (["--sim-param", "foo"], "--sim-param")])
def test_plan_names_its_own_flags(opts: list[str], field: str) -> None:
    """It named the simulator's --time-scale and --param, which `plan` does not have."""
    scen = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"
    assert_failed(run_cli("plan", scen, "--slo", "ttft_p90<=2s", *opts), field)


def test_plan_says_what_it_was_given_instead(tmp_path: Path) -> None:
    """A requests file was "invalid YAML: expected '<document start>'"; a dead port was "--model:
    cannot list models ... pass --model"."""
    src = write_requests(tmp_path / "r.jsonl", make_requests([0.0]))
    assert "is a requests file, not a scenario" in assert_failed(run_cli("plan", src, "--slo", "ttft_p90<=2s"), src)
    scen = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"
    line = assert_failed(run_cli("plan", scen, "--slo", "ttft_p90<=2s", "--endpoint", "http://127.0.0.1:9"),
                         "--endpoint")
    assert "cannot connect to http://127.0.0.1:9" in line and "--model" not in line


@pytest.mark.parametrize("cmd,field", [(["gate", "{res}", "--slo", "error_rate<=1%", "--max-regression", "5%"],
                                        "--max-regression"),
                                       (["gate", "{res}", "--slo", "error_rate<=1%", "--metric", "ttft_p99"], "--metric"),
                                       (["plan", "{scen}", "--slo", "ttft_p90<=2s", "--concurrency", "1,2",
                                         "--compare", "naive"], "--concurrency"),
                                       (["calibrate", "--from", "{res}", "--slo", "ttft_p90<=2s"], "--slo")])
def test_options_that_would_silently_do_nothing_are_refused(results: Path, cmd: list[str], field: str) -> None:
    scen = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"
    assert_failed(run_cli(*(a.format(res=results, scen=scen) for a in cmd)), field)


def test_fifth_red_team_small_inconsistencies(tmp_path: Path, results: Path) -> None:
    """Each once went otherwise: an SLO file's error not naming the file; `--sim-preset nope`
    blamed on `--preset`; `--api chat --prompt-format ids` sent text and recorded it; two results
    files concatenated said `id: missing required field`; a cut baseline compared with silently;
    `slo:` as one string refused in a scenario that `--slo-file` takes."""
    bad = tmp_path / "slo.yaml"
    bad.write_text("slo:\n  - ttft_p99<=2x\n")
    assert "unit 'x'" in assert_failed(run_cli("gate", results, "--slo-file", bad), bad)
    src = write_requests(tmp_path / "req.jsonl", make_requests([0.0], output_tokens=4))
    assert "unknown preset" in assert_failed(run_cli("run", src, "-o", tmp_path / "o.jsonl", "--sim-preset", "nope"),
                                             "--sim-preset")
    assert "completions API only" in assert_failed(run_cli("run", src, "-o", tmp_path / "o.jsonl", "--api", "chat",
                                                           "--prompt-format", "ids"), "--prompt-format")
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(results.read_bytes() * 2)
    assert "a second header" in assert_failed(run_cli("report", twice), twice)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(results.read_bytes().splitlines(keepends=True)[:10]))
    assert "not a whole run" in assert_failed(run_cli("gate", results, "--baseline", cut), cut)
    scen = tmp_path / "s.yaml"
    scen.write_text("naive:\n  rate: 5\n  input_tokens: 8\n  output_tokens: 4\nduration: 1\nslo: ttft_p99<=2s\n")
    assert_ok(run_cli("generate", scen, "-o", tmp_path / "g.jsonl", "-q"))


def test_a_json_baseline_of_part_of_a_run_or_of_a_longer_warmup_is_refused(tmp_path: Path, results: Path) -> None:
    """The documented baseline step, `report RESULTS --json -o baseline.json`, laundered a cut run
    (refused as a results file) into a baseline the gate compared with; and a baseline that left out
    its first 10 s was compared with a current run that did not."""
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(results.read_bytes().splitlines(keepends=True)[:10]))
    base = tmp_path / "base.json"
    assert_ok(run_cli("report", cut, "--json", "-o", base))
    assert "not a whole run" in assert_failed(run_cli("gate", results, "--baseline", base), base)
    trimmed = tmp_path / "trimmed.json"
    assert_ok(run_cli("report", results, "--warmup", "0.5", "--json", "-o", trimmed))
    assert "--warmup 0.5" in assert_failed(run_cli("gate", results, "--baseline", trimmed), trimmed)
    assert_ok(run_cli("gate", results, "--baseline", trimmed, "--warmup", "0.5"))


def test_results_read_as_logs_fit_as_what_they_are(tmp_path: Path, results: Path) -> None:
    """`fit RESULTS` made a `reason` pool of a language run (results carry `reasoning_tokens: 0`),
    and `fit`/`compare` read two results files concatenated into one as one log of twice the rate."""
    pool = tmp_path / "p.npz"
    r = run_cli("fit", results, "-o", pool)
    assert_ok(r)
    assert "category language" in r.err
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(results.read_bytes() * 2)
    for args in (["fit", twice, "-o", tmp_path / "t.npz"], ["compare", twice, results]):
        assert "a second header" in assert_failed(run_cli(*args), twice)


def test_plan_options_that_did_nothing_or_misled(tmp_path: Path) -> None:
    """`plan --results-dir D` in virtual time made an empty D; `--preset missing.yaml` was called an
    unknown preset name."""
    scen = Path(__file__).resolve().parents[1] / "scenarios" / "language.yaml"
    r = run_cli("plan", scen, "--slo", "ttft_p99<=2s", "--results-dir", tmp_path / "d")
    assert "virtual time" in assert_failed(r, "--results-dir")
    assert not (tmp_path / "d").exists()
    r = run_cli("plan", scen, "--slo", "ttft_p99<=2s", "--preset", tmp_path / "missing.yaml")
    assert "no such preset file" in assert_failed(r, "--preset", "missing.yaml")


def test_an_slo_scope_no_request_has_is_bad_input(results: Path) -> None:
    """`[category=lang]` (for `language`) failed the gate, exit 1, as if the server had missed it."""
    line = assert_failed(run_cli("gate", results, "--slo", "ttft_p99[category=lang]<=2s"), "category=lang")
    assert "no request of the results has category 'lang'" in line
    assert_ok(run_cli("gate", results, "--slo", "ttft_p99[category=language]<=2s"))


@pytest.mark.parametrize("cmd", ["run-scenario", "run-requests", "run-scenario-slo", "plan"])
def test_an_slo_scope_no_request_can_have_is_refused_before_the_work(tmp_path: Path, cmd: str) -> None:
    """`run` found `[category=multimodal]` on a language scenario only after the whole run, and
    `plan` after its whole search ("no capacity", exit 0): now before anything is sent."""
    scen = tmp_path / "s.yaml"
    extra = "slo: ['ttft_p99[category=multimodal]<=2s']\n" if cmd == "run-scenario-slo" else ""
    scen.write_text("naive:\n  rate: 2\n  input_tokens: 10\n  output_tokens: 4\nduration: 2\n" + extra)
    out = tmp_path / "out.jsonl"
    slo = [] if extra else ["--slo", "ttft_p99[category=multimodal]<=2s"]
    if cmd == "plan":
        r = run_cli("plan", scen, *slo, "--clock", "virtual", "-o", out)
    else:
        src = write_requests(tmp_path / "r.jsonl", make_requests([0.1, 0.2])) if cmd == "run-requests" else scen
        r = run_cli("run", src, *slo, "-o", out, "--endpoint", "http://127.0.0.1:9")
    line = assert_failed(r, "category=multimodal", out=out)
    assert "has category 'multimodal' (they have: language)" in line and "connection" not in line
    if cmd != "plan":  # a scope the source has passes this check (and then meets the closed port)
        src = scen if cmd.startswith("run-scenario") else tmp_path / "r.jsonl"
        if extra:
            scen.write_text(scen.read_text().replace("multimodal", "language"))
        r = run_cli("run", src, *(s.replace("multimodal", "language") for s in slo), "-o", out,
                    "--endpoint", "http://127.0.0.1:9")
        assert "category" not in r.err, r
