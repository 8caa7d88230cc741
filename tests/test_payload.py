"""Request bodies: exact token counts (the simulator's parser is the oracle), nonces, prefix blocks,
session histories, token-id prompts, template overheads, family fields, and word calibration."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from test_dispatch_fixtures import serving

from servegen_load.content.payload import Content, PayloadOptions, build_body, intended_prompt_tokens
from servegen_load.content.prompts import TokenModel, approx_model
from servegen_load.content.tokenizer import calibrate_words, learn_token_model
from servegen_load.requests import Request
from servegen_load.sim.presets import get_preset
from servegen_load.sim.protocol import parse_chat, parse_completion

PARAMS = get_preset("tiny-cpu")


def req(rid: str, n: int, out: int = 8, **kw: Any) -> Request:
    return Request(rid, 0.0, "c", "language", n, out, **kw)


def sim_tokens(body: bytes, api: str) -> int:
    """What the simulator counts: one token per word or id, media by their headers/hints."""
    parse = parse_chat if api == "chat" else parse_completion
    return parse(orjson.loads(body), body, PARAMS, 0).prompt_tokens


@pytest.mark.parametrize("api", ["chat", "completions"])
@pytest.mark.parametrize("fmt", ["auto", "text"])
def test_lengths_exact_on_the_simulator(api: str, fmt: str) -> None:
    c = Content()
    opts = PayloadOptions("sim", prompt_format=fmt, content=c)
    ids = c.ids_for(api, "sim", fmt)
    floor = c.lex.ids.nonce_len if ids else 1 + c.lex.text.nonce_len  # lead word + nonce
    for n in (1, 2, 7, 30, 513, 4000):
        assert sim_tokens(build_body(req(f"r{n}", n), api, "m", opts), api) == max(n, floor)


def test_ids_on_completions_only_where_the_family_takes_them() -> None:
    r = req("a", 40)
    for fam, fmt, want_ids in (("sim", "auto", True), ("llamacpp", "auto", True), ("vllm", "auto", True),
                               ("openai", "auto", False), ("vllm", "text", False), ("openai", "ids", True)):
        body = orjson.loads(build_body(r, "completions", "m", PayloadOptions(fam, prompt_format=fmt, content=Content())))
        assert isinstance(body["prompt"], list) is want_ids, (fam, fmt)
        if want_ids:
            assert len(body["prompt"]) == 40 and all(isinstance(i, int) for i in body["prompt"])
    chat = orjson.loads(build_body(r, "chat", "m", PayloadOptions("vllm", prompt_format="ids", content=Content())))
    assert isinstance(chat["messages"][0]["content"], str)


def test_ids_come_from_the_model_vocabulary() -> None:
    tm = TokenModel(words=("a", "b", "c", "d"), ids=(11, 12, 13, 14, 15))
    body = orjson.loads(build_body(req("a", 300, prefix=[3]), "completions", "m",
                                   PayloadOptions("vllm", content=Content(tm))))
    assert len(body["prompt"]) == 300 and set(body["prompt"]) <= {11, 12, 13, 14, 15}


def test_unique_prompts_by_default_and_per_run_salt() -> None:
    c = Content()
    opts = PayloadOptions("sim", content=c)
    a = orjson.loads(build_body(req("a", 100), "completions", "m", opts))["prompt"]
    b = orjson.loads(build_body(req("b", 100), "completions", "m", opts))["prompt"]
    assert a[:c.lex.ids.nonce_len] != b[:c.lex.ids.nonce_len]  # differ from the first tokens on
    a2 = orjson.loads(build_body(req("a", 100), "completions", "m", opts))["prompt"]
    assert a == a2  # deterministic within a run
    other = orjson.loads(build_body(req("a", 100), "completions", "m", PayloadOptions("sim", content=Content())))
    assert other["prompt"] != a  # another run (salt) never reuses an earlier run's cache


def test_shared_prefix_blocks_then_nonce() -> None:
    c = Content(salt=b"12345678")
    opts = PayloadOptions("sim", content=c)
    bodies = [orjson.loads(build_body(req(f"r{i}", 700, prefix=[5, 6], extra={"prefix_tokens": 600}),
                                      "completions", "m", opts))["prompt"] for i in range(3)]
    assert bodies[0][:600] == bodies[1][:600] == bodies[2][:600]  # identical blocks -> identical tokens
    assert bodies[0][600:610] != bodies[1][600:610]  # the nonce right after the shared prefix
    other = orjson.loads(build_body(req("z", 700, prefix=[5, 7], extra={"prefix_tokens": 600}),
                                    "completions", "m", opts))["prompt"]
    assert other[:512] == bodies[0][:512] and other[512:600] != bodies[0][512:600]  # block 5 shared, 7 not
    chat = orjson.loads(build_body(req("s", 900, prefix=[5, 6], extra={"prefix_tokens": 600}), "chat", "m", opts))
    assert chat["messages"][0]["role"] == "system" and len(chat["messages"][0]["content"].split()) == 601
    assert sim_tokens(orjson.dumps(chat), "chat") == 900
    # a prefix longer than the prompt: as much as fits, the nonce still inside the prompt
    short = build_body(req("q", 100, prefix=[5, 6]), "chat", "m", opts)
    assert sim_tokens(short, "chat") == 100


def test_chat_template_overhead_is_subtracted() -> None:
    tm = TokenModel(words=approx_model().words, ids=approx_model().ids, chat_user=12, chat_system=5, chat_pair=9,
                    text=1)
    c = Content(tm)
    opts = PayloadOptions("vllm", content=c)
    body = orjson.loads(build_body(req("a", 100), "chat", "m", opts))
    assert len(body["messages"][0]["content"].split()) == 100 - 12
    sys_ = orjson.loads(build_body(req("b", 100, prefix=[1], extra={"prefix_tokens": 30}), "chat", "m", opts))
    words = sum(len(m["content"].split()) for m in sys_["messages"])
    assert words == 100 - 12 - 5
    text = orjson.loads(build_body(req("c", 100), "completions", "m", PayloadOptions("vllm", prompt_format="text",
                                                                                     content=c)))
    assert len(text["prompt"].split()) == 99  # BOS


def test_session_history_grows_and_is_a_shared_prefix() -> None:
    c = Content()
    opts = PayloadOptions("sim", content=c)
    t0 = build_body(req("s", 120, 30, session="s", turn=0), "chat", "m", opts)
    t1 = build_body(req("s/1", 120 + 30 + 50, 20, session="s", turn=1, think_time=1.0), "chat", "m", opts)
    t2 = build_body(req("s/2", 200 + 20 + 40, 10, session="s", turn=2), "chat", "m", opts)
    assert [sim_tokens(b, "chat") for b in (t0, t1, t2)] == [120, 200, 260]
    m0, m1, m2 = (orjson.loads(b)["messages"] for b in (t0, t1, t2))
    assert [m["role"] for m in m2] == ["user", "assistant", "user", "assistant", "user"]
    assert m1[0] == m0[0] and m2[:3] == m1[:3]  # the history is byte-identical: a cached prefix
    assert len(m1[1]["content"].split()) == 1 + 30  # the assistant turn: lead + the answer's tokens
    # completions: concatenated ids, each turn's prompt a prefix of the next one's
    p0 = orjson.loads(build_body(req("u", 80, 16, session="u", turn=0), "completions", "m", opts))["prompt"]
    p1 = orjson.loads(build_body(req("u/1", 80 + 16 + 24, 8, session="u", turn=1), "completions", "m",
                                 opts))["prompt"]
    assert len(p0) == 80 and len(p1) == 120 and p1[:80] == p0


def test_a_history_of_answers_carries_no_reasoning() -> None:
    """`history: answers` (a reasoning model's log): the next prompt holds the previous prompt and
    its visible answer, 30 - 20 reasoning tokens, not the whole output."""
    opts = PayloadOptions("sim", content=Content())
    a = {"history": "answers"}
    t0 = build_body(req("s", 120, 30, session="s", turn=0, reason_tokens=20, extra=a), "chat", "m", opts)
    t1 = build_body(req("s/1", 120 + 10 + 50, 20, session="s", turn=1, reason_tokens=15, extra=a), "chat", "m", opts)
    assert [sim_tokens(b, "chat") for b in (t0, t1)] == [120, 180]
    m0, m1 = (orjson.loads(b)["messages"] for b in (t0, t1))
    assert m1[0] == m0[0] and len(m1[1]["content"].split()) == 1 + 10  # lead + the answer without reasoning


def test_multimodal_parts_cost_their_tokens() -> None:
    c = Content()
    r = req("m", 50, images=[1000, 64, 7], audio=[25, 3], video=[400])
    body = build_body(r, "chat", "m", PayloadOptions("sim", content=c))
    assert sim_tokens(body, "chat") == intended_prompt_tokens(r) == 50 + 1071 + 28 + 400
    parts = orjson.loads(body)["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "image_url", "image_url", "input_audio",
                                          "input_audio", "video_url"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[-1]["video_url"]["url"].startswith("data:video/jpeg;base64,")
    assert "servegen" in parts[-1]["video_url"]  # the simulator's hint...
    vllm = orjson.loads(build_body(r, "chat", "m", PayloadOptions("vllm", content=c)))
    assert "servegen" not in vllm["messages"][0]["content"][-1]["video_url"]  # ...never sent to others
    # each request's items are unique (no encoder-cache reuse across requests), a session's are stable
    other = orjson.loads(build_body(req("n", 50, images=[1000]), "chat", "m", PayloadOptions("sim", content=c)))
    assert other["messages"][0]["content"][1]["image_url"]["url"] != parts[1]["image_url"]["url"]
    # completions carry no media: their tokens are sent as text
    comp = build_body(r, "completions", "m", PayloadOptions("sim", content=c))
    assert sim_tokens(comp, "completions") == intended_prompt_tokens(r)


def test_family_fields() -> None:
    r = req("a", 10, 33, reason_tokens=20)
    sim = orjson.loads(build_body(r, "chat", "m", PayloadOptions("sim", content=Content())))
    assert (sim["max_tokens"], sim["min_tokens"], sim["ignore_eos"], sim["x_reason_tokens"]) == (33, 33, True, 20)
    assert sim["stream"] is True and sim["stream_options"] == {"include_usage": True}
    oa = orjson.loads(build_body(r, "chat", "m", PayloadOptions("openai", content=Content())))
    assert oa["max_completion_tokens"] == 33 and "ignore_eos" not in oa and "x_reason_tokens" not in oa
    ex = orjson.loads(build_body(r, "chat", "m", PayloadOptions("vllm", extra={"temperature": 0.5}, content=Content())))
    assert ex["temperature"] == 0.5 and "x_reason_tokens" not in ex


def test_calibration_keeps_one_token_words() -> None:
    """A fake tokenizer: words of up to 2 letters are one token, longer ones two, plus a BOS."""
    def tok(texts: list[str]) -> list[list[int]]:
        out = []
        for t in texts:
            ids = [1]
            for w in t.split():
                ids += [100 + len(w) * 7 + ord(w[0])] * (1 if len(w) <= 2 else 2)
            out.append(ids)
        return out

    tm = calibrate_words(tok, "fake")
    assert tm.words and all(len(w) <= 2 for w in tm.words) and tm.tokens_per_word == 1.0
    assert 1 not in tm.ids and len(set(tm.ids)) == len(tm.ids)


def test_calibration_falls_back_when_few_words_are_one_token() -> None:
    tm = calibrate_words(lambda texts: [[7] * (2 * len(t.split())) for t in texts], "fake")
    assert tm.tokens_per_word == pytest.approx(2.0) and tm.notes


def test_local_tokenizer_directory(tmp_path: Any) -> None:
    """An HF tokenizer.json (WordLevel, built here) read with the optional `tokenizers` package."""
    tokenizers = pytest.importorskip("tokenizers")
    from servegen_load.content.tokenizer import CANDIDATES, local_tokenizer

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(CANDIDATES)}}
    t = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    t.save(str(tmp_path / "tokenizer.json"))
    tm = calibrate_words(local_tokenizer(str(tmp_path)), f"tokenizer:{tmp_path}")
    assert tm.words == CANDIDATES and tm.ids == tuple(vocab[w] for w in CANDIDATES)


@pytest.mark.parametrize("counted", [0, 60_000])
def test_an_overhead_probe_count_no_template_explains_is_not_believed(counted: int) -> None:
    """A server counting 0 (or 60,000) prompt tokens for a 64-word probe: overheads of -64 and
    +59,936 were taken, padding every prompt of the run by 64 words or clipping it to its nonce."""
    body = (b'data: {"choices":[{"index":0,"text":"x","finish_reason":"length"}],"usage":{"prompt_tokens":%d,'
            b'"completion_tokens":1}}\n\ndata: [DONE]\n\n' % counted)
    with serving(lambda _auth: (200, "text/event-stream", body)) as url:
        tm = learn_token_model(tokenizer="words", endpoint=f"{url}/v1", api="completions", family="openai",
                               model="m", api_key=None)
    assert tm.text == 0 and any("not believed" in n for n in tm.notes), tm
