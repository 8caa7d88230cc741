"""`build_body` splices a per-request prompt between constant bytes encoded once per run; the
bytes must be exactly those of encoding the whole body dict with orjson (the old, obvious path),
for every family, API, prompt format, `extra`, length, session turn and media mix."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from servegen_load.content.payload import FAMILIES, Content, PayloadOptions, build_body
from servegen_load.requests import Request

_PLACEHOLDER = re.compile(rb'"@sg-[a-z]+-?[0-9]*@"')


def reference_body(r: Request, api: str, model: str, o: PayloadOptions) -> bytes:
    """The straightforward encoding: one dict, one `orjson.dumps`, big strings spliced after."""
    family = FAMILIES[o.server_family]
    content = o.content
    assert content is not None
    n_out = max(1, r.output_tokens)
    ids = content.ids_for(api, o.server_family, o.prompt_format)
    st, _ = content.plan(r, api, ids)
    splices: dict[bytes, bytes] = {}
    body: dict[str, Any] = {"model": model}
    if api == "chat":
        body["messages"] = content.messages(st, o.server_family, splices)
    elif ids:
        body["prompt"] = "@sg-prompt@"
        splices[b'"@sg-prompt@"'] = b"[" + content.prompt(st, True).encode() + b"]"
    else:
        body["prompt"] = content.prompt(st, False)
    if family.get("max_completion_tokens") and api == "chat":
        body["max_completion_tokens"] = n_out
    else:
        body["max_tokens"] = n_out
    if family.get("ignore_eos"):
        body["ignore_eos"] = True
    if family.get("min_tokens"):
        body["min_tokens"] = n_out
    if family.get("x_reason_tokens") and r.reason_tokens:
        body["x_reason_tokens"] = r.reason_tokens
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    body.update(o.extra)
    raw = orjson.dumps(body)
    return _PLACEHOLDER.sub(lambda m: splices[m.group(0)], raw) if splices else raw


def workload() -> list[Request]:
    out: list[Request] = []
    for i in range(12):
        kw: dict[str, Any] = {}
        if i % 3 == 1:
            kw["reason_tokens"] = i
        if i % 4 == 2:
            kw["prefix"] = [7, 8]
        out.append(Request(f"r{i}", i * 0.1, "c", "language", 40 + 13 * i, [0, 1, 5, 300][i % 4], **kw))
    for turn in range(3):  # a session: history in the later turns
        out.append(Request(f"s{turn}", 2.0 + turn, "c", "chat", 60 + 40 * turn, 6, session="sess", turn=turn))
    out.append(Request("m0", 3.0, "c", "mm", 50, 4, images=[64], audio=[30], video=[40]))
    return out


EXTRAS: list[dict[str, Any]] = [
    {},
    {"temperature": 0.5, "seed": 3},
    {"max_tokens": 7, "stream": False},          # replaces fields in place (dict order kept)
    {"prompt": "x", "messages": []},             # replaces the prompt itself: the generic path
    {"user": "@sg-slot@"},                       # a marker in `extra`: the generic path
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("fmt", ["auto", "text"])
def test_spliced_body_equals_whole_dict_encoding(family: str, api: str, fmt: str) -> None:
    for k, extra in enumerate(EXTRAS):
        salt = b"splice%02d" % k
        fast = PayloadOptions(server_family=family, extra=extra, prompt_format=fmt, content=Content(salt=salt))
        ref = PayloadOptions(server_family=family, extra=extra, prompt_format=fmt, content=Content(salt=salt))
        again = Request("again", 9.0, "c", "language", 33, 300, reason_tokens=2)
        # the last one repeats lengths seen before: the cached constant parts are reused
        for r in [*workload(), again]:
            try:
                want = reference_body(r, api, "m\"odel/é", ref)
            except KeyError:  # a marker in `extra` and a splice: the old path failed, so does this
                with pytest.raises(KeyError):
                    build_body(r, api, "m\"odel/é", fast)  # type: ignore[arg-type]
                continue
            got = build_body(r, api, "m\"odel/é", fast)  # type: ignore[arg-type]
            assert got == want, (family, api, fmt, extra, r.id)
        shape = fast.content.shape  # type: ignore[union-attr]
        assert shape is not None and (shape.head is None) == (k >= 3)  # which path was compared


def test_a_new_model_or_options_is_not_served_stale_bytes() -> None:
    c = Content(salt=b"x" * 8)
    r = Request("a", 0.0, "c", "language", 20, 5)
    a = build_body(r, "completions", "one", PayloadOptions(content=c))
    b = build_body(r, "completions", "two", PayloadOptions(content=c))
    d = build_body(r, "completions", "two", PayloadOptions(content=c, extra={"temperature": 0}))
    assert orjson.loads(a)["model"] == "one" and orjson.loads(b)["model"] == "two"
    assert orjson.loads(d)["temperature"] == 0 and "temperature" not in orjson.loads(b)


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize("ids", [True, False])
def test_single_request_plan_matches_the_general_arithmetic(api: str, ids: bool) -> None:
    """`plan`'s shortcut for a request without session, prefix or media decides the same words as the
    general path (reached here through a session turn sent without its history)."""
    from servegen_load.content.prompts import TokenModel, approx_model

    base = approx_model()
    model = TokenModel(words=base.words, ids=base.ids, source="test", text=2, ids_overhead=1, chat_user=5,
                       chat_system=4, chat_pair=3)
    c = Content(model, salt=b"p" * 8)
    for n in (0, 1, 3, 10, 77, 500):
        for out in (0, 1, 9):
            fast, _ = c.plan(Request("a", 0.0, "c", "x", n, out), api, ids)
            slow, _ = c.plan(Request("a", 0.0, "c", "x", n, out, session="s", turn=3,
                                     extra={"history": "excluded"}), api, ids)
            assert (fast.turns, fast.prefix_tokens, fast.key) == (slow.turns, slow.prefix_tokens, slow.key)


@pytest.mark.parametrize("ids", [True, False])
def test_single_turn_prompt_is_the_joined_parts(ids: bool) -> None:
    """`prompt`'s one-turn shortcut: lead (text only), nonce, filler, joined like the general loop."""
    c = Content(salt=b"q" * 8)
    lex = c.lex.ids if ids else c.lex.text
    for n in (0, 1, 2, 9, 300):
        st, _ = c.plan(Request(f"k{n}", 0.0, "c", "x", n, 3), "completions", ids)
        w = st.turns[0].user_words
        parts = ([] if ids else [c.model.lead]) + [lex.nonce(st.key)] + ([lex.filler(w)] if w else [])
        assert c.prompt(st, ids) == lex.sep.join(parts)
