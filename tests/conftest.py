from __future__ import annotations

import os
import uuid

import pytest

from collectors import nvml
from collectors.store.db import Store
from tests import pg


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test touches the user's real store or sees the developer's HWNAS_DB."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HWNAS_DB", raising=False)
    yield
    nvml.set_nvml(None)


def start_cluster_or_skip() -> pg.Cluster:
    """A throwaway PostgreSQL cluster; skips where the binaries are missing, unless
    HWNAS_REQUIRE_PG=1 (as in CI), where that is a failure."""
    try:
        return pg.Cluster()
    except Exception as exc:
        if os.environ.get("HWNAS_REQUIRE_PG") == "1":
            raise
        pytest.skip(f"no PostgreSQL server available: {exc}")


@pytest.fixture(scope="session")
def pg_server():
    """URL of a PostgreSQL server: $HWNAS_TEST_PG_URL (set by .ci/run), else a throwaway
    cluster. Skips where PostgreSQL is not installed, unless HWNAS_REQUIRE_PG=1."""
    url = os.environ.get("HWNAS_TEST_PG_URL")
    if url:
        yield url
        return
    cluster = start_cluster_or_skip()
    yield cluster.url
    cluster.stop()


@pytest.fixture
def pg_url(pg_server):
    return pg.create_database(pg_server, f"hwnas_test_{uuid.uuid4().hex[:10]}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url):
    s = Store(store_url)
    yield s
    s.close()
