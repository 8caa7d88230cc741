"""Every file format's name and version, "what kind of file is this", and the exit codes.

Each file the pipeline writes names its format on its first line (JSONL) or at its top (JSON,
the pool's metadata), so a file read back years later says what it is. The names live here once:
a reader that accepts a format and the writer that produces it cannot drift apart, and a new
version is one edit. `sniff` answers "what is this file" for every command that accepts several
kinds (inspect, report, gate's baseline, fit's auto format) from the first bytes only, so it is
O(1) whatever the file's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson

REQUESTS_FORMAT = "servegen-load/requests/v1"
RESULTS_FORMAT = "servegen-load/results/v1"
SUMMARY_FORMAT = "servegen-load/summary/v1"
SAMPLES_FORMAT = "servegen-load/samples/v1"
CAPACITY_FORMAT = "servegen-load/capacity/v1"
POOL_FORMAT = "servegen-load/pool/v1"

SECOND_HEADER = ("a second header: files concatenated into one? Give each file as its own argument "
                 "(report A B merges results files)")


def is_footer(obj: dict[str, Any]) -> bool:
    """The last line of results written to a pipe (`results.FOOTER`), not a result."""
    return obj.get("footer") is True and "id" not in obj


# Exit codes shared by every command (run's are documented in `run --help` and docs/reliability.md):
EXIT_OK = 0
EXIT_FAIL = 1           # a verdict failed (gate, compare --max-distance) or a worker failed
EXIT_INPUT = 2          # bad input: one line naming file, line, field
EXIT_NO_SUCCESS = 3     # run: the schedule ended and not one request succeeded
EXIT_STORAGE = 4        # run: the results could not be written (disk full, file-size limit, closed pipe)
EXIT_INTERRUPTED = 130  # run: stopped by SIGINT/SIGTERM (results still hold every scheduled request)
STOPPED = "servegen-load: stopped:"  # how the line a refused run exits 3 with starts (`run.finish.refused_line`)

Kind = Literal["pool", "requests", "results", "capacity", "summary", "scenario", "json", "jsonl", "text",
               "missing", "directory"]

_BY_FORMAT: dict[str, Kind] = {REQUESTS_FORMAT: "requests", RESULTS_FORMAT: "results",
                               CAPACITY_FORMAT: "capacity", SUMMARY_FORMAT: "summary"}
SNIFF_BYTES = 1 << 16


def first_object(head: bytes) -> dict[str, Any] | None:
    """The JSON object on the first non-blank line of `head` (None when it is not one)."""
    for raw in head.split(b"\n"):
        line = raw.strip().lstrip(b"\xef\xbb\xbf")
        if not line:
            continue
        if not line.startswith(b"{"):
            return None
        try:
            obj = orjson.loads(line)
        except (orjson.JSONDecodeError, RecursionError):  # orjson caps nesting; a hostile file is just not ours
            return None
        return obj if isinstance(obj, dict) else None
    return None


def format_kind(obj: dict[str, Any]) -> Kind | None:
    """The kind a decoded header or document names by its `format` key (None: not one of ours)."""
    return _BY_FORMAT.get(str(obj.get("format")))


def sniff(path: str | Path) -> Kind:
    """What kind of file `path` is, from its first 64 KiB and its name.

    A pool is a zip (`.npz`); a JSONL file of ours names its format on line 1; a JSON document
    (capacity, summary) names it at its top, which a pretty-printed file puts within the first
    lines; YAML is a scenario. Anything else is `json`, `jsonl` or `text` for the caller to judge.
    """
    p = Path(path)
    if not p.exists():
        return "missing"
    if p.is_dir():
        return "directory"
    with p.open("rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if p.suffix == ".npz" or head.startswith(b"PK\x03\x04"):
        return "pool"
    obj = first_object(head)
    if obj is not None:
        return format_kind(obj) or "jsonl"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"{"):
        try:
            doc = orjson.loads(p.read_bytes()) if len(head) < SNIFF_BYTES else None
        except (orjson.JSONDecodeError, RecursionError):
            doc = None
        if doc is None:  # a large document: its `format` key is near the top when we wrote it
            text = head.decode("utf-8", "replace")
            return next((k for f, k in _BY_FORMAT.items() if f'"format": "{f}"' in text), "json")
        return (format_kind(doc) or "json") if isinstance(doc, dict) else "json"
    if p.suffix.lower() in (".yaml", ".yml"):
        return "scenario"
    return "text"
