"""Import ServeGen's released per-client data (one pool folder) into the package's compact pool.

ServeGen's format (see the data README): per client `<id>`
- `chunk-<id>-trace.csv`, no header, one row per 600 s rate window:
  `window_start, rate, iat_cv, family, shape, scale`; an inactive window is `t,0,0,,0,0`;
- `chunk-<id>-dataset.json`: `{window_start: {field: "<dict literal {value: probability}>"}}`,
  one entry per 6 h data window.

What the import does, and why:
- Rates, CVs, shapes and scales are kept as given; `Gamma` -> `Family.GAMMA` (shape = scipy `a`),
  `Weibull` -> `Family.WEIBULL` (shape = scipy `weibull_min` `c`); inactive rows -> rate 0, `NONE`.
- Dict literals are parsed by a strict parser (one regular expression validates the whole literal
  `{number: number, ...}`, numpy converts the numbers): never `eval`, and ~40x faster than
  `ast.literal_eval` on m-large's 104 MB of literals. Anything else raises, naming file, line, field.
- Each length distribution is stored compressed (`distributions.compress`); the Kolmogorov-Smirnov
  distance of the stored (float32) table to the original is checked per table against `ks_max`.
- A trace window uses the latest dataset entry starting at or before it (`ClientPool.data_window_of`);
  `{}` distributions (no traffic there) -> table index -1.
- Clients whose dataset JSON is absent get the pool's rate-weighted length mixture of the same data
  window (weights: each other client's request count in that window, `sum(rate) * 600`), stored as
  extra tables (-1 where the client itself is idle in that data window, as for any idle client);
  they are listed in `pool.fallback` and announced on stderr. A `{}` distribution in a
  data window where the client does have traffic (not seen in ServeGen's data) gets the same mixture
  and is listed in `meta["empty_with_traffic"]`. No client is ever dropped.
- Client ids keep ServeGen's chunk id prefixed by the source folder's name: `chunk-12` of
  `m-large` -> `"m-large:12"` (also with `--name`, so ids always point back at ServeGen's files).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .distributions import SHAPE_RANGE, Family, LengthTable, compress, ks_distance
from .pool import CATEGORIES, ClientPool, build_tables

DEFAULT_KS_MAX = 0.004
MAX_VALUE = 2**31 - 1          # a length table's values (tokens, items, ratios)
_F32_MAX = float(np.finfo(np.float32).max)  # pools store rates, CVs, shapes and scales as float32
DEFAULT_DATA_WINDOW = 21600.0

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = rf"{_NUM}\s*:\s*{_NUM}"
_LITERAL = re.compile(rf"\{{\s*(?:{_PAIR}(?:\s*,\s*{_PAIR})*\s*,?)?\s*\}}")
# longest valid prefix, to say where a malformed literal goes wrong
_PREFIX = re.compile(rf"\{{\s*(?:{_PAIR}\s*,\s*)*(?:{_PAIR}\s*|{_NUM}\s*:\s*|{_NUM}\s*)?")
_TRACE_RE = re.compile(r"^chunk-(\d+)-trace\.csv$")
_DATASET_RE = re.compile(r"^chunk-(\d+)-dataset\.json$")
_COMMIT_RE = re.compile(r"ServeGen[^\n]*?commit\s+([0-9a-f]{7,40})", re.IGNORECASE)

_FIELDS_MULTIMODAL = ("text_tokens", "image_tokens", "audio_tokens", "video_tokens",
                      "image_count", "audio_count", "video_count")


def parse_dict_literal(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values of a `{number: number, ...}` literal as float64 arrays (in literal order).

    Raises `ValueError` (with the character offset) on anything that is not such a literal,
    on non-finite numbers, negative or all-zero probabilities, and duplicate keys.
    """
    s = text.strip()
    if _LITERAL.fullmatch(s) is None:
        m = _PREFIX.match(s)
        pos = m.end() if m else 0
        got = s[pos:pos + 24]
        raise ValueError(f"expected a dict literal {{number: number, ...}}; bad input at character {pos}: "
                         f"{got!r}" if got else "expected a dict literal {number: number, ...}; it ends early")
    body = s[1:-1].strip().rstrip(",")
    if not body:
        return np.zeros(0), np.zeros(0)
    nums = np.array(body.replace(":", ",").split(","), dtype=np.float64)
    keys, probs = nums[0::2], nums[1::2]
    if not np.all(np.isfinite(nums)):
        raise ValueError("numbers must be finite")
    if np.any((keys < 0) | (keys > MAX_VALUE)):
        raise ValueError(f"values (lengths, counts, ratios) must be in 0..{MAX_VALUE}, got "
                         f"{float(keys[(keys < 0) | (keys > MAX_VALUE)][0]):g}")
    if np.any(probs < 0):
        raise ValueError(f"probabilities must be >= 0, got {float(probs[probs < 0][0]):g}")
    total = float(probs.sum())
    if not abs(total - 1.0) <= 1e-3:
        raise ValueError(f"probabilities must sum to 1, they sum to {total:.6g}")
    srt = np.sort(keys)
    dup = np.flatnonzero(srt[1:] == srt[:-1])
    if dup.size:
        raise ValueError(f"duplicate key {float(srt[dup[0]]):g}")
    return keys, probs


