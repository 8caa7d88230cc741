"""The simulator's engine model on a virtual clock (no HTTP, no sleeping), presets and token rules."""

from __future__ import annotations

import base64
import itertools
import math
import random
import struct
import zlib

import pytest

from servegen_load.errors import InputError
from servegen_load.sim.engine import (
    EngineCore,
    PrefixCache,
    Sequence,
    analytic_saturation_rate,
    block_hashes,
    simulate,
)
from servegen_load.sim.presets import PRESETS, get_preset, with_overrides
from servegen_load.sim.tokens import (
    audio_seconds_for_tokens,
    audio_tokens,
    image_size_for_tokens,
    image_size_from_data_url,
    image_tokens,
    media_part_tokens,
    video_tokens,
    wav_seconds_from_base64,
)

TINY = get_preset("tiny-cpu")


def _throughput(params, lengths, rate: float, n: int = 2500, seed: int = 1) -> tuple[float, EngineCore]:
    """Completions per second over the middle 60 % of `n` Poisson arrivals at `rate`."""
    rng = random.Random(seed)
    t, arr = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        lp, lo = lengths(rng)
        arr.append((t, Sequence(lp, lo)))
    core = simulate(params, arr)
    fin = sorted(s.finished_at for _, s in arr)
    assert all(f > 0 for f in fin)
    a, b = n // 5, 4 * n // 5
    return (b - a) / (fin[b] - fin[a]), core


CASES = {
    "batch-limited": (with_overrides(TINY, {"max_num_seqs": 16}), 200, 50),
    "kv-limited": (with_overrides(TINY, {"kv_cache_tokens": 3000}), 200, 100),
    "prefill-budget-bound": (with_overrides(TINY, {"max_num_batched_tokens": 512, "prefill_token_s": 2e-5}), 2000, 4),
    "chunked-prefill": (with_overrides(TINY, {"max_num_seqs": 4, "max_num_batched_tokens": 256}), 1000, 100),
    "context-heavy": (with_overrides(TINY, {"max_num_seqs": 32, "context_token_s": 2e-7}), 1000, 100),
    "unified-kv (llama.cpp)": (with_overrides(TINY, {"max_num_seqs": 8, "batch_context_s": 5e-7}), 500, 50),
    "prefill-attention (CPU)": (with_overrides(TINY, {"max_num_seqs": 8, "prefill_attention_s": 2e-7}), 1500, 20),
    "shared-kv prefill (llama.cpp)": (with_overrides(TINY, {"max_num_seqs": 8, "prefill_attention_s": 2e-7,
                                                            "shared_kv": True}), 1500, 20),
    "llama3-8b-h100": (PRESETS["llama3-8b-h100"], 1000, 200),
    "qwen2.5-7b-a10g": (PRESETS["qwen2.5-7b-a10g"], 500, 300),
}


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_saturation_rate_matches_simulated_capacity(case: str) -> None:
    params, lp, lo = CASES[case]
    lam = analytic_saturation_rate(lp, lo, params)
    measured, core = _throughput(params, lambda rng: (lp, lo), rate=2.0 * lam)
    assert measured == pytest.approx(lam, rel=0.10)
    assert core.max_waiting > 100  # it really was saturated


def test_saturation_rate_with_varying_lengths_is_within_ten_percent() -> None:
    params = with_overrides(TINY, {"max_num_seqs": 32})

    def lengths(rng: random.Random) -> tuple[int, int]:
        return rng.randint(100, 900), max(1, int(rng.expovariate(1 / 80)))

    lam = analytic_saturation_rate(500, 80, params)
    measured, _ = _throughput(params, lengths, rate=2.0 * lam, n=4000)
    assert measured == pytest.approx(lam, rel=0.10)


def test_queue_stays_bounded_below_saturation_and_grows_above() -> None:
    params = with_overrides(TINY, {"max_num_seqs": 16})
    lam = analytic_saturation_rate(200, 50, params)
    _, below = _throughput(params, lambda rng: (200, 50), rate=0.8 * lam, n=2000)
    _, above = _throughput(params, lambda rng: (200, 50), rate=1.2 * lam, n=2000)
    assert below.max_waiting < 60
    assert above.max_waiting > 200


