"""Client pools: per-client rate windows and length distributions, in one compact file.

A pool is ServeGen's model of a service: a set of clients, each with
- a rate curve: per rate window (600 s) a request rate and a gap family + shape (burstiness);
- length distributions: per data window (21600 s) one `LengthTable` per field
  (`input_tokens`, `output_tokens`, plus `reason_ratio` for reasoning pools, or `text_tokens`,
  `image_tokens`, `image_count`, ... for multimodal pools).

File format (`.npz`, read with `allow_pickle=False`, so loading never executes anything):
dense float32 arrays `rate`, `cv`, `shape`, `scale` and int8 `family` of shape
(clients, rate windows); `window_start` (rate windows), `data_start` (data windows);
length tables flattened into `values`/`cdf` with `offsets` and a `table_index` of shape
(clients, data windows, fields) pointing at them (-1: no data, the client is idle there);
`meta_json`: UTF-8 JSON with name, category, fields, client ids, fallback clients, provenance.

Clients without length data (ServeGen's missing dataset files) point at the pool's
rate-weighted mixture tables for the same data window and are listed in `meta.fallback`.

Pools made by `fit` also carry its arrival models, their evidence and the rate profile
(`workload.arrival_fit.ARRIVAL_ARRAYS` lists them: arrival_model, arrival_score, fano_obs,
batch_*, quantum_shape, onoff_*, profile, level, rate_shrink, epoch_family/epoch_shape) with
`meta.arrival` (scales, profile kind and clock, origin); the format name stays v1 because every
one of them is optional: a pool without them generates as before, and older readers ignore them.

Optional arrays (`ClientPool.extra`; a pool without them loads fine, readers must check): pools
made by `fit` add `rank_corr` float32 (clients,), the Spearman correlation of input (text) and
output tokens per client (NaN: undefined), and where the log has them `reason_copula` (output
tokens and reasoning share) and `image_copula`/`audio_copula`/`video_copula` (an item count and
the size of its items), float32 (clients, K, K) checkerboard copulas (NaN: too few requests);
and with session ids `session_index` int32 (clients, 3) pointing into the same flat tables for
the fields `meta.session_fields` =
turns per session, think time between turns (s), new input tokens per turn (-1: no sessions),
plus `session_share` float32 (clients,), the share of the client's requests that carry a session,
and `session_output_copula` (clients, K, K), the checkerboard copula of consecutive turns' outputs.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..formats import POOL_FORMAT
from .distributions import SHAPE_RANGE, Family, LengthTable

SHIPPED = ("m-large", "m-small", "mm-image", "deepseek-r1")
CATEGORIES = ("language", "multimodal", "reason")
MAX_VALUE = 2**31 - 1  # a length table's largest value: token counts are int32 in logs and requests
_ARRAYS = ("window_start", "rate", "cv", "family", "shape", "scale", "data_start",
           "table_index", "values", "cdf", "offsets")


# the copula arrays a fitted pool may carry -> the field each one draws coupled to its partner
# (`lengths.TableSet.draw`: the reasoning share to output tokens, an item's size to the item count)
COPULAS = {"reason_copula": "reason_ratio", "image_copula": "image_tokens", "audio_copula": "audio_tokens",
           "video_copula": "video_tokens", "session_output_copula": "next_output"}


@dataclass
class ClientPool:
    """A pool in memory; arrays are indexed [client, window] or [client, data window, field]."""

    name: str
    category: str
    clients: list[str]
    window: float
    window_start: np.ndarray
    rate: np.ndarray
    cv: np.ndarray
    family: np.ndarray
    shape: np.ndarray
    scale: np.ndarray
    data_window: float
    data_start: np.ndarray
    fields: list[str]
    table_index: np.ndarray
    values: np.ndarray
    cdf: np.ndarray
    offsets: np.ndarray
    fallback: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    @property
    def span(self) -> float:
        """Seconds of pool time covered by rate windows."""
        return float(self.window_start[-1] + self.window) if self.window_start.size else 0.0

    def table(self, client: int, data_window: int, field_name: str) -> LengthTable | None:
        """The length table of one client in one data window, or None when it has no traffic there."""
        t = int(self.table_index[client, data_window, self.fields.index(field_name)])
        if t < 0:
            return None
        a, b = int(self.offsets[t]), int(self.offsets[t + 1])
        return LengthTable(self.values[a:b].astype(np.float64), self.cdf[a:b].astype(np.float64))

    def data_window_of(self, t: np.ndarray | float) -> np.ndarray:
        """Index of the data window in force at pool time `t`: the latest one starting at or before it."""
        i = np.searchsorted(self.data_start, np.asarray(t, dtype=np.float64), side="right") - 1
        return np.clip(i, 0, self.data_start.size - 1)

    def window_seconds(self) -> np.ndarray:
        """Seconds of each rate window the pool's data covers: the window length, except a fitted
        pool's last window when its log ended inside it (counted whole, a 5-minute log's 600 s
        window held 4,445 requests where 1,552 were fitted)."""
        n = self.window_start.size
        arrival = self.meta.get("arrival")
        span = arrival.get("span") if isinstance(arrival, dict) else None
        full = np.full(n, float(self.window))
        if not isinstance(span, int | float) or not 0 < span < n * self.window:
            return full
        return np.clip(span - self.window_start.astype(np.float64), 0.0, full)

    def requests_per_client(self) -> np.ndarray:
        """Expected request count per client over the whole pool (rate x the seconds covered)."""
        return self.rate.astype(np.float64) @ self.window_seconds()

    def validate(self, path: str = "<pool>") -> None:
        """Every structural rule generation relies on, so a damaged or hand-made pool fails here with
        one line naming the array, never later inside sampling: shapes, finite values, increasing
        window starts, consistent flat tables (offsets, cdf in [0, 1] increasing to 1 within each
        table), table ids in range and pointing at non-empty tables, gap families and shapes
        (`distributions.SHAPE_RANGE`), unique client ids, and the fields generation needs."""
        def bad(msg: str, name: str) -> InputError:
            return InputError(msg, path=path, field=name)

        c, w, d = len(self.clients), self.window_start.size, self.data_start.size
        if self.category not in CATEGORIES:
            raise bad(f"expected one of {CATEGORIES}, got {self.category!r}", "category")
        if c == 0:
            raise bad("expected at least one client", "clients")
        if len(set(self.clients)) != c:
            dup = next(x for i, x in enumerate(self.clients) if x in self.clients[:i])
            raise bad(f"client ids must be unique, {dup!r} appears twice", "clients")
        if len(set(self.fields)) != len(self.fields):
            raise bad(f"fields must be unique, got {self.fields}", "fields")
        need = ("text_tokens" if "text_tokens" in self.fields and "input_tokens" not in self.fields
                else "input_tokens", "output_tokens")
        if any(f not in self.fields for f in need):
            raise bad(f"expected the fields {' and '.join(need)} (or text_tokens), got {self.fields}", "fields")
        for name, v in (("window", self.window), ("data_window", self.data_window)):
            if not (np.isfinite(v) and v > 0):
                raise bad(f"expected a finite number of seconds > 0, got {v!r}", name)
        for name in ("window_start", "data_start", "values", "cdf", "offsets"):
            if getattr(self, name).ndim != 1:
                raise bad(f"expected a 1-d array, got shape {getattr(self, name).shape}", name)
        if w == 0 or d == 0:
            raise bad("expected at least one window", "window_start" if w == 0 else "data_start")
        for name in ("window_start", "data_start"):
            a = getattr(self, name)
            if not (np.all(np.isfinite(a)) and np.all(a >= 0) and np.all(np.diff(a) > 0)):
                raise bad("expected finite, increasing seconds >= 0", name)
        if not np.isfinite(self.span):
            raise bad("the pool's span is not finite", "window_start")
        for n in ("rate", "cv", "family", "shape", "scale"):
            if getattr(self, n).shape != (c, w):
                raise bad(f"expected shape {(c, w)}, got {getattr(self, n).shape}", n)
        if self.table_index.shape != (c, d, len(self.fields)):
            raise bad(f"expected shape {(c, d, len(self.fields))} (clients x data windows x fields), got "
                      f"{self.table_index.shape}", "table_index")
        # flat length tables
        off, n_tables = self.offsets, self.offsets.size - 1
        if n_tables < 0 or off[0] != 0 or off[-1] != self.values.size or np.any(np.diff(off) < 0):
            raise bad("expected offsets increasing from 0 to the number of values", "offsets")
        if self.cdf.size != self.values.size:
            raise bad(f"expected as many cdf entries as values ({self.values.size}), got {self.cdf.size}", "cdf")
        if not (np.all(np.isfinite(self.values)) and np.all(self.values >= 0) and np.all(self.values <= MAX_VALUE)):
            raise bad(f"length values must be in 0..{MAX_VALUE} (token counts, items, ratios, seconds)", "values")
        cdf = self.cdf.astype(np.float64)
        if not (np.all(np.isfinite(cdf)) and np.all(cdf >= 0) and np.all(cdf <= 1 + 1e-4)):
            raise bad("expected cumulative probabilities in [0, 1]", "cdf")
        step = np.diff(cdf)
        inner = np.ones(step.size, dtype=bool)
        inner[(off[1:-1] - 1)[(off[1:-1] >= 1) & (off[1:-1] <= step.size)]] = False  # steps across tables
        if np.any(step[inner] < -1e-6):
            raise bad("expected cumulative probabilities increasing within each table", "cdf")
        sizes = np.diff(off)
        ends = off[1:][sizes > 0] - 1
        if np.any(np.abs(cdf[ends] - 1.0) > 1e-3):
            raise bad("expected every table's cumulative probabilities to end at 1", "cdf")
        ti = self.table_index
        if ti.size and (int(ti.min()) < -1 or int(ti.max()) >= n_tables):
            raise bad(f"expected table ids in -1..{n_tables - 1}, got {int(ti.min())}..{int(ti.max())}",
                      "table_index")
        used = np.unique(ti[ti >= 0])
        if used.size and np.any(sizes[used] == 0):
            raise bad("a table id points at an empty table", "table_index")
        # rate windows
        if not np.all(np.isfinite(self.rate)) or np.any(self.rate < 0):
            raise bad("rates must be finite and >= 0", "rate")
        if np.any((self.family < Family.NONE) | (self.family > Family.LOGNORMAL)):
            raise bad("expected gap family codes 0..4", "family")
        if not np.all(np.isfinite(self.cv)) or np.any(self.cv < 0):
            raise bad("gap CVs must be finite and >= 0", "cv")
        if not np.all(np.isfinite(self.shape)) or not np.all(np.isfinite(self.scale)):
            raise bad("must be finite", "shape" if not np.all(np.isfinite(self.shape)) else "scale")
        active = self.rate > 0
        if np.any(active & (self.family == Family.NONE)):
            raise bad("active windows need a gap family code 1..4", "family")
        for fam, (lo, hi) in SHAPE_RANGE.items():
            sh = self.shape[active & (self.family == fam)]
            if sh.size and not (float(sh.min()) >= lo and float(sh.max()) <= hi):
                raise bad(f"{Family(fam).name.lower()} windows need a shape in [{lo:g}, {hi:g}], got "
                          f"{float(sh.min()):g}..{float(sh.max()):g}", "shape")
        # optional arrays readers use
        rc = self.extra.get("rank_corr")
        if rc is not None and (rc.shape != (c,) or rc.dtype.kind != "f"):
            raise bad(f"expected {c} floats (one per client), got {rc.dtype} {rc.shape}", "rank_corr")
        for name in COPULAS:
            cop = self.extra.get(name)
            if cop is not None and (cop.ndim != 3 or cop.shape[0] != c or cop.shape[1] != cop.shape[2]
                                    or cop.dtype.kind != "f"):
                raise bad(f"expected {c} square tables of floats (one per client), got {cop.dtype} {cop.shape}", name)
        self._validate_arrivals(bad, c, w, n_tables)
        si = self.extra.get("session_index")
        if si is not None and (si.shape[:1] != (c,) or si.dtype.kind not in "iu"
                               or (si.size and (int(si.min()) < -1 or int(si.max()) >= n_tables))):
            raise bad(f"expected table ids in -1..{n_tables - 1}, one row per client", "session_index")

    def copulas(self, client: int) -> dict[str, np.ndarray]:
        """The copulas this pool measured for one client (`lengths.coupled_uniforms`), by the field
        they couple (`COPULAS`): output and reasoning share, an item count and its items' size,
        consecutive turns' outputs. NaN tables (too few requests to measure one) are left out."""
        out: dict[str, np.ndarray] = {}
        for key, name in COPULAS.items():  # (their shapes are checked when the pool loads)
            cop = self.extra.get(key)
            if cop is not None:
                j = cop[client].astype(np.float64)
                if np.isfinite(j).all() and j.sum() > 0:
                    out[name] = j
        return out

    def _validate_arrivals(self, bad: Any, c: int, w: int, n_tables: int) -> None:
        """The optional arrays of `workload.arrival_fit` (fitted pools), when present."""
        shapes = {"arrival_model": (c,), "zero_gap_share": (c,), "batch_period": (c,), "batch_phase": (c,),
                  "batch_dispersion": (c,), "batch_mean": (c,), "batch_index": (c,), "quantum_shape": (c,),
                  "level": (c,), "rate_shrink": (c,), "rate_signal_var": (c,), "rate_noise": (c,), "onoff_share": (c,), "onoff_cv": (c,), "onoff_on_cv": (c,),
                  "profile": (c, 168), "epoch_family": (c, w), "epoch_shape": (c, w)}
        for name, shape in shapes.items():
            a = self.extra.get(name)
            if a is not None and a.shape != shape:
                raise bad(f"expected shape {shape}, got {a.shape}", name)
        x = self.extra
        if "arrival_model" in x and x["arrival_model"].size and not (
                int(x["arrival_model"].min()) >= 0 and int(x["arrival_model"].max()) <= 3):
            raise bad("expected arrival model codes 0..3", "arrival_model")
        bi = x.get("batch_index")
        if bi is not None and bi.size and (int(bi.min()) < -1 or int(bi.max()) >= n_tables):
            raise bad(f"expected table ids in -1..{n_tables - 1}", "batch_index")
        for name, lo, hi in (("batch_period", 0.0, 1e9), ("batch_dispersion", 0.0, 1e9), ("batch_mean", 0.0, 1e9),
                             ("quantum_shape", 1e-6, 1e6), ("level", 0.0, 1e12), ("rate_shrink", 0.0, 1.0),
                             ("rate_signal_var", 0.0, 1e24), ("rate_noise", 0.0, 1e12),
                             ("onoff_share", 0.0, 0.999), ("onoff_cv", 0.0, 1e6), ("onoff_on_cv", 0.01, 100.0)):
            a = x.get(name)
            if a is not None and a.size and not (np.all(np.isfinite(a)) and a.min() >= lo and a.max() <= hi):
                raise bad(f"expected finite values in [{lo:g}, {hi:g}]", name)
        es = x.get("epoch_shape")
        ef = x.get("epoch_family")
        if ef is not None and ef.size and (int(ef.min()) < 0 or int(ef.max()) > Family.LOGNORMAL):
            raise bad("expected gap family codes 0..4", "epoch_family")
        if es is not None and ef is not None:
            for fam, (lo, hi) in SHAPE_RANGE.items():
                sh = es[ef == fam]
                if sh.size and not (float(sh.min()) >= lo and float(sh.max()) <= hi):
                    raise bad(f"{Family(fam).name.lower()} windows need a shape in [{lo:g}, {hi:g}]", "epoch_shape")
        p = x.get("profile")
        if p is not None and np.any(p[np.isfinite(p)] < 0):
            raise bad("expected rates >= 0 (NaN: never seen)", "profile")
        am = self.meta.get("arrival")
        if am is not None and (not isinstance(am, dict) or not all(
                isinstance(am.get(k, 0.0), int | float) and not isinstance(am.get(k, 0.0), bool)
                for k in ("origin", "span"))):
            raise bad("expected a mapping with numeric origin and span", "arrival")

    def save(self, path: str | Path) -> None:
        from ..atomic import atomic_write

        meta = dict(self.meta)
        meta.update(format=POOL_FORMAT, name=self.name, category=self.category, clients=self.clients,
                    window=self.window, data_window=self.data_window, fields=self.fields,
                    fallback=self.fallback)
        buf = io.BytesIO()
        np.savez_compressed(
            buf, meta_json=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            window_start=self.window_start.astype(np.float64), rate=self.rate.astype(np.float32),
            cv=self.cv.astype(np.float32), family=self.family.astype(np.int8),
            shape=self.shape.astype(np.float32), scale=self.scale.astype(np.float32),
            data_start=self.data_start.astype(np.float64), table_index=self.table_index.astype(np.int32),
            values=self.values.astype(np.float32), cdf=self.cdf.astype(np.float32),
            offsets=self.offsets.astype(np.int64),
            **{k: v for k, v in self.extra.items() if k not in _ARRAYS and k != "meta_json"},
        )
        with atomic_write(path, "wb") as fh:
            fh.write(buf.getvalue())


