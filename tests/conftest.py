"""Shared fixtures: a temporary store, generated sample data, and the real dev data when present.

A test whose dependency is missing (Chromium, WordNet for nltk, Ray, pandas) calls ``missing(reason)``: outside
CI it skips with the reason; with ``CI=true`` (``.ci/run`` installs every such dependency and stops if it
cannot) it fails with the reason, so CI never passes by skipping. The real dev data is not such a dependency:
it is never copied into the repository, so a test reading it skips where it is absent, in CI too.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
DEV_DATA = Path(os.environ.get("IGCLI_DEV_DATA", REPO.parent / "shared" / "data" / "instagram-dev"))
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """A dependency of the calling test is missing: skip with ``reason``, or under ``CI=true`` fail with it."""
    if IN_CI:
        pytest.fail(f"{reason} [CI=true: .ci/run installs this dependency, so its absence fails the test]",
                    pytrace=False)
    pytest.skip(reason)


def need_module(name: str, fix: str) -> ModuleType:
    """``importlib.import_module(name)``, or ``missing`` with the import error and ``fix``."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        missing(f"{name} cannot be imported ({err}): {fix}")


def load_bench(name: str) -> ModuleType:
    """The script ``bench/<name>.py`` as the module ``name``: in ``sys.modules`` (its dataclasses look their module
    up), with ``bench/`` on ``sys.path`` while it runs, for its ``from _common import ...``."""
    bench = REPO / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(bench))


@pytest.fixture(scope="session", autouse=True)
def offline_model_env(tmp_path_factory: pytest.TempPathFactory):
    """No test reaches a model hub or a user's caches: HF_HUB_OFFLINE=1, a private HF_HOME and TORCH_HOME,
    and one igcli ONNX cache shared by the session on purpose (an export is reused across tests, as it
    is across a user's runs; tests of the cache itself pass their own folder)."""
    base = tmp_path_factory.mktemp("model-env")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(base / "hf-home"), "TORCH_HOME": str(base / "torch-home"),
           "IGCLI_CACHE": str(base / "igcli-cache")}
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        # huggingface_hub read HF_HOME when it was imported: point this process's cache at the private one too.
        mp.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(base / "hf-home" / "hub"))
        yield env


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.duckdb"


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset, shared read-only by the tests that need one."""
    from igcli.commands.sample import generate_sample

    out = tmp_path_factory.mktemp("sample")
    generate_sample(out, posts=600, users=40, seed=7, image_size=48)
    return out


@pytest.fixture
def dev_data() -> Path:
    if not (DEV_DATA / "posts.csv").is_file():   # never in the repository, so never in CI: a skip there too
        pytest.skip(f"real dev data not found at {DEV_DATA} (set IGCLI_DEV_DATA)")
    return DEV_DATA


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of one query on a store, through a read-only connection closed afterwards."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows, read with the csv module (an independent reader, not the one under test)."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` (the dicts ``csv_rows`` gives) back as a CSV with their header."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def execute(db: Path, *statements: str) -> None:
    """Run statements on a store outside igcli (to make an older or damaged store by hand)."""
    import duckdb

    con = duckdb.connect(str(db))
    try:
        for statement in statements:
            con.execute(statement)
    finally:
        con.close()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run ``python -m igcli`` in a subprocess, as a user would, offline: the environment must carry
    ``offline_model_env``'s HF_HUB_OFFLINE, private HF_HOME and igcli cache (checked, not assumed)."""
    import subprocess

    env = {**os.environ, **(env or {})}
    if env.get("HF_HUB_OFFLINE") != "1" or not env.get("HF_HOME") or not env.get("IGCLI_CACHE"):
        raise RuntimeError("run_cli needs HF_HUB_OFFLINE=1, a private HF_HOME and IGCLI_CACHE (offline_model_env)")
    return subprocess.run(
        [sys.executable, "-m", "igcli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict:
    """Sample -> ingest -> featurize (no backbones) -> train (metadata) -> export; shared read-only.

    Tests that write get their own copy through ``db_copy(tmp_path)``.
    """
    import shutil

    from igcli.commands.featurize import featurize
    from igcli.commands.ingest import ingest_posts
    from igcli.commands.train import TrainOptions, train
    from igcli.features.images import ImageFeatureOptions
    from igcli.features.metadata import FeaturizeOptions

    base = tmp_path_factory.mktemp("trained")
    db_path = base / "store.duckdb"
    exports = base / "exports"
    ingest_posts(sample_dir / "posts.csv", db=db_path)
    featurize(db_path, FeaturizeOptions(hashtag_ranking=sample_dir / "hashtag_ranking.txt",
                                        images=ImageFeatureOptions(skip_backbones=True)))
    # refit off: the exported graph is the evaluated model, so tests can hold it against the run's test arrays
    run = train(db_path, TrainOptions(branches=("metadata",), split="random", seed=0, epochs=150,
                                      exports_dir=exports, refit=False))

    def db_copy(tmp: Path) -> Path:
        dst = tmp / "copy.duckdb"
        shutil.copy(db_path, dst)
        return dst

    return {"db": db_path, "exports": exports, "run": run, "sample": sample_dir, "db_copy": db_copy}


@pytest.fixture(scope="session")
def ray_cluster(offline_model_env: dict) -> dict:
    """The one local Ray of the test session (2 CPUs, small object store, no dashboard, no usage stats, no
    token auth on this loopback-only cluster), shut down at the end; its address lets a CLI subprocess join."""
    import shutil
    import tempfile

    ray = need_module("ray", "pip install 'igcli[ray]'")
    # Short: Ray's unix sockets live under it and must fit the 107-byte path limit.
    temp = tempfile.mkdtemp(prefix="igray-", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False,
                 logging_level="warning", _temp_dir=temp)
        try:
            yield {"address": ray.get_runtime_context().gcs_address}
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