def test_time_scale_slows_everything_proportionally() -> None:
    base = PRESETS["llama3-8b-h100"]
    slow = base.scaled(2.0)
    assert slow.saturation_rate(1000, 200) == pytest.approx(base.saturation_rate(1000, 200) / 2)
    a, b = Sequence(500, 20), Sequence(500, 20)
    simulate(base, [(0.0, a)])
    simulate(slow, [(0.0, b)])
    assert b.finished_at == pytest.approx(2 * a.finished_at)


def test_ttft_grows_with_prompt_length_and_queue_position() -> None:
    ttft = []
    for lp in (10, 1000, 4000, 16000):
        s = Sequence(lp, 5)
        simulate(TINY, [(0.0, s)])
        ttft.append(s.first_token_at)
    assert ttft == sorted(ttft) and ttft[-1] > 5 * ttft[0]

    params = with_overrides(TINY, {"max_num_seqs": 2})
    seqs = [Sequence(50, 40) for _ in range(6)]
    simulate(params, [(i * 1e-6, s) for i, s in enumerate(seqs)])
    firsts = [s.first_token_at for s in seqs]
    assert firsts == sorted(firsts)  # FIFO
    # a queued request starts only after a running one has finished
    for i in range(2, 6):
        assert firsts[i] >= sorted(s.finished_at for s in seqs[:i])[i - 2]


def test_a_shared_kv_prompt_beside_decoding_sequences_pays_for_their_context() -> None:
    """llama.cpp's unified KV cache: a prompt's tokens attend over every sequence's cells. Alone,
    its prefill costs what it costs without a shared buffer; beside three sequences decoding
    contexts of 2,000 tokens and more, it pays a_q for each of their cells too."""
    own = with_overrides(TINY, {"prefill_attention_s": 5e-9, "max_num_batched_tokens": 4096})
    shared = with_overrides(own, {"shared_kv": True})
    ttft = {}
    for name, params in (("own", own), ("shared", shared)):
        alone = Sequence(1000, 5)
        simulate(params, [(0.0, alone)])
        busy = [Sequence(2000, 2000) for _ in range(3)]
        late = Sequence(1000, 5)
        simulate(params, [*((0.0, s) for s in busy), (0.5, late)])
        assert all(s.first_token_at < 0.5 < s.finished_at for s in busy)  # decoding when `late` arrives
        ttft[name] = (alone.first_token_at, late.first_token_at - 0.5)
    assert ttft["shared"][0] == pytest.approx(ttft["own"][0])
    extra = ttft["shared"][1] - ttft["own"][1]
    # their context when it arrives: 3 x (2000 prompt + the 100-400 tokens decoded by then), give
    # or take one 2 ms decode step (where the arrival falls in the step differs between the runs)
    assert 5e-9 * 1000 * 3 * 2100 - 0.0025 < extra < 5e-9 * 1000 * 3 * 2400 + 0.0025, extra


def test_kv_budget_serialises_requests_whose_footprints_do_not_fit_together() -> None:
    params = with_overrides(TINY, {"kv_cache_tokens": 300})
    seqs = [Sequence(100, 100) for _ in range(3)]
    core = simulate(params, [(0.0, s) for s in seqs])
    assert core.max_running == 1
    for a, b in itertools.pairwise(seqs):
        assert b.first_token_at > a.finished_at
    assert core.reject_reason(Sequence(250, 100)) is not None


def test_decodes_continue_while_a_long_prompt_is_prefilled_in_chunks() -> None:
    params = with_overrides(TINY, {"max_num_batched_tokens": 512, "prefill_token_s": 1e-4})
    short, long = Sequence(10, 40), Sequence(30_000, 5)
    core = simulate(params, [(0.0, short), (0.001, long)])
    # 30k tokens in 511-token chunks: 59 steps of ~51 ms, each also decoding one token of `short`,
    # which therefore finishes before the long prompt's first token instead of waiting ~3 s for it
    assert long.first_token_at > 59 * 511 * params.prefill_token_s
    assert short.finished_at < long.first_token_at
    assert core.steps < 59 + 40 + 5


