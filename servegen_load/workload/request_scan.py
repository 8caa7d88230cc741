"""Requests files read in blocks of numpy columns, at more than a million lines a second.

`inspect REQUESTS [--scenario]` needs a handful of columns of millions of lines; decoding each
line with orjson and checking it in Python costs about 6 us a line. The lines `generate` writes
for text requests have one fixed shape (`requests_writer.RowFormatter`):

    {"id":"<client>#<k>","t":<s>,"client":"<client>","category":"<cat>","input_tokens":<n>,"output_tokens":<n>[,"reason_tokens":<n>]}

so a block's lines are located by their quotes (18 a line, 20 with reason_tokens), the bytes
between the quotes are checked against the shape's literals, and the values are gathered into
fixed-width byte matrices that numpy converts (`_fast_columns`): no Python object per line. No
escape, control character or other key is allowed, numbers follow JSON's grammar. A
block where any line does not match (sessions, media, prefixes, escaped names, other tools'
files), or whose values break a rule of the record (`requests.check_request`: t in 0..MAX_TIME,
token counts in 0..MAX_TOKENS, reason <= output, t never decreasing), is read by the per-line
path instead, which names the first bad line exactly as before: the fast path accepts only what
the full check accepts.

Memory: one block of `BLOCK_BYTES` plus its columns and temporaries (t float64, client int32, k int64, category
int8, tokens int32: 29 bytes a row).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import InputError
from ..requests import MAX_TIME, MAX_TOKENS, check_request

BLOCK_BYTES = 1 << 21  # 2 MB: a block's temporaries stay in cache (4 MB and more is slower)
MODS = (("image", "images"), ("audio", "audio"), ("video", "video"))
@dataclass
class Block:
    """Columns of consecutive lines (codes index the reader's `clients` / `categories`)."""

    t: np.ndarray
    client: np.ndarray
    k: np.ndarray
    category: np.ndarray
    inp: np.ndarray
    out: np.ndarray
    reason: np.ndarray
    mm: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # modality -> (counts, items)

    def __len__(self) -> int:
        return int(self.t.size)


class RequestScanner:
    """Reads one requests file block by block; `clients`/`categories` grow as names appear."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.clients: list[str] = []
        self.categories: list[str] = []
        self._codes: dict[bytes, int] = {}
        self._cats: dict[bytes, int] = {}
        self.last_t = 0.0
        self.fast_lines = 0
        self.slow_lines = 0

    def blocks(self) -> Iterator[Block]:
        """Blocks of the file after its header line, in file order."""
        line_no = 2
        with self.path.open("rb") as fh:
            fh.readline()
            rest = b""
            while True:
                data = fh.read(BLOCK_BYTES)
                if not data:
                    if rest:
                        yield self._block(rest, line_no)
                    return
                data = rest + data
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                body, rest = data[:cut], data[cut:]
                fast_before = self.fast_lines
                blk = self._block(body, line_no)
                yield blk
                # a fast block has one row per line (no blank line); only slow ones need counting
                line_no += len(blk) if self.fast_lines > fast_before else body.count(b"\n")

    # --- one block

    def _block(self, body: bytes, first_line: int) -> Block:
        got = self._fast(body)
        if got is not None:
            return got
        return self._slow(body, first_line)

    def _fast(self, body: bytes) -> Block | None:
        if not body.endswith(b"\n"):
            body += b"\n"
        f = _fast_columns(body)
        if f is None:
            return None
        t, k, inp, out, reason, client_s, cat_s = f
        prev = np.concatenate([[self.last_t], t[:-1]])
        if not (bool(np.all((t >= 0) & (t <= MAX_TIME) & (t >= prev))) and int(inp.max()) <= MAX_TOKENS
                and int(out.max()) <= MAX_TOKENS and bool(np.all(reason <= out))):
            return None  # the per-line path names the line and the rule
        try:
            client = self._code_of(client_s, self._codes, self.clients).astype(np.int32)
            category = self._code_of(cat_s, self._cats, self.categories).astype(np.int8)
        except UnicodeDecodeError:
            return None
        self.last_t = float(t[-1])
        self.fast_lines += int(t.size)
        return Block(t, client, k, category, inp.astype(np.int32), out.astype(np.int32), reason.astype(np.int32))

    @staticmethod
    def _code_of(names: tuple[np.ndarray, list[bytes]], codes: dict[bytes, int], table: list[str]) -> np.ndarray:
        inv, distinct = names
        lut = np.empty(len(distinct), dtype=np.int64)
        for i, raw in enumerate(distinct):
            code = codes.get(raw)
            if code is None:
                table.append(raw.decode("utf-8"))
                code = codes[raw] = len(table) - 1
            lut[i] = code
        return lut[inv]

    def _new_client(self, raw: bytes) -> int:
        code = self._codes[raw] = len(self.clients)
        self.clients.append(raw.decode("utf-8"))
        return code

    def _new_cat(self, raw: bytes) -> int:
        code = self._cats[raw] = len(self.categories)
        self.categories.append(raw.decode("utf-8"))
        return code

    def _slow(self, body: bytes, first_line: int) -> Block:
        """Per-line decoding and `check_request` (exact errors); media lists kept as counts + items."""
        ps = str(self.path)
        cols: list[list[Any]] = [[] for _ in range(7)]
        mm_cnt: dict[str, list[int]] = {m: [] for m, _ in MODS}
        mm_items: dict[str, list[int]] = {m: [] for m, _ in MODS}
        has_mm = False
        loads = orjson.loads
        last_t = self.last_t
        for n, raw in enumerate(body.split(b"\n"), start=first_line):
            if not raw.strip():
                continue
            try:
                d = loads(raw)
            except orjson.JSONDecodeError as e:
                raise InputError(f"invalid JSON ({str(e).split(':')[0]})", path=ps, line=n) from None
            t, inp, out, r = check_request(d, ps, n)
            if t < last_t:
                raise InputError(f"requests must be ordered by t ({t:g} < {last_t:g})", path=ps, line=n, field="t")
            last_t = t
            cl = d["client"]
            cl_b = (cl if isinstance(cl, str) else str(cl)).encode("utf-8")
            code = self._codes.get(cl_b)
            if code is None:
                code = self._new_client(cl_b)
            cat_b = str(d["category"]).encode("utf-8")
            cc = self._cats.get(cat_b)
            if cc is None:
                cc = self._new_cat(cat_b)
            cols[0].append(t)
            cols[1].append(code)
            cols[2].append(-1)  # ids are not parsed (as on the fast path): nothing reads k
            cols[3].append(cc)
            cols[4].append(inp)
            cols[5].append(out)
            cols[6].append(-1 if r is None else r)
            for m, key in MODS:
                v = d.get(key)
                if v:
                    has_mm = True
                    mm_items[m].extend(v)
                mm_cnt[m].append(len(v) if v else 0)
        self.last_t = last_t
        self.slow_lines += len(cols[0])
        mm = {m: (np.array(mm_cnt[m], dtype=np.int64), np.array(mm_items[m], dtype=np.int64))
              for m, _ in MODS if has_mm and any(mm_cnt[m])}
        return Block(np.array(cols[0], dtype=np.float64), np.array(cols[1], dtype=np.int32),
                     np.array(cols[2], dtype=np.int64), np.array(cols[3], dtype=np.int8),
                     np.array(cols[4], dtype=np.int32), np.array(cols[5], dtype=np.int32),
                     np.array(cols[6], dtype=np.int32), mm)


def _empty() -> Block:
    z = np.zeros(0)
    return Block(z, z.astype(np.int32), z.astype(np.int64), z.astype(np.int8), z.astype(np.int32),
                 z.astype(np.int32), z.astype(np.int32))


_OPEN = b'{"id":"'
_AFTER_ID = b'","t":'
_CLIENT = b',"client":"'
_CATEGORY = b'","category":"'
_INPUT = b'","input_tokens":'
_OUTPUT = b',"output_tokens":'
_REASON = b',"reason_tokens":'
_DIGITS = np.zeros(256, dtype=bool)
_DIGITS[np.frombuffer(b"0123456789", dtype=np.uint8)] = True
_NUMCH = _DIGITS.copy()
_NUMCH[np.frombuffer(b".eE+-", dtype=np.uint8)] = True


def _fast_columns(body: bytes) -> tuple[np.ndarray, ...] | None:
    """(t, k, input, output, reason, client names, category names) of a block whose every line has
    the fast shape (module docstring), else None. Lines are located by their quotes (18 a line, 20
    with reason_tokens); each literal stretch between them (`{"id":"`, `","t":`, ...) is checked
    byte for byte (as 8-byte words), numbers by their characters and JSON's grammar."""
    if b"\\" in body or b"\r" in body:
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    buf = np.frombuffer(body, dtype=np.uint8)
    nl = np.flatnonzero(buf == 0x0A)
    n = nl.size
    if np.count_nonzero(buf < 0x20) != n:
        return None  # control characters (invalid in JSON strings) and tabs: the per-line path
    if n == 0:
        return None
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    quotes = np.flatnonzero(buf == 0x22)
    q0 = np.searchsorted(quotes, starts)
    per = np.diff(np.append(q0, quotes.size))
    has_r = per == 20
    any_r = bool(has_r.any())
    if not bool(np.all((per == 18) | has_r)):
        return None
    qm = quotes.reshape(n, 18) if not any_r else quotes[q0[:, None] + np.arange(18)]
    # 8 bytes at every offset (an unaligned, overlapping view): a literal is 1-3 word compares a row
    w64 = np.ndarray((buf.size,), dtype="<u8", buffer=body + bytes(8), strides=(1,))

    def lit(at: np.ndarray, text: bytes) -> bool:
        """buf[at:at+len(text)] == text on every row."""
        if int(at.min()) < 0 or int(at.max()) + len(text) > buf.size:
            return False
        for off in range(0, len(text), 8):
            part = text[off:off + 8]
            got = w64[at + off]
            if len(part) < 8:
                got = got & np.uint64((1 << (8 * len(part))) - 1)
            if not bool(np.all(got == np.uint64(int.from_bytes(part, "little")))):
                return False
        return True

    c = [qm[:, j] for j in range(18)]
    if not (lit(starts, _OPEN) and bool(np.all(c[2] == starts + 6)) and lit(c[3], _AFTER_ID)
            and bool(np.all(c[4] == c[3] + 2)) and lit(c[6] - 1, _CLIENT) and lit(c[9], _CATEGORY)
            and lit(c[13], _INPUT) and lit(c[16] - 1, _OUTPUT) and lit(nl - 1, b"}")):
        return None
    end_out = nl - 1
    reason = np.full(n, -1, dtype=np.int64)
    if any_r:
        r18 = quotes[q0[has_r] + 18]
        if not lit(r18 - 1, _REASON):
            return None
        end_out = end_out.copy()
        end_out[has_r] = r18 - 1
        r = _int(buf, quotes[q0[has_r] + 19] + 2, nl[has_r] - 1)
        if r is None:
            return None
        reason[has_r] = r
    t = _real(buf, c[5] + 2, c[6] - 1)
    inp = _int(buf, c[15] + 2, c[16] - 1)
    out = _int(buf, c[17] + 2, end_out)
    if t is None or inp is None or out is None:
        return None
    k = np.full(n, -1, dtype=np.int64)  # ids are not parsed here (nothing reads k)
    return (t, k, inp, out, reason, _names(buf, w64, c[8] + 1, c[9]), _names(buf, w64, c[12] + 1, c[13]))


def _matrix(buf: np.ndarray, a: np.ndarray, ln: np.ndarray, fill: int) -> np.ndarray:
    """Rows buf[a:a+ln], left-aligned in a (rows, max ln) matrix padded with `fill`."""
    w = max(1, int(ln.max()))
    idx = a[:, None] + np.arange(w)
    return np.where(np.arange(w) < ln[:, None], buf[np.minimum(idx, buf.size - 1)], np.uint8(fill))


def _int(buf: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """JSON non-negative integers buf[a:b]: 1..10 digits, no leading zero (Horner, a column at a time)."""
    ln = b - a
    if ln.size == 0 or int(ln.min()) < 1 or int(ln.max()) > 10:
        return None
    last = buf.size - 1
    val = np.zeros(ln.size, dtype=np.int64)
    for j in range(int(ln.max())):
        on = j < ln
        d = buf[np.minimum(a + j, last)].astype(np.int64) - 0x30
        if not bool(np.all(~on | ((d >= 0) & (d <= 9)))):
            return None
        if j == 0 and bool(np.any((d == 0) & (ln > 1))):
            return None  # a leading zero
        val = np.where(on, val * 10 + d, val)
    return val


def _real(buf: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """JSON numbers buf[a:b] of the form D[.D] (what `generate` writes), as the nearest double:
    (integer part x 10^f + fraction) / 10^f with both exact, so one correctly rounded division."""
    ln = b - a
    if ln.size == 0 or int(ln.min()) < 1 or int(ln.max()) > 17:
        return None
    last = buf.size - 1
    num = np.zeros(ln.size, dtype=np.int64)
    frac = np.zeros(ln.size, dtype=np.int64)
    dots = np.zeros(ln.size, dtype=np.int64)
    prev_dot = np.zeros(ln.size, dtype=bool)
    for j in range(int(ln.max())):
        on = j < ln
        ch = buf[np.minimum(a + j, last)]
        dot = on & (ch == 0x2E)
        d = ch.astype(np.int64) - 0x30
        digit = on & (d >= 0) & (d <= 9)
        if not bool(np.all(~on | digit | dot)):
            return None  # exponents, signs and the like: the per-line path
        if j == 0 and bool(np.any(dot | ((d == 0) & (ln > 1) & (buf[np.minimum(a + 1, last)] != 0x2E)))):
            return None  # ".5" or a leading zero
        frac += digit & (dots > 0)
        dots += dot
        num = np.where(digit, num * 10 + d, num)
        prev_dot = np.where(on, dot, prev_dot)
    if bool(np.any(dots > 1)) or bool(np.any(prev_dot)) or bool(np.any((dots == 1) & (frac == 0))):
        return None  # "1.2.3", "5."
    if int(num.max()) >= 2**53:
        return None
    return num.astype(np.float64) / (10.0 ** frac)


_WORDS = 3  # names up to 24 bytes are grouped by their words; longer ones through a byte matrix


def _names(buf: np.ndarray, w64: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """(index of each row's name in `distinct`, distinct names) of the strings buf[a:b]: rows are
    grouped by a 64-bit hash of their name's (up to 3) 8-byte words and length, then every row is
    checked against its group's first row word for word (exact: a collision takes the slow way)."""
    ln = b - a
    if int(ln.max()) > 8 * _WORDS:
        uniq, inv = np.unique(_strings(buf, a, b), return_inverse=True)
        return inv.reshape(-1), uniq.tolist()
    keys = [ln.astype(np.uint64)]
    for j in range(_WORDS):
        word = w64[np.minimum(a + 8 * j, buf.size - 1)]
        left = np.clip(ln - 8 * j, 0, 8).astype(np.uint64)
        mask = np.where(left >= 8, np.uint64(0xFFFFFFFFFFFFFFFF),
                        (np.uint64(1) << (left * np.uint64(8))) - np.uint64(1))
        keys.append(word & mask)
    with np.errstate(over="ignore"):
        h = keys[0] * np.uint64(0x9E3779B97F4A7C15)
        for j, col in enumerate(keys[1:]):
            h = (h ^ col) * np.uint64(0xBF58476D1CE4E5B9 + 2 * j)
    if bool(np.all(h == h[0])):  # one name in the block (a category, a one-client file): no sort
        first, inv = np.zeros(1, dtype=np.int64), np.zeros(h.size, dtype=np.int64)
    else:
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    rep = first[inv]
    if not all(bool(np.all(col == col[rep])) for col in keys):  # a hash collision: group by bytes
        uniq, inv2 = np.unique(_strings(buf, a, b), return_inverse=True)
        return inv2.reshape(-1), uniq.tolist()
    distinct = [bytes(buf[int(a[i]):int(b[i])]) for i in first.tolist()]
    return inv.reshape(-1), distinct


def _strings(buf: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """buf[a:b] of every row as a numpy bytes array (names here hold no NUL: controls were refused)."""
    m = _matrix(buf, a, b - a, 0)
    return m.view(f"S{m.shape[1]}").reshape(-1)
