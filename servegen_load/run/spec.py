"""`RunSpec`: every option of one `run`, validated once, the same object for every way of running.

Why one model: a run's options used to exist in six shapes (typer parameters, keyword arguments,
a dict through the workers, a hand-rebuilt argv, a Ray config dict, the engine's config) and one
option added meant six edits; under `--ray` five content options were silently dropped. Now the
CLI builds a `RunSpec` (and a scenario's `slo:` section adds to it), local runs, `--workers`
children and Ray actors all receive a `RunSpec`, and the engine's `RunConfig` is made from one in
one place (`run.local`). A spec is a frozen pydantic model: equal specs compare equal, it pickles
for Ray, and `to_argv` writes it back as the `run` command line a worker process parses into an
equal spec (`tests/test_run_spec.py` checks the round trip for every field).

Validation errors name the command-line flag (`--max-concurrency: expected at least 1`), since
that is what the user typed; `InputError` and exit code 2 as everywhere else.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..content.payload import FAMILIES
from ..dispatch.limits import MAX_EVENT_BYTES, MAX_PROMPT_TOKENS
from ..errors import InputError

Api = Literal["chat", "completions"]
TransportName = Literal["raw", "aiohttp"]
ProgressMode = Literal["auto", "live", "plain", "off"]
PromptFormat = Literal["auto", "ids", "text"]


def flag(name: str) -> str:
    """The command-line flag of a spec field."""
    return "--" + name.replace("_", "-")


MAX_START_LATE_S = 3600.0  # --start-at further in the past is a mistake, not a late shard


class RunSpec(BaseModel):
    """Every option of `servegen-load run` (see `run --help` for each one's meaning)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    output: str
    # the target
    endpoint: str | None = None
    model: str | None = None
    api: Api = "chat"
    server_family: str | None = None
    api_key_file: str | None = None
    insecure: bool = False
    sim_preset: str | None = None
    # what is sent
    duration: float | None = None
    rate: float | None = None
    count: int | None = None
    max_concurrency: int | None = None
    # request content
    prompt_format: PromptFormat = "auto"
    tokenizer: str | None = None
    image_patch: int = 28
    prefix_block: int = 512
    content_salt: str | None = None
    # limits and reliability
    timeout_connect: float = 10.0
    timeout_first_token: float = 300.0
    timeout_total: float = 1800.0
    timeout_idle: float = 120.0
    retries: int = 0
    retry_max_wait: float = 10.0
    keep_going: bool = False  # do not stop on first answers that are all one refusal (runner._watch_start)
    transport: TransportName = "raw"
    max_event_bytes: int = MAX_EVENT_BYTES  # memory caps (dispatch.limits.Limits)
    max_prompt_tokens: int = MAX_PROMPT_TOKENS
    # observation
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_linger: float = 0.0
    pushgateway: str | None = None
    push_timeout: float = 5.0
    progress: ProgressMode = "auto"
    lag_threshold_ms: float = 10.0
    summary_json: str | None = None
    slo: tuple[str, ...] = ()
    # scale-out
    shard: str | None = None
    shard_by: Literal["client", "request"] = "client"
    start_at: float | None = None
    start_barrier: bool = False
    workers: str | None = None
    ray: str | None = None

    @field_validator("max_concurrency", "count")
    @classmethod
    def _at_least_one(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("expected at least 1")
        return v

    @field_validator("duration", "rate", "timeout_connect", "timeout_first_token", "timeout_total", "timeout_idle")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError(f"expected a number > 0, got {v}")
        return v

    @field_validator("max_event_bytes", "max_prompt_tokens")
    @classmethod
    def _cap(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"expected a positive number, got {v}")
        return v

    @field_validator("retries")
    @classmethod
    def _retries(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"expected 0 or more, got {v}")
        return v

    @field_validator("retry_max_wait", "metrics_linger", "lag_threshold_ms", "push_timeout")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"expected a number >= 0, got {v}")
        return v

    @field_validator("slo")
    @classmethod
    def _slo(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from ..slo import check_slo_specs

        check_slo_specs(v)  # before the run, not after it
        return v

    @field_validator("server_family")
    @classmethod
    def _family(cls, v: str | None) -> str | None:
        if v is not None and v not in FAMILIES:
            raise ValueError(f"expected one of {', '.join(FAMILIES)}, got {v!r}")
        return v

    @field_validator("metrics_port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 65535:
            raise ValueError(f"expected a port in 0..65535, got {v}")
        return v

    @field_validator("image_patch")
    @classmethod
    def _patch(cls, v: int) -> int:
        if not 1 <= v <= 4096:
            raise ValueError(f"expected pixels per token side in 1..4096, got {v}")
        return v

    @field_validator("prefix_block")
    @classmethod
    def _block(cls, v: int) -> int:
        if not 1 <= v <= 1 << 20:
            raise ValueError(f"expected tokens per prefix block in 1..{1 << 20}, got {v}")
        return v

    @field_validator("content_salt")
    @classmethod
    def _salt(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            b = bytes.fromhex(v)
        except ValueError:
            b = b""
        if not 1 <= len(b) <= 16:
            raise ValueError(f"expected 2 to 32 hex digits, got {v!r}")
        return v.lower()

    @field_validator("start_at")
    @classmethod
    def _start_at(cls, v: float | None) -> float | None:
        if v is None:
            return None
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"expected a unix timestamp in seconds, got {v!r}")
        if v > 1e11:
            raise ValueError(f"expected seconds since 1970, got {v:g} (milliseconds?)")
        late = time.time() - v
        if late > MAX_START_LATE_S:  # a shard a little late keeps the shared clock; this is no shared start
            raise ValueError(f"{v:.0f} is {late:,.0f} s in the past: every request would be sent at once; give "
                             "an instant ahead, e.g. $(( $(date +%s) + 60 ))")
        return float(v)

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is None:
            return v
        a, sep, b = v.partition("/")
        if not (sep and a.strip().isdigit() and b.strip().isdigit() and int(a) < int(b)):
            raise ValueError(f"expected i/N with 0 <= i < N, got {v!r}")
        return f"{int(a)}/{int(b)}"

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: str | None) -> str | None:
        if v is None or v.strip().lower() == "auto":
            return None if v is None else "auto"
        try:
            n = int(v)
        except ValueError:
            raise ValueError(f"expected a number of processes or auto, got {v!r}") from None
        if not 1 <= n <= 256:
            raise ValueError(f"expected 1 to 256 processes, got {n}")
        return str(n)

    # --- building ---
    @classmethod
    def build(cls, **fields: Any) -> RunSpec:
        """A validated spec; a bad value is one `InputError` naming its flag."""
        if fields.get("tokenizer") not in (None, "server", "words"):
            fields["tokenizer"] = os.path.abspath(str(fields["tokenizer"]))  # workers may run elsewhere
        src = fields.get("source")
        if isinstance(src, str) and src != "-" and os.path.exists(src):
            fields["source"] = os.path.abspath(src)  # the same path on every node (--ray), as the README says
        if fields.get("api_key_file"):
            fields["api_key_file"] = os.path.abspath(str(fields["api_key_file"]))
        try:
            spec = cls(**fields)
        except ValidationError as e:
            err = e.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else ""
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "literal_error":
                msg = f"expected {err['ctx']['expected']}, got {err['input']!r}"
            raise InputError(msg, field=flag(name) if name not in ("source", "output") else name) from None
        if spec.shard is not None and (spec.workers is not None or spec.ray is not None):
            raise InputError("--shard selects one shard for this process; it does not combine with --workers/--ray",
                             field="--shard")
        if spec.start_barrier and (spec.start_at is not None or spec.output == "-" or spec.scaled_out):
            raise InputError("waits for t = 0 on stdin and says `ready` on stdout: not with --start-at, -o - "
                             "or --workers/--ray", field="--start-barrier")
        if spec.endpoint is not None and spec.sim_preset is not None:
            raise InputError("applies to the embedded simulator only (no --endpoint)", field="--sim-preset")
        if spec.prompt_format == "ids" and spec.api == "chat":  # was sent as text, and the header said so
            raise InputError("token-id prompts exist on the completions API only: give --api completions, or "
                             "--prompt-format text/auto", field="--prompt-format")
        if spec.sim_preset is not None:  # checked before the simulator starts, named as the user typed it
            from ..sim.presets import get_preset

            get_preset(spec.sim_preset, field="--sim-preset")
        return spec

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with `changes`, validated again."""
        return RunSpec.build(**{**self.model_dump(), **changes})

    # --- derived ---
    @property
    def family(self) -> str:
        """How output length is forced: the given family, else vllm for an endpoint, sim for the simulator."""
        return self.server_family or ("vllm" if self.endpoint else "sim")

    @property
    def lag_threshold(self) -> float:
        return self.lag_threshold_ms / 1e3

    @property
    def scaled_out(self) -> bool:
        return self.workers is not None or self.ray is not None

    # --- as a command line ---
    def to_argv(self) -> list[str]:
        """`servegen-load run` arguments that parse back into this spec (defaults left out)."""
        out = [self.source, "-o", self.output]
        defaults = RunSpec(source="", output="")
        for name in type(self).model_fields:
            if name in ("source", "output"):
                continue
            v = getattr(self, name)
            if v == getattr(defaults, name):
                continue
            if isinstance(v, bool):
                out.append(flag(name))
            elif isinstance(v, tuple):
                for item in v:
                    out += [flag(name), str(item)]
            else:
                out += [flag(name), repr(v) if isinstance(v, float) else str(v)]
        return out