@dataclass
class Trace:
    """One client's rate windows as read from its trace CSV."""

    window_start: np.ndarray
    rate: np.ndarray
    cv: np.ndarray
    family: np.ndarray
    shape: np.ndarray
    scale: np.ndarray


def read_trace(path: Path) -> Trace:
    """Parse and check a ServeGen trace CSV; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", path=str(path)) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError("empty trace: expected rows `window_start,rate,iat_cv,family,shape,scale`", path=str(path))
    rows = [ln.split(",") for ln in lines]
    bad = next((i for i, r in enumerate(rows) if len(r) != 6), None)
    if bad is not None:
        raise InputError(f"expected 6 comma-separated fields (window_start,rate,iat_cv,family,shape,scale), "
                         f"got {len(rows[bad])}", path=str(path), line=bad + 1)
    cols = list(zip(*rows, strict=True))
    names = ("window_start", "rate", "iat_cv", None, "shape", "scale")
    num: dict[str, np.ndarray] = {}
    for j, col_name in enumerate(names):
        if col_name is None:
            continue
        try:
            arr = np.array(cols[j], dtype=np.float64)
        except ValueError:
            i = next(i for i, v in enumerate(cols[j]) if not _is_float(v))
            raise InputError(f"expected a number, got {cols[j][i]!r}", path=str(path), line=i + 1,
                             field=col_name) from None
        bad_mask = ~(np.isfinite(arr) & (arr >= 0) & (arr <= _F32_MAX))
        if bad_mask.any():
            i = int(np.argmax(bad_mask))
            raise InputError(f"expected a finite number >= 0 (at most {_F32_MAX:.3g}), got {cols[j][i]!r}",
                             path=str(path), line=i + 1, field=col_name)
        num[col_name] = arr
    family = np.zeros(len(rows), dtype=np.int8)
    codes: dict[str, int] = {}
    for i, name in enumerate(cols[3]):
        code = codes.get(name)
        if code is None:
            try:
                code = codes[name] = int(Family.parse(name))
            except ValueError as e:
                raise InputError(str(e), path=str(path), line=i + 1, field="family") from None
        family[i] = code
    ws, rate = num["window_start"], num["rate"]
    if ws.size > 1 and np.any(np.diff(ws) <= 0):
        i = int(np.argmax(np.diff(ws) <= 0)) + 1
        raise InputError(f"window starts must increase, got {cols[0][i]!r} after {cols[0][i - 1]!r}",
                         path=str(path), line=i + 1, field="window_start")
    active = rate > 0
    no_family = active & (family == Family.NONE)
    if no_family.any():
        i = int(np.argmax(no_family))
        raise InputError("an active window (rate > 0) needs a family (Gamma or Weibull)", path=str(path),
                         line=i + 1, field="family")
    no_shape = active & (family != Family.EXPONENTIAL) & ~(num["shape"] > 0)
    if no_shape.any():
        i = int(np.argmax(no_shape))
        raise InputError(f"an active window needs a shape > 0, got {cols[4][i]!r}", path=str(path),
                         line=i + 1, field="shape")
    for fam, (lo, hi) in SHAPE_RANGE.items():
        out = active & (family == fam) & ((num["shape"] < lo) | (num["shape"] > hi))
        if out.any():
            i = int(np.argmax(out))
            raise InputError(f"a {Family(fam).name.lower()} window needs a shape in [{lo:g}, {hi:g}], got "
                             f"{cols[4][i]!r}", path=str(path), line=i + 1, field="shape")
    family[~active] = Family.NONE
    return Trace(ws, rate, num["iat_cv"], family, num["shape"], num["scale"])


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


@dataclass
class Dataset:
    """One client's dataset JSON: raw text (for error lines), entries by window start, original keys."""

    path: Path
    raw: str
    entries: dict[float, dict[str, str]]
    keys: dict[float, str]


