"""`Target`: where a run's requests go and how their bodies are built, resolved once from a spec.

Resolving means: start the embedded simulator when there is no `--endpoint`, check the endpoint
answers at all (a refused connection is named as such, with the URL, before anything else is
said about it), ask it for its model when `--model` is not given, read the API key, and learn
the token model (`content.tokenizer`: a local tokenizer, the server's `/tokenize`, or one token
per word) with the run's one content salt. Local runs, each `--workers` child, each Ray actor and
`plan` call `resolve_target`, so they all build bodies the same way; a scaled-out parent calls it
first and hands its children a spec with the endpoint, model, family and salt filled in
(`pinned_spec`), so children never start a second simulator or draw a second salt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..content.payload import PayloadOptions
from ..dispatch.endpoint import Endpoint, discover_model, load_api_key, scrub
from ..errors import InputError
from .spec import RunSpec


@dataclass(frozen=True)
class Target:
    """A resolved endpoint: URL, model, family, key (never printed), and the body builder's options."""

    endpoint: str
    model: str
    family: str
    api: str
    api_key: str | None = field(repr=False)
    insecure: bool
    payload: PayloadOptions
    content: dict[str, Any]  # the results header's `content` entry (prompt format, token model)
    salt: str


def api_key_of(spec: RunSpec) -> str | None:
    return load_api_key(Path(spec.api_key_file) if spec.api_key_file else None)


def redact(url: str) -> str:
    """A URL without user:password (for headers naming the run)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL ("Invalid IPv6 URL"): whatever userinfo it holds, masked
        from ..dispatch.endpoint import redact_url

        return redact_url(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_reachable(url: str, timeout: float) -> None:
    """One TCP connection to the endpoint: a dead server is named here, not as a model-listing error."""
    ep = Endpoint.parse(url)
    try:
        with socket.create_connection((ep.host, ep.port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        raise InputError(f"connection refused at {redact(url)}: is the server running?", field="--endpoint") from None
    except socket.gaierror as e:
        raise InputError(f"cannot resolve {ep.host!r} ({e.strerror})", field="--endpoint") from None
    except TimeoutError:
        raise InputError(f"no answer from {redact(url)} within {timeout:g} s (--timeout-connect)",
                         field="--endpoint") from None
    except OSError as e:
        raise InputError(f"cannot connect to {redact(url)} ({e.strerror or e})", field="--endpoint") from None


def start_simulator(spec: RunSpec, stack: contextlib.ExitStack, note: str = "") -> str:
    """Start the embedded simulator for this run (stopped when `stack` closes); its base URL."""
    try:
        from ..sim.process import SimProcess
    except ImportError:
        raise InputError("no --endpoint given and the embedded simulator is not available") from None
    sim = stack.enter_context(SimProcess(spec.sim_preset) if spec.sim_preset else SimProcess())
    print(f"servegen-load: no --endpoint: started the embedded simulator at {sim.url}{note}", file=sys.stderr)
    return str(sim.url)


def resolve_target(spec: RunSpec, stack: contextlib.ExitStack, *, note: str = "",
                   api_key: str | None = None) -> Target:
    """The run's target (see the module docstring); the simulator, if started, lives as long as `stack`.
    `api_key`: the key a driver passed in memory (a Ray actor's node has no key file)."""
    import asyncio

    api_key = api_key if api_key is not None else api_key_of(spec)
    endpoint = spec.endpoint if spec.endpoint is not None else start_simulator(spec, stack, note)
    check_reachable(endpoint, spec.timeout_connect)
    model = spec.model
    if model is None:
        ep = dataclasses.replace(Endpoint.parse(endpoint), verify=not spec.insecure)
        model = asyncio.run(discover_model(ep, api_key))
    salt = spec.content_salt or os.urandom(8).hex()
    payload, header = payload_for(spec, endpoint, model, api_key, salt)
    return Target(endpoint=endpoint, model=model, family=spec.family, api=spec.api, api_key=api_key,
                  insecure=spec.insecure, payload=payload, content=header, salt=salt)


def payload_for(spec: RunSpec, endpoint: str, model: str, api_key: str | None,
                salt: str) -> tuple[PayloadOptions, dict[str, Any]]:
    """(PayloadOptions, the results header's `content`): the token model learned once, here."""
    from ..content.payload import Content
    from ..content.tokenizer import learn_token_model

    tm = learn_token_model(tokenizer=spec.tokenizer, endpoint=endpoint, api=spec.api, family=spec.family,
                           model=model, api_key=api_key, prompt_format=spec.prompt_format, insecure=spec.insecure,
                           log=lambda s: print(s, file=sys.stderr))
    content = Content(tm, salt=bytes.fromhex(salt), block_tokens=spec.prefix_block, image_patch=spec.image_patch)
    for note in tm.notes:
        print(f"servegen-load: note: {note}", file=sys.stderr)
    ids = Content.ids_for(spec.api, spec.family, spec.prompt_format)
    header = {"prompt_format": "ids" if ids else "text", "image_patch": spec.image_patch,
              "prefix_block": spec.prefix_block, "token_model": tm.describe()}
    return PayloadOptions(server_family=spec.family, prompt_format=spec.prompt_format, content=content), header


def pinned_spec(spec: RunSpec, target: Target) -> RunSpec:
    """What every shard of a scaled-out run receives: the parent's spec with the resolved endpoint,
    model, family and salt filled in, and the scale-out options removed (a shard is a local run)."""
    return spec.replace(endpoint=target.endpoint, model=target.model, server_family=target.family,
                        content_salt=target.salt, sim_preset=None, workers=None, ray=None, progress="off",
                        summary_json=None, slo=())


def safe_argv(argv: list[str], key: str | None) -> list[str]:
    """The command line as given, with the API key and URL credentials removed."""
    return [redact(scrub(a, key)) if "://" in a else scrub(a, key) for a in argv]


def target_for(endpoint: str, model: str, family: str, api: str, api_key: str | None, *,
               tokenizer: str | None = None, prompt_format: str = "auto", insecure: bool = False,
               prefix_block: int = 512) -> Target:
    """A target for an endpoint and model already known (`plan`'s steps, `calibrate`'s probes): the
    same token model and body options `run` would use with these options."""
    spec = RunSpec.build(source="-", output="-", endpoint=endpoint, model=model, api=api, server_family=family,
                         tokenizer=tokenizer, prompt_format=prompt_format, insecure=insecure,
                         prefix_block=prefix_block)
    salt = os.urandom(8).hex()
    payload, header = payload_for(spec, endpoint, model, api_key, salt)
    return Target(endpoint=endpoint, model=model, family=spec.family, api=api, api_key=api_key, insecure=insecure,
                  payload=payload, content=header, salt=salt)


def fresh_payload(p: PayloadOptions) -> PayloadOptions:
    """The same options with fresh per-run state (session histories, media cache), the token model
    and salt kept: one per run of a series (`plan`'s steps)."""
    from ..content.payload import Content

    c = p.content
    if c is None:
        return p
    return dataclasses.replace(p, content=Content(c.model, salt=c.salt, block_tokens=c.block_tokens,
                                                  image_patch=c.media.patch))
