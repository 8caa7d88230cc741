"""Shared fixtures: where ServeGen's data and the reference servers live (read-only, never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"

pytest_plugins = ["real_servers"]  # llamacpp_server, vllm_server, prometheus_server, pushgateway_server


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"expected the shared folder beside the repo at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data"