def read_dataset(path: Path) -> Dataset:
    """Parse a dataset JSON's structure `{window_start: {field: literal}}` (literals stay text)."""
    try:
        raw = path.read_text(encoding="utf-8")
        doc = json.loads(raw)
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", path=str(path)) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", path=str(path), line=e.lineno) from None
    except RecursionError:
        raise InputError("not a dataset JSON: nested too deeply", path=str(path)) from None
    if not isinstance(doc, dict) or not doc:
        raise InputError("expected a JSON object {window_start: {field: \"{value: probability}\"}}", path=str(path))
    entries: dict[float, dict[str, str]] = {}
    keys: dict[float, str] = {}
    for key, entry in doc.items():
        try:
            start = float(key)
        except ValueError:
            start = float("nan")
        if not np.isfinite(start):
            raise InputError("expected a window start in seconds as key", path=str(path),
                             line=_line_of(raw, key), field=json.dumps(key))
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise InputError("expected {field: \"<dict literal>\"} strings", path=str(path),
                             line=_line_of(raw, key), field=json.dumps(key))
        if start in entries:
            raise InputError(f"window start {start:g} appears twice (also as {keys[start]!r})", path=str(path),
                             line=_line_of(raw, key), field=json.dumps(key))
        entries[start], keys[start] = entry, key
    return Dataset(path, raw, entries, keys)


def _client_table(ds: Dataset, start: float, f: int, field_name: str, store: _Tables,
                  parsed: dict[tuple[float, int], tuple[int, LengthTable | None]]
                  ) -> tuple[int, LengthTable | None]:
    """(stored table index, original table) of one entry's field; (-1, None) for `{}`; cached per entry."""
    hit = parsed.get((start, f))
    if hit is None:
        key = ds.keys[start]
        try:
            vals, probs = parse_dict_literal(ds.entries[start][field_name])
        except ValueError as e:
            raise InputError(str(e), path=str(ds.path), line=_line_of(ds.raw, key, field_name),
                             field=f"{json.dumps(key)}.{field_name}") from None
        if vals.size == 0:
            hit = (-1, None)
        else:
            orig = LengthTable.from_pmf(vals, probs)
            hit = (store.add(orig, f"{ds.path}: {json.dumps(key)}.{field_name}"), orig)
        parsed[(start, f)] = hit
    return hit


def _line_of(raw: str, key: str, sub: str | None = None) -> int | None:
    """Best-effort 1-based line of `"key"` (then `"sub"` after it) in a JSON text, for error messages."""
    pos = raw.find(json.dumps(key))
    if pos < 0:
        return None
    if sub is not None:
        p2 = raw.find(json.dumps(sub), pos)
        pos = p2 if p2 >= 0 else pos
    return raw.count("\n", 0, pos) + 1


def servegen_commit(folder: Path) -> str | None:
    """ServeGen's commit as named by the data README above the folder (provenance), if found."""
    for d in [folder, *folder.parents][:5]:
        readme = d / "README.md"
        if readme.is_file():
            m = _COMMIT_RE.search(readme.read_text(encoding="utf-8", errors="replace"))
            if m:
                return m.group(1)
    return None


