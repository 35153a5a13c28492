"""Where the heavy work runs: the image backbones of featurize and the model of score.

Two engines implement one interface, and a command picks one, once, with ``get_engine``:

- ``local`` (``igcli.engines.local``): decode threads and onnxruntime in this process;
- ``ray`` (``igcli.engines.ray``): Ray Data actors on a cluster, fed through Parquet shards.

    engine = get_engine("local")
    runs = engine.featurize(con, group, options, progress)     # one backbone group's rows into the store
    predict = engine.predictor(model_path, device)     # (inputs, post_ids, con) -> (N, 3) quantiles

Both give the same rows and the same numbers; the store stays the only writer of the DuckDB file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import duckdb
import numpy as np

from igcli.errors import InputError

ENGINES = ("local", "ray")


class Predictor(Protocol):
    providers: list[str]

    def __call__(self, inputs: dict[str, np.ndarray], post_ids: list[str],
                 con: duckdb.DuckDBPyConnection) -> np.ndarray: ...


class Engine(Protocol):
    name: str

    def check_featurize(self, options: Any) -> None:
        """Refuse, before any work, image options this engine does not run."""

    def featurize(self, con: duckdb.DuckDBPyConnection, group: list, options: Any,
                  progress: Callable | None = None) -> list:
        """Run one backbone group (``igcli.vision.runtime.group_requests``) over the images its plan lacks and
        store their rows; returns each role's ``BackboneRun``."""

    def predictor(self, model_path: Path, device: str) -> Predictor:
        """A callable giving score's model's (N, 3) quantiles in the order of the post ids it is given (the
        store's connection serves the Ray engine's staging folder)."""


def get_engine(name: str | Engine = "local", ray: Any = None, *, address: str | None = None,
               staging: Path | None = None, actors: int | None = None) -> Engine:
    """The engine called ``name`` (an engine is returned as it is). ``ray`` (``igcli.engines.ray.RayOptions``),
    or the CLI's ``address`` / ``staging`` / ``actors``, only with the Ray engine, which must be installed."""
    if not isinstance(name, str):
        return name
    if name not in ENGINES:
        raise InputError(f"unknown --engine {name!r}: use {' or '.join(ENGINES)}")
    if name == "local":
        if ray is not None or address is not None or staging is not None or actors is not None:
            raise InputError("--ray-address, --staging and --ray-actors need --engine ray")
        from igcli.engines.local import LocalEngine

        return LocalEngine()
    from igcli.engines.ray import RayEngine, RayOptions, require_ray

    require_ray()  # before any work: without the extra, say how to install it
    return RayEngine(ray or RayOptions(address=address, staging=staging, actors=actors))
