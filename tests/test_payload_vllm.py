"""Exact prompt lengths against real vLLM (CPU), with the model's own HF tokenizer read locally.

The tiny HF model of the vLLM fixture ships tokenizer.json and a chat template, so chat text is
built with `--tokenizer DIR` (the optional `tokenizers` package) and the template overhead is
probed once through usage; completions send token ids (exact, no BOS).
"""

from __future__ import annotations

import pytest
from real_servers import InferenceServer
from test_content_llamacpp import run, unique_requests, write


@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_vllm_chat_with_local_tokenizer_and_ids(vllm_server: InferenceServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("tokenizers")
    assert vllm_server.tokenizer_dir is not None
    head, *rows = run(vllm_server, write(tmp_path / "c.jsonl", unique_requests(5, 12, 80, 1500)),
                      tmp_path / "c-out.jsonl", "chat", "--tokenizer", str(vllm_server.tokenizer_dir))
    assert head["content"]["token_model"]["source"].startswith("tokenizer:")
    for r in rows:
        assert abs(r["prompt_tokens"] - r["input_tokens"]) <= 0.01 * r["input_tokens"], r
        assert r["completion_tokens"] == r["output_tokens"]
    _, *rows = run(vllm_server, write(tmp_path / "i.jsonl", unique_requests(6, 12, 1, 1500)),
                   tmp_path / "i-out.jsonl", "completions")
    for r in rows:
        assert (r["prompt_tokens"], r["completion_tokens"]) == (r["input_tokens"], r["output_tokens"]), r