def stored_ks(original: LengthTable, stored: LengthTable) -> float:
    """KS distance of a table as the pool stores it (float32 values and cdf) to the original.

    Both supports are rounded to float32 first, since that is what the pool file can hold
    (0.362 and float32(0.362) are the same length, not two atoms).
    """
    a = LengthTable(stored.values.astype(np.float32).astype(np.float64),
                    stored.cdf.astype(np.float32).astype(np.float64))
    b = LengthTable(original.values.astype(np.float32).astype(np.float64), original.cdf)
    return ks_distance(a, b)


def infer_category(folder: Path, fields: list[str], given: str | None) -> str:
    """The category: as given, else the folder's parent name, else from the fields; always checked."""
    by_fields = ("reason" if "reason_ratio" in fields
                 else "multimodal" if any(f in _FIELDS_MULTIMODAL for f in fields) else "language")
    if given is not None:
        if given not in CATEGORIES:
            raise InputError(f"expected one of {', '.join(CATEGORIES)}, got {given!r}", field="--category")
        chosen, why = given, "--category"
    elif folder.resolve().parent.name in CATEGORIES:
        chosen, why = folder.resolve().parent.name, f"the folder's parent name {folder.resolve().parent.name!r}"
    else:
        return by_fields
    if chosen != by_fields:
        raise InputError(f"category {chosen!r} (from {why}) does not match the dataset fields {fields}, "
                         f"which are {by_fields!r}", path=str(folder))
    return chosen


class _Tables:
    """Append-only store of compressed tables, deduplicated by content (many `{0: 1.0}` repeat)."""

    def __init__(self, ks_max: float) -> None:
        self.ks_max = ks_max
        self.tables: list[LengthTable] = []
        self._seen: dict[bytes, int] = {}
        self.ks_worst = 0.0

    def add(self, original: LengthTable, where: str) -> int:
        small = compress(original, self.ks_max)
        small = LengthTable(small.values.astype(np.float32), small.cdf.astype(np.float32))
        ks = stored_ks(original, small)
        if not ks <= self.ks_max + 1e-6:
            raise RuntimeError(f"{where}: stored length table is at KS distance {ks:.5f} from the original, "
                               f"above ks_max={self.ks_max}")
        self.ks_worst = max(self.ks_worst, ks)
        key = small.values.tobytes() + b"|" + small.cdf.tobytes()
        idx = self._seen.get(key)
        if idx is None:
            idx = self._seen[key] = len(self.tables)
            self.tables.append(small)
        return idx