# array -> (kinds of numpy dtype accepted, dtype it is held in)
_DTYPES: dict[str, tuple[str, Any]] = {
    "window_start": ("fiu", np.float64), "data_start": ("fiu", np.float64),
    "rate": ("fiu", np.float32), "cv": ("fiu", np.float32), "shape": ("fiu", np.float32),
    "scale": ("fiu", np.float32), "values": ("fiu", np.float32), "cdf": ("fiu", np.float32),
    "family": ("iu", np.int8), "table_index": ("iu", np.int64), "offsets": ("iu", np.int64),
}


def _typed(name: str, a: np.ndarray, path: str) -> np.ndarray:
    """An array of the pool file in the dtype the package uses; a wrong kind is an InputError."""
    kinds, dtype = _DTYPES[name]
    if a.dtype.kind not in kinds:
        want = "integers" if kinds == "iu" else "numbers"
        raise InputError(f"expected an array of {want}, got dtype {a.dtype}", path=path, field=name)
    if kinds == "iu" and a.size:
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        if int(a.min()) < lo or int(a.max()) > hi:
            raise InputError(f"values out of range ({int(a.min())}..{int(a.max())})", path=path, field=name)
    with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32: inf, refused by validate
        return a.astype(dtype)


def load_pool(name_or_path: str | Path) -> ClientPool:
    """A shipped pool by name (`m-large`) or a pool file by path; errors name the file and field.

    Nothing in the file is trusted: `allow_pickle=False` (an object array is refused, never
    unpickled), dtypes are checked and converted, the metadata's types are checked, and
    `ClientPool.validate` checks the structure."""
    p = _resolve(name_or_path)
    ps = str(p)
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array under another name
            raise InputError("not a pool file: a single array, expected a .npz archive", path=ps)
        with z:
            missing = [k for k in ("meta_json", *_ARRAYS) if k not in z.files]
            if missing:
                raise InputError(f"not a pool file: missing arrays {missing}", path=ps)
            raw = {k: z[k] for k in z.files}
    except InputError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, RuntimeError) as e:
        raise InputError(f"not a readable pool file ({type(e).__name__}: {e})", path=ps) from None
    mj = raw.pop("meta_json")
    if mj.dtype != np.uint8 or mj.ndim != 1:
        raise InputError(f"expected UTF-8 JSON bytes (uint8), got dtype {mj.dtype}", path=ps, field="meta_json")
    try:
        meta = json.loads(mj.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"expected UTF-8 JSON ({type(e).__name__})", path=ps, field="meta_json") from None
    if not isinstance(meta, dict) or meta.get("format") != POOL_FORMAT:
        raise InputError(f"expected format {POOL_FORMAT!r} in the pool metadata", path=ps, field="format")
    arrays = {k: _typed(k, raw.pop(k), ps) for k in _ARRAYS}
    extra = raw
    for k, v in extra.items():
        if v.dtype.kind not in "biuf":
            raise InputError(f"expected a numeric array, got dtype {v.dtype}", path=ps, field=k)

    def strings(key: str, default: Any = None) -> list[str]:
        v = meta.get(key, default)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise InputError("expected a list of strings in the pool metadata", path=ps, field=key)
        return v

    def number(key: str) -> float:
        v = meta.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise InputError(f"expected a number in the pool metadata, got {v!r:.40}", path=ps, field=key)
        return float(v)

    for key in ("name", "category"):
        if not isinstance(meta.get(key), str):
            raise InputError(f"expected a string in the pool metadata, got {meta.get(key)!r:.40}", path=ps, field=key)
    pool = ClientPool(
        name=meta["name"], category=meta["category"], clients=strings("clients"), window=number("window"),
        data_window=number("data_window"), fields=strings("fields"), fallback=strings("fallback", []),
        meta=meta, extra=extra, **arrays,
    )
    pool.validate(ps)
    return pool


def _resolve(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s in SHIPPED:
        return Path(str(resources.files("servegen_load") / "pools" / f"{s}.npz"))
    p = Path(s)
    if not p.exists():
        raise InputError(f"no such pool file, and not a shipped pool name (shipped: {', '.join(SHIPPED)})",
                         path=s)
    return p


def build_tables(tables: list[LengthTable]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten tables into (values, cdf, offsets) arrays for `ClientPool`."""
    sizes = np.array([t.values.size for t in tables], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    values = np.concatenate([t.values for t in tables]) if tables else np.zeros(0)
    cdf = np.concatenate([t.cdf for t in tables]) if tables else np.zeros(0)
    return values, cdf, offsets