def test_prefix_cache_hits_whole_blocks_and_evicts_lru() -> None:
    words = [f"w{i}" for i in range(200)]
    h = block_hashes(words, 16)
    assert len(h) == 12
    assert block_hashes(["x", *words[1:]], 16)[0] != h[0]
    assert block_hashes([*words[:100], "other", *words[101:]], 16)[:6] == h[:6]
    a, b = Sequence(200, 2, h), Sequence(200, 2, h)
    core = simulate(TINY, [(0.0, a), (1.0, b)])
    assert (a.cached_tokens, b.cached_tokens) == (0, 192)
    assert b.first_token_at - 1.0 < a.first_token_at
    assert core.cached_tokens == 192
    lru = PrefixCache(2)
    lru.insert([1, 2])
    lru.lookup([1])
    lru.insert([3])
    assert lru.lookup([1]) == 1 and lru.lookup([2]) == 0


def test_presets_overrides_and_validation() -> None:
    for name, p in PRESETS.items():
        assert p.max_num_batched_tokens >= p.max_num_seqs, name
        assert 0 < p.saturation_rate(1000, 200) < 1000, name
    h100 = PRESETS["llama3-8b-h100"]
    assert 0.008 <= h100.step_base_s + 8 * h100.decode_seq_s <= 0.012  # small-batch decode step
    assert 10_000 <= 1 / h100.prefill_token_s <= 20_000
    p = with_overrides(TINY, {"max_num_seqs": "8", "step_base_s": "0.01"})
    assert (p.max_num_seqs, p.step_base_s) == (8, 0.01)
    for bad in ({"nope": "1"}, {"max_num_seqs": "1.5"}, {"step_base_s": "-1"}, {"max_num_batched_tokens": "4"}):
        with pytest.raises(InputError):
            with_overrides(TINY, bad)
    with pytest.raises(InputError):
        get_preset("no-such-gpu")


def test_preset_from_yaml(tmp_path) -> None:
    f = tmp_path / "gpu.yaml"
    f.write_text("base: tiny-cpu\nmax_num_seqs: 7\nstep_base_s: 0.004\n")
    p = get_preset(str(f))
    assert (p.max_num_seqs, p.step_base_s, p.model) == (7, 0.004, TINY.model)


# --- token rules ---------------------------------------------------------------------------


def png_bytes(w: int, h: int) -> bytes:
    """A valid PNG of w x h grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def jpeg_header(w: int, h: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"\x00" * 5000  # a large segment before SOF
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + exif + sof + b"\xff\xd9"


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    data = b"\x00\x00" * int(seconds * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"LIST" + struct.pack("<I", 4) + b"INFO"
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def data_url(mime: str, raw: bytes) -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def test_token_rules() -> None:
    assert image_tokens(28, 28) == 1 and image_tokens(29, 28) == 2 and image_tokens(1000, 700) == 36 * 25
    assert audio_tokens(1.0) == 25 and audio_tokens(0.01) == 1 and audio_tokens(2.5) == 63
    assert video_tokens(3, 56, 56) == 2 * 4
    for n in (1, 7, 12, 97, 1024):
        assert image_tokens(*image_size_for_tokens(n)) == n
        assert audio_tokens(audio_seconds_for_tokens(n)) == n
    assert image_size_from_data_url(data_url("image/png", png_bytes(57, 30))) == (57, 30)
    assert image_size_from_data_url(data_url("image/jpeg", jpeg_header(640, 480))) == (640, 480)
    assert math.isclose(wav_seconds_from_base64(base64.b64encode(wav_bytes(2.0)).decode()), 2.0)
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(1.2)).decode(), "format": "wav"}}
    assert media_part_tokens(part)[:2] == ("audio", 30)
    vid = {"type": "video_url", "video_url": {"url": "http://x/v.mp4", "servegen": {"frames": 8, "width": 280,
                                                                                   "height": 280}}}
    assert media_part_tokens(vid)[:2] == ("video", 400)
    img = {"type": "image_url", "image_url": {"url": "http://x/i.png", "servegen": {"tokens": 77}}}
    assert media_part_tokens(img)[:2] == ("image", 77)