class _Mixture:
    """Running weighted sum of pmfs (one data window, one field), merged as it grows to bound memory."""

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []
        self.mass: list[np.ndarray] = []
        self.weight = 0.0

    def add(self, table: LengthTable, weight: float) -> None:
        self.values.append(table.values)
        self.mass.append(np.diff(table.cdf, prepend=0.0) * weight)
        self.weight += weight
        if len(self.values) >= 32:
            self._merge()

    def _merge(self) -> None:
        v, inv = np.unique(np.concatenate(self.values), return_inverse=True)
        self.values, self.mass = [v], [np.bincount(inv, weights=np.concatenate(self.mass), minlength=v.size)]

    def table(self) -> LengthTable | None:
        if not self.values or not self.weight > 0:
            return None
        self._merge()
        return LengthTable.from_pmf(self.values[0], self.mass[0])


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[..., Any]]:
    """A rich progress bar on stderr; yields `task(description, total) -> advance(n)`."""
    if not enabled or not sys.stderr.isatty():  # a bar in a log file is noise, and errors stay one line
        yield lambda _d, _t: (lambda _n=1: None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as prog:
        def task(description: str, total: float) -> Callable[..., None]:
            tid = prog.add_task(description, total=total)
            return lambda n=1: prog.advance(tid, n)
        yield task


def import_servegen(folder: str | Path, *, name: str | None = None, category: str | None = None,
                    ks_max: float = DEFAULT_KS_MAX, command: str | None = None, progress: bool = True,
                    warn: Callable[[str], None] | None = None) -> ClientPool:
    """Read one ServeGen pool folder (e.g. `data/language/m-large`) into a `ClientPool`.

    `warn` receives the lines meant for the user's attention (default: stderr), such as the list
    of clients without length data. The pool is validated before it is returned.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    src = Path(folder)
    if not src.is_dir():
        raise InputError("expected a ServeGen pool folder (with chunk-<id>-trace.csv files)", path=str(src))
    if not 0 < ks_max < 0.5:
        raise InputError(f"expected 0 < ks_max < 0.5, got {ks_max}", field="--ks-max")
    source_name = src.resolve().name
    name = name or source_name
    traces: dict[int, Path] = {}
    datasets: dict[int, Path] = {}
    for p in src.iterdir():
        if m := _TRACE_RE.match(p.name):
            traces[int(m.group(1))] = p
        elif m := _DATASET_RE.match(p.name):
            datasets[int(m.group(1))] = p
    if not traces:
        raise InputError("no chunk-<id>-trace.csv files: not a ServeGen pool folder", path=str(src))
    orphans = sorted(set(datasets) - set(traces))
    if orphans:
        raise InputError(f"dataset JSON without a trace CSV (chunk ids {orphans})", path=str(datasets[orphans[0]]))
    if not datasets:
        raise InputError("no chunk-<id>-dataset.json files: a pool needs some clients' length data", path=str(src))
    ids = sorted(traces)
    clients = [f"{source_name}:{i}" for i in ids]
    missing = [c for i, c in zip(ids, clients, strict=True) if i not in datasets]

    with _progress(progress) as task:
        # 1) rate windows
        advance = task(f"{name}: traces", len(ids))
        tr: list[Trace] = []
        for i in ids:
            t = read_trace(traces[i])
            if tr and (t.window_start.shape != tr[0].window_start.shape
                       or not np.array_equal(t.window_start, tr[0].window_start)):
                raise InputError(f"window starts differ from {traces[ids[0]].name}'s: every client needs the "
                                 "same rate windows", path=str(traces[i]), field="window_start")
            tr.append(t)
            advance()
        window_start = tr[0].window_start
        steps = np.diff(window_start)
        if steps.size and not np.allclose(steps, steps[0]):
            raise InputError("rate windows must be evenly spaced", path=str(traces[ids[0]]), field="window_start")
        window = float(steps[0]) if steps.size else 600.0
        rate = np.stack([t.rate for t in tr])
        arrays = {k: np.stack([getattr(t, k) for t in tr]) for k in ("cv", "family", "shape", "scale")}

        # 2) length data: entries, fields, data windows
        data = {i: read_dataset(datasets[i]) for i in ids if i in datasets}
        first = next(iter(data.values()))
        fields = list(next(iter(first.entries.values())).keys())
        for ds in data.values():
            for start, entry in ds.entries.items():
                if set(entry) != set(fields):
                    raise InputError(f"expected fields {fields} (as in {first.path.name}), got {list(entry)}",
                                     path=str(ds.path), line=_line_of(ds.raw, ds.keys[start]),
                                     field=json.dumps(ds.keys[start]))
        need = ("text_tokens" if "text_tokens" in fields and "input_tokens" not in fields else "input_tokens",
                "output_tokens")
        if any(f not in fields for f in need):
            raise InputError(f"expected the fields {' and '.join(need)} (or text_tokens), got {fields}",
                             path=str(first.path), line=_line_of(first.raw, next(iter(first.keys.values()))))
        cat = infer_category(src, fields, category)
        data_start = np.array(sorted({s for ds in data.values() for s in ds.entries}), dtype=np.float64)
        steps = np.diff(data_start)
        data_window = float(steps.min()) if steps.size else DEFAULT_DATA_WINDOW
        dwin = np.clip(np.searchsorted(data_start, window_start, side="right") - 1, 0, data_start.size - 1)
        requests = np.zeros((len(ids), data_start.size))  # per client and data window
        for d in range(data_start.size):
            requests[:, d] = rate[:, dwin == d].sum(axis=1) * window

        # 3) per-client tables
        store = _Tables(ks_max)
        table_index = np.full((len(ids), data_start.size, len(fields)), -1, dtype=np.int32)
        mixtures = [[_Mixture() for _ in fields] for _ in range(data_start.size)]
        needs_mixture: list[tuple[int, int, int]] = []  # (client, data window, field)
        empty_with_traffic: list[str] = []
        advance = task(f"{name}: length data", sum(len(ds.raw) for ds in data.values()))
        for c, i in enumerate(ids):
            if i not in data:
                needs_mixture.extend((c, d, f) for d in range(data_start.size) if requests[c, d] > 0
                                     for f in range(len(fields)))
                continue
            ds = data.pop(i)  # drop the raw text once done: m-large holds 104 MB of literals
            starts = np.array(sorted(ds.entries), dtype=np.float64)
            parsed: dict[tuple[float, int], tuple[int, LengthTable | None]] = {}
            for d in range(data_start.size):
                k = int(np.searchsorted(starts, data_start[d], side="right")) - 1
                for f, field_name in enumerate(fields):
                    idx, orig = (-1, None) if k < 0 else _client_table(ds, float(starts[k]), f, field_name,
                                                                      store, parsed)
                    table_index[c, d, f] = idx
                    if requests[c, d] > 0:
                        if orig is None:
                            needs_mixture.append((c, d, f))
                            empty_with_traffic.append(f"{clients[c]}@{data_start[d]:.0f}/{field_name}")
                        else:
                            mixtures[d][f].add(orig, requests[c, d])
            advance(len(ds.raw))

        # 4) fallback: the rate-weighted mixture of the other clients' tables in the same data window
        if needs_mixture:
            mixed: dict[tuple[int, int], int] = {}
            advance = task(f"{name}: fallback mixtures", len(needs_mixture))
            for c, d, f in needs_mixture:
                if (d, f) not in mixed:
                    t = mixtures[d][f].table()
                    where = f"{name}: mixture of data window {data_start[d]:.0f}/{fields[f]}"
                    if t is None:  # nobody with length data has traffic there: the whole-pool mixture
                        whole = _Mixture()
                        for dd in range(data_start.size):
                            if (td := mixtures[dd][f].table()) is not None:
                                whole.add(td, mixtures[dd][f].weight)
                        t, where = whole.table(), f"{name}: whole-pool mixture/{fields[f]}"
                    if t is None:
                        raise InputError("no client with length data has any traffic: cannot build the "
                                         "fallback length mixture", path=str(src))
                    mixed[(d, f)] = store.add(t, where)
                table_index[c, d, f] = mixed[(d, f)]
                advance()

    if missing:
        share = requests[[clients.index(m) for m in missing]].sum() / max(requests.sum(), 1e-300)
        warn(f"{name}: {len(missing)} of {len(ids)} clients have no dataset JSON (no length data; "
             f"{100 * share:.1f}% of requests): {', '.join(missing)}. They use the pool's rate-weighted "
             "length mixture of each data window (listed in the pool's `fallback`).")
    if empty_with_traffic:
        warn(f"{name}: {len(empty_with_traffic)} empty distributions where the client has traffic; they use the "
             f"pool's length mixture of that data window: {', '.join(empty_with_traffic[:10])}"
             + (" ..." if len(empty_with_traffic) > 10 else ""))
    values, cdf, offsets = build_tables(store.tables)
    meta: dict[str, Any] = {
        "source": str(src),
        "source_pool": source_name,
        "servegen_commit": servegen_commit(src),
        "import_command": command,
        "ks_max": ks_max,
        "ks_worst": round(store.ks_worst, 6),
        "missing_length_data": missing,
        "fallback_rule": "rate-weighted mixture of the other clients' length tables in the same data window "
                         "(weights: request counts in that window)",
        "empty_with_traffic": empty_with_traffic,
    }
    pool = ClientPool(
        name=name, category=cat, clients=clients, window=window, window_start=window_start,
        rate=rate.astype(np.float32), cv=arrays["cv"].astype(np.float32), family=arrays["family"].astype(np.int8),
        shape=arrays["shape"].astype(np.float32), scale=arrays["scale"].astype(np.float32),
        data_window=data_window, data_start=data_start, fields=fields, table_index=table_index,
        values=values.astype(np.float32), cdf=cdf.astype(np.float32), offsets=offsets,
        fallback=list(missing), meta=meta,
    )
    pool.validate(str(src))
    return pool
