"""Exact prompt lengths and deliberate caching against real llama.cpp (`servegen-load run`).

- completions with token-id prompts: server-reported prompt and completion tokens equal the
  intended ones exactly (llama.cpp adds no BOS to id prompts; lengths forced with ignore_eos);
- chat: the GGUF carries its own vocabulary and there is no HF tokenizer directory for it, so
  text is calibrated through llama.cpp's `POST /tokenize` (one-token words) plus usage probes
  for the chat template (about 33 tokens on this model): within 1% (exact in practice);
- unique prompts (a nonce first) show no cached tokens on completions; on chat only the
  template's fixed opening (`<|im_start|>user\\n` + the lead word) can be shared;
- shared prefix blocks show cached tokens on the requests that repeat them.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from real_servers import InferenceServer

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, reqs: list[dict[str, Any]]) -> Path:
    head = {"format": "servegen-load/requests/v1", "seed": 0}
    path.write_text("\n".join(json.dumps(x) for x in [head, *reqs]) + "\n")
    return path


def run(server: InferenceServer, reqs: Path, out: Path, api: str, *extra: str) -> list[dict[str, Any]]:
    p = subprocess.run([sys.executable, "-m", "servegen_load.cli", "run", str(reqs), "-o", str(out),
                        "--endpoint", server.url, "--model", server.model, "--server-family", server.family,
                        "--api", api, "--progress", "off", *extra],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = out.read_text().splitlines()
    rows = [json.loads(x) for x in lines[1:]]
    assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    rows.sort(key=lambda r: r["scheduled"])
    return [json.loads(lines[0]), *rows]


def unique_requests(seed: int, n: int, lo: int, hi: int) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    return [{"id": f"u{i}", "t": 0.06 * i, "client": f"c{i % 2}", "category": "language",
             "input_tokens": rnd.randint(lo, hi), "output_tokens": rnd.randint(2, 12)} for i in range(n)]


def test_completions_token_ids_exact_and_uncached(llamacpp_server: InferenceServer, tmp_path: Path) -> None:
    head, *rows = run(llamacpp_server, write(tmp_path / "r.jsonl", unique_requests(1, 16, 1, 900)),
                      tmp_path / "o.jsonl", "completions")
    assert head["content"]["prompt_format"] == "ids"
    for r in rows:
        assert (r["prompt_tokens"], r["completion_tokens"]) == (r["input_tokens"], r["output_tokens"]), r
        # unique prompts: nothing for the prefix cache but, by chance, a first nonce token another
        # prompt also started with (1 in the nonce alphabet's size per pair; this run's salt is random)
        assert r["cached_tokens"] <= 2, r


def test_chat_calibrated_through_tokenize(llamacpp_server: InferenceServer, tmp_path: Path) -> None:
    head, *rows = run(llamacpp_server, write(tmp_path / "r.jsonl", unique_requests(2, 16, 60, 1200)),
                      tmp_path / "o.jsonl", "chat")
    tm = head["content"]["token_model"]
    assert tm["source"] == "server:/tokenize" and tm["tokens_per_word"] == 1.0
    assert tm["overhead"]["chat_user"] > 10  # the ChatML template, spelt out in this tiny vocabulary
    for r in rows:
        assert abs(r["prompt_tokens"] - r["input_tokens"]) <= 0.01 * r["input_tokens"], r
        assert r["completion_tokens"] == r["output_tokens"]
        # only the template's opening and the lead word are common to unique chat prompts
        assert r["cached_tokens"] <= 16, r


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_shared_prefix_is_cached(api: str, llamacpp_server: InferenceServer, tmp_path: Path) -> None:
    """llama.cpp caches per slot and gives a new request an idle slot, so requests go one at a time
    (`--max-concurrency 1`): each finds the slot that holds the shared prefix free."""
    rnd = random.Random(3)
    reqs = [{"id": f"p{i}", "t": 0.02 * i, "client": "c", "category": "language",
             "input_tokens": 600 + rnd.randint(0, 200), "output_tokens": 4, "prefix": [7]} for i in range(8)]
    _, *rows = run(llamacpp_server, write(tmp_path / "r.jsonl", reqs), tmp_path / "o.jsonl", api,
                   "--max-concurrency", "1")
    assert all(r["prompt_tokens"] == r["input_tokens"] for r in rows)
    hits = [r["cached_tokens"] for r in sorted(rows, key=lambda r: r["sent"])[1:]]
    assert all(h >= 512 for h in hits), hits  # the 512 shared tokens (one block id)
    # never past the shared prefix (plus, on chat, the template and lead words around it): the nonce
    # follows. Two nonces start with the same token by chance (1 in the nonce alphabet's size, and
    # this run's salt is random), so a hit may reach a token or two past the prefix, never further.
    assert all(h <= (512 + 2 if api == "completions" else 580) for h in hits), hits
