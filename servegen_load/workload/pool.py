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

Optional arrays (`ClientPool.extra`; a pool without them loads fine, readers must check): pools
made by `fit` add `rank_corr` float32 (clients,), the Spearman correlation of input (text) and
output tokens per client (NaN: undefined); and with session ids `session_index` int32
(clients, 3) pointing into the same flat tables for the fields `meta.session_fields` =
turns per session, think time between turns (s), new input tokens per turn (-1: no sessions),
plus `session_share` float32 (clients,), the share of the client's requests that carry a session.
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
from .distributions import Family, LengthTable

POOL_FORMAT = "servegen-load/pool/v1"
SHIPPED = ("m-large", "m-small", "mm-image", "deepseek-r1")
CATEGORIES = ("language", "multimodal", "reason")
_ARRAYS = ("window_start", "rate", "cv", "family", "shape", "scale", "data_start",
           "table_index", "values", "cdf", "offsets")


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

    def requests_per_client(self) -> np.ndarray:
        """Expected request count per client over the whole pool (rate x window length)."""
        return self.rate.astype(np.float64).sum(axis=1) * self.window

    def validate(self, path: str = "<pool>") -> None:
        """Structural checks so generation can trust shapes and indices."""
        c, w = len(self.clients), self.window_start.size
        for n in ("rate", "cv", "family", "shape", "scale"):
            if getattr(self, n).shape != (c, w):
                raise InputError(f"expected shape {(c, w)}, got {getattr(self, n).shape}", path=path, field=n)
        if self.table_index.shape != (c, self.data_start.size, len(self.fields)):
            raise InputError("table_index shape does not match clients x data windows x fields", path=path,
                             field="table_index")
        if self.offsets.size == 0 or self.offsets[-1] != self.values.size or self.cdf.size != self.values.size:
            raise InputError("length tables are inconsistent (offsets/values/cdf)", path=path, field="offsets")
        if self.table_index.size and int(self.table_index.max(initial=-1)) >= self.offsets.size - 1:
            raise InputError("table_index points past the last table", path=path, field="table_index")
        if not np.all(np.isfinite(self.rate)) or np.any(self.rate < 0):
            raise InputError("rates must be finite and >= 0", path=path, field="rate")
        active = self.rate > 0
        fam = self.family[active]
        if np.any((fam <= Family.NONE) | (fam > Family.LOGNORMAL)):
            raise InputError("active windows need a gap family code 1..4", path=path, field="family")
        needs_shape = active & (self.family != Family.EXPONENTIAL)
        if np.any(~(self.shape[needs_shape] > 0)):
            raise InputError("active windows need a positive shape", path=path, field="shape")
        if self.category not in CATEGORIES:
            raise InputError(f"expected one of {CATEGORIES}, got {self.category!r}", path=path, field="category")

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


def load_pool(name_or_path: str | Path) -> ClientPool:
    """A shipped pool by name (`m-large`) or a pool file by path; errors name the file and field."""
    p = _resolve(name_or_path)
    try:
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array under another name
            raise InputError("not a pool file: a single array, expected a .npz archive", path=str(p))
        with z:
            missing = [k for k in ("meta_json", *_ARRAYS) if k not in z.files]
            if missing:
                raise InputError(f"not a pool file: missing arrays {missing}", path=str(p))
            arrays = {k: z[k] for k in _ARRAYS}
            extra = {k: z[k] for k in z.files if k not in _ARRAYS and k != "meta_json"}
            meta = json.loads(z["meta_json"].tobytes().decode())
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, json.JSONDecodeError) as e:
        raise InputError(f"not a readable pool file ({type(e).__name__}: {e})", path=str(p)) from None
    if not isinstance(meta, dict) or meta.get("format") != POOL_FORMAT:
        raise InputError(f"expected format {POOL_FORMAT!r} in the pool metadata", path=str(p), field="format")
    try:
        pool = ClientPool(
            name=str(meta["name"]), category=str(meta["category"]), clients=[str(c) for c in meta["clients"]],
            window=float(meta["window"]), data_window=float(meta["data_window"]),
            fields=[str(f) for f in meta["fields"]], fallback=[str(c) for c in meta.get("fallback", [])],
            meta=meta, extra=extra, **arrays,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"pool metadata is incomplete ({e})", path=str(p), field="meta_json") from None
    pool.validate(str(p))
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
