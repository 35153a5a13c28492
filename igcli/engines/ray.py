"""The Ray engine: image backbones and score's model on a Ray cluster; the DuckDB store stays on the driver.

    igcli featurize --engine ray [--ray-address ADDR] [--staging DIR]
    igcli score new_posts.csv --engine ray

It takes the work list the local engine would run and returns the same rows; only the inference moves.
For one backbone group (``igcli.features.images.plan_group``, as the local engine computes it):

1. The driver (this process, the only one that opens the DuckDB file) writes the images still missing
   (sha256, path, model fingerprint) as Parquet shards under ``<staging>/featurize-<backbone>-<key>/work``;
   ``key`` hashes the backbone, weights fingerprints and the exported ONNX file.
2. Ray Data: ``read_parquet`` -> ``decode_batch`` tasks (the local engine's ``decode_image``: hash check,
   resize, centre crop) -> ``map_batches(BackboneActor, compute=ActorPoolStrategy(size=n))``, one
   onnxruntime session per actor from the exported file's bytes. Each actor writes every finished batch
   as a result shard into ``results/`` (temporary name, then rename), so a job that dies keeps all its
   finished batches; Ray Data only hands a task's output downstream when the task ends, and measured
   here a ``write_parquet`` sink had written nothing when a worker died mid-job. The pipeline ends in
   ``write_parquet`` of a manifest (sha256 -> shard) that the driver checks against the shards.
   Every row carries its sha256 through every stage; Ray does not keep order and nothing relies on it.
3. The driver reads the result shards and writes them with the local engine's ``store_rows`` in ONE
   transaction, then removes the staging folder. A failed or killed job never touches the store; a
   rerun keeps the shards already written (the same images, the same model) and runs only the rest.

Resources: with GPUs in the cluster (and ``--device`` auto or cuda) one actor per GPU (``num_gpus=1``)
and an actor that does not get onnxruntime's CUDA provider fails the job; otherwise CPU actors of
``actor_cpus`` CPUs each (onnxruntime's intra-op threads), leaving at least one CPU for the read, decode
and write tasks (actors holding every CPU stall the pipeline). Actors are not restarted by default
(``max_restarts=0``): a dead worker fails the job, and the rerun resumes from the shards.

``score --engine ray``: the point-in-time metadata SQL runs in DuckDB on the driver as before; the
model's inputs go to Parquet with their post_id, Ray actors run the model, the driver reads the
quantiles back by post_id. Image features a scored post needs go through the featurize flow above.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from igcli import ort, store
from igcli.errors import EngineError, InputError
from igcli.features.images import CPU_BATCH, GPU_BATCH, plan_group, store_rows
from igcli.vision.decode import decode_image
from igcli.vision.runtime import open_runner, start_session

RAY_MISSING = "--engine ray needs Ray, an optional extra: pip install 'igcli[ray]'"
STAGING_DIR = "igcli-staging"
FAULT_ACTOR_EXIT = "ray.actor_exit"   # IGCLI_FAULT value: an actor dies once a result shard exists (tests)
SCORE_ROWS_PER_SHARD = 65536
LOAD_CHUNK = 4096                     # result rows per store_rows call inside the one transaction
META_COLUMNS = ("sha256", "path", "weights_fp", "reason", "provider")


@dataclass
class RayOptions:
    address: str | None = None        # None: $RAY_ADDRESS if set, else a local Ray for this process
    staging: Path | None = None       # None: <folder of the store>/igcli-staging; every node must read it
    actors: int | None = None         # None: one per GPU, else (CPUs - 1) // actor_cpus, at least 1
    actor_cpus: float = 1.0           # CPUs per actor; onnxruntime's intra-op threads
    batch_size: int | None = None     # images per model call; None: --batch-size on CPU, 128 on GPU
    rows_per_shard: int | None = None  # work-list rows per Parquet file (the resume unit); None: 4 batches
    max_restarts: int = 0             # Ray restarts of a dead actor; 0: the job fails, the rerun resumes
    keep_staging: bool = False        # keep the staging folder after a successful load (debugging)


# ------------------------------------------------------------------------------------------ cluster

def require_ray():
    """The ``ray`` module, or ``EngineError`` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError(RAY_MISSING) from None
    return ray


def check_options(options: Any) -> None:
    """Refuse, before any work, what the Ray engine does not run (``ImageFeatureOptions``)."""
    require_ray()
    if options.runtime not in ("auto", "onnxruntime"):
        raise InputError(f"--engine ray runs onnxruntime only: leave out --runtime {options.runtime}")


def connect(opts: RayOptions) -> dict[str, float]:
    """Join the cluster (or start a local Ray) once per process; returns its resources."""
    ray = require_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        try:
            ray.init(address=opts.address, include_dashboard=False, logging_level="warning",
                     log_to_driver=False)
        except Exception as err:  # ConnectionError, ValueError, RuntimeError, depending on what is wrong
            where = opts.address or os.environ.get("RAY_ADDRESS") or "a new local Ray"
            raise EngineError(f"cannot start or reach Ray at {where} ({_first_line(err)}): start a cluster with "
                              "`ray start --head` and pass --ray-address HOST:PORT") from None
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    return dict(ray.cluster_resources())


@dataclass
class ActorPlan:
    actors: int
    num_cpus: float
    num_gpus: float
    device: str        # cpu | cuda: what each actor's session must run on
    batch_size: int
    threads: int       # onnxruntime intra-op threads per actor


def plan_actors(resources: dict[str, float], opts: RayOptions, device: str, batch_size: int) -> ActorPlan:
    """One actor per GPU when the cluster has GPUs (unless --device cpu), else CPU actors that leave at
    least one CPU to the read / decode / write tasks."""
    if opts.actors is not None and opts.actors < 1:
        raise InputError(f"--ray-actors must be at least 1, got {opts.actors}")
    if not opts.actor_cpus > 0:
        raise InputError(f"actor CPUs must be positive, got {opts.actor_cpus}")
    cpus, gpus = float(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    threads = max(1, int(opts.actor_cpus))
    kind, _ = ort.check_device(device)    # Ray gives each GPU actor its own GPU: an index names none here
    if kind == "cuda" and not gpus:
        raise EngineError(f"--device {device}: the Ray cluster has no GPU: leave --device out to run CPU actors")
    if gpus and kind != "cpu":
        n = opts.actors or gpus
        return ActorPlan(n, opts.actor_cpus, 1, "cuda", opts.batch_size or GPU_BATCH, threads)
    n = opts.actors or max(1, int((cpus - 1) // opts.actor_cpus))
    if cpus - n * opts.actor_cpus < 1:
        raise EngineError(f"{n} actor(s) of {opts.actor_cpus:g} CPU leave no CPU of the cluster's {cpus:g} for "
                          "reading and decoding (the pipeline would stall): pass fewer --ray-actors or add nodes")
    return ActorPlan(n, opts.actor_cpus, 0, "cpu", opts.batch_size or batch_size, threads)


def staging_root(con: duckdb.DuckDBPyConnection, opts: RayOptions) -> Path:
    """``--staging``, else ``igcli-staging`` beside the store file."""
    if opts.staging is not None:
        root = Path(opts.staging)
    else:
        db = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
        root = Path(db[0][0]).resolve().parent / STAGING_DIR
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the staging folder {root} ({err.strerror}): pass --staging DIR on "
                         "storage every Ray node can read and write") from None
    return root


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _job_failed(err: BaseException, folder: Path) -> EngineError:
    """One line for a failed Ray job: the innermost cause (Ray wraps the user's exception twice)."""
    seen, cause = set(), err
    while id(cause) not in seen:
        seen.add(id(cause))
        inner = getattr(cause, "cause", None) or cause.__cause__
        if not isinstance(inner, BaseException):
            break
        cause = inner
    done = len(list((folder / "results").glob("*.parquet"))) if (folder / "results").is_dir() else 0
    return EngineError(f"the Ray job failed ({type(cause).__name__}: {_first_line(cause)}); the store is unchanged: "
                       f"run the same command again to resume ({done} result shard(s) kept in {folder})")


# --------------------------------------------------------------------------------------- featurize

class RayEngine:
    """The Ray engine (``igcli.engines.Engine``): backbones and score's model on Ray Data actors."""

    name = "ray"

    def __init__(self, opts: RayOptions | None = None) -> None:
        self.opts = opts or RayOptions()

    def check_featurize(self, options: Any) -> None:
        check_options(options)

    def featurize(self, con: duckdb.DuckDBPyConnection, group: list, options: Any, progress=None) -> list:
        return run_group_ray(con, group, options, self.opts, progress)

    def predictor(self, model_path: Path, device: str) -> _RayPredictor:
        return _RayPredictor(self.opts, Path(model_path), device)


class _RayPredictor:
    def __init__(self, opts: RayOptions, model_path: Path, device: str) -> None:
        ort.session(model_path, "cpu")     # the file loads at all: a broken export fails here, not in an actor
        self.opts, self.model_path, self.device = opts, model_path, device
        self.providers = [str(p) if isinstance(p, str) else p[0] for p in ort.choose_providers(device)]

    def __call__(self, inputs: dict[str, Any], post_ids: list[str], con: duckdb.DuckDBPyConnection) -> Any:
        return predict_ray(self.model_path, inputs, post_ids, con, self.opts, self.device)


def run_group_ray(con: duckdb.DuckDBPyConnection, group: list, options: Any, opts: RayOptions,
                  progress=None) -> list:
    """The Ray engine for one backbone group: same work list, same rows as ``imagefeatures.run_group``."""

    plan = plan_group(con, group, options)
    runs = plan.runs
    if progress:
        progress(plan.stage, 0, len(plan.pending))
    if not plan.pending:
        return list(runs.values())
    t0 = time.perf_counter()
    # The driver exports (or finds) the ONNX file; actors get its bytes, so no node needs the driver's cache.
    runner = open_runner(group, "cpu", "onnxruntime", options.quantize, session=False)
    model = runner.onnx_path.read_bytes()
    fp = ";".join(f"{role}={runner.fingerprints[role]}" for role in runner.roles)
    key = hashlib.sha256(json.dumps([plan.name, fp, runner.outputs, hashlib.sha256(model).hexdigest()])
                         .encode()).hexdigest()[:16]
    folder = staging_root(con, opts) / f"featurize-{plan.name}-{key}"
    wanted = {sha for sha, _ in plan.pending}
    kept = read_results(folder / "results", wanted)
    done = set(kept["sha256"].to_pylist())
    remaining = [(sha, path) for sha, path in plan.pending if sha not in done]
    if remaining:
        resources = connect(opts)
        actors = plan_actors(resources, opts, options.device, options.batch_size or CPU_BATCH)
        shard = opts.rows_per_shard or 4 * actors.batch_size
        write_worklist(folder / "work", remaining, fp, shard)
        try:
            _featurize_pipeline(folder, runner, model, actors, opts)
        except Exception as err:
            raise _job_failed(err, folder) from None
    table = read_results(folder / "results", wanted)
    got = set(table["sha256"].to_pylist())
    if remaining and not {sha for sha, _ in remaining} <= read_manifest(folder / "manifest") <= got:
        raise EngineError(f"the Ray job's manifest and its result shards disagree: run the same command again "
                          f"to resume from {folder}")
    if got != wanted:
        raise EngineError(f"the Ray job returned {len(got):,} of {len(wanted):,} images: run the same command again "
                          f"to resume from {folder}")
    now = store.utcnow()
    with store.transaction(con):
        for start in range(0, table.num_rows, LOAD_CHUNK):
            shas, reasons, outputs = unpack_results(table.slice(start, LOAD_CHUNK), runner.roles)
            store_rows(con, plan, shas, reasons, outputs, now)
        store.fault_point("ray.before_commit")
    if not opts.keep_staging:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - t0
    providers = ",".join(sorted(set(table["provider"].to_pylist()) - {""})) or "-"
    for run in runs.values():
        run.device, run.exported, run.seconds = f"ray:{providers}", runner.exported, seconds
        run.images_per_s = len(wanted) / seconds if seconds > 0 else 0.0
        run.resumed = kept.num_rows
    if progress:
        progress(plan.stage, len(wanted), len(wanted))
    return list(runs.values())


def write_worklist(folder: Path, items: list[tuple[str, str]], weights_fp: str, rows_per_shard: int) -> None:
    """The images to run, as Parquet shards of ``rows_per_shard`` rows (one Ray block each)."""

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for n, start in enumerate(range(0, len(items), rows_per_shard)):
        chunk = items[start:start + rows_per_shard]
        pq.write_table(pa.table({
            "sha256": pa.array([sha for sha, _ in chunk], pa.string()),
            "path": pa.array([path for _, path in chunk], pa.string()),
            "weights_fp": pa.array([weights_fp] * len(chunk), pa.string()),
        }), folder / f"work-{n:06d}.parquet")


def _featurize_pipeline(folder: Path, runner: Any, model: bytes, actors: ActorPlan, opts: RayOptions) -> None:
    import ray.data

    work = folder / "work"
    shutil.rmtree(folder / "manifest", ignore_errors=True)
    shards = len(list(work.glob("*.parquet")))
    ds = ray.data.read_parquet(str(work), override_num_blocks=shards)
    ds = ds.map_batches(decode_batch, fn_kwargs={"runner": runner}, batch_size=actors.batch_size,
                        batch_format="pyarrow", num_cpus=1)
    ds = ds.map_batches(
        BackboneActor,
        fn_constructor_kwargs={"runner": runner, "model": model, "device": actors.device, "threads": actors.threads,
                               "fault": os.environ.get("IGCLI_FAULT"), "results": str(folder / "results")},
        compute=ray.data.ActorPoolStrategy(size=actors.actors), batch_size=actors.batch_size,
        batch_format="numpy", num_cpus=actors.num_cpus, num_gpus=actors.num_gpus,
        **_restarts(opts),
    )
    ds.write_parquet(str(folder / "manifest"))


def _restarts(opts: RayOptions) -> dict[str, int]:
    """Ray Data restarts a dead actor forever unless ``max_restarts`` is passed to ``map_batches``; Ray 2.60
    flags that as a deprecated remote arg but names no replacement for it (actor_pool_map_operator.py)."""

    warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
    return {"max_restarts": opts.max_restarts}


_DECODERS: dict[str, Any] = {}


def decode_batch(batch: Any, runner: Any) -> dict[str, Any]:
    """Ray task: the work-list rows -> the same (H, W, 3) uint8 the local engine feeds its runner, plus the
    reason an image could not be used ("" when it could)."""


    key = json.dumps(runner.data_config, sort_keys=True)
    if key not in _DECODERS:  # one timm transform per worker process, not per batch
        h, w = runner.input_size
        _DECODERS[key] = (runner.prepare, math.ceil(max(h, w) / runner.data_config.get("crop_pct", 1.0)))
    prepare, min_side = _DECODERS[key]
    h, w = runner.input_size
    shas, paths = batch["sha256"].to_pylist(), batch["path"].to_pylist()
    image = np.zeros((len(shas), h, w, 3), dtype=np.uint8)  # (B, H, W, 3)
    reasons = []
    for i, (sha, path) in enumerate(zip(shas, paths, strict=True)):
        arr, why = decode_image(path, sha, prepare, min_side)
        if arr is not None:
            image[i] = arr
        reasons.append(why)
    return {"sha256": np.array(shas, dtype=object), "path": np.array(paths, dtype=object),
            "weights_fp": np.array(batch["weights_fp"].to_pylist(), dtype=object),
            "reason": np.array(reasons, dtype=object), "image": image}


class BackboneActor:
    """Ray actor: one onnxruntime session for its whole life; decoded rows in, each role's outputs out."""

    def __init__(self, runner: Any, model: bytes, device: str, threads: int, fault: str | None = None,
                 results: str | None = None):
        self.runner = start_session(runner, device, threads, model=model)
        if device == "cuda" and self.runner.provider != "CUDAExecutionProvider":
            raise EngineError(f"a Ray GPU actor got onnxruntime's {self.runner.provider}, not CUDA: install "
                              "onnxruntime-gpu with a CUDA it supports on the GPU nodes")
        self.fp = ";".join(f"{role}={runner.fingerprints[role]}" for role in runner.roles)
        self.fault, self.results, self.calls = fault, results, 0

    def __call__(self, batch: dict[str, Any]):
        self._maybe_die()
        shas = [str(s) for s in batch["sha256"]]
        if any(fp != self.fp for fp in batch["weights_fp"]):
            raise EngineError("a work-list row names other weights than this actor's model: rerun the command")
        reasons = [str(r) for r in batch["reason"]]
        ok = [i for i, why in enumerate(reasons) if not why]
        n = len(shas)
        columns: dict[str, Any] = {
            "sha256": pa.array(shas, pa.string()), "path": pa.array([str(p) for p in batch["path"]], pa.string()),
            "weights_fp": pa.array([self.fp] * n, pa.string()), "reason": pa.array(reasons, pa.string()),
            "provider": pa.array([self.runner.provider] * n, pa.string()),
        }
        if ok:
            x = batch["image"]  # (B, H, W, 3) uint8
            outputs = self.runner.post(self.runner.infer(np.ascontiguousarray(x[ok] if len(ok) < n else x)))
            for role, named in outputs.items():
                for name, arr in named.items():
                    full = np.zeros((n, *arr.shape[1:]), dtype=arr.dtype)  # failed rows: zeros, never read
                    full[ok] = arr
                    columns[f"{role}__{name}"] = _column(full)
        name = write_shard(pa.table(columns), Path(self.results))
        self.calls += 1
        return pa.table({"sha256": columns["sha256"], "shard": pa.array([name] * n, pa.string()),
                         "provider": columns["provider"]})

    def _maybe_die(self) -> None:
        """IGCLI_FAULT=ray.actor_exit: after its first batch (whose shard is on disk) the worker process dies,
        as on a preempted node (tests of the no-harm-then-resume promise)."""
        if self.fault == FAULT_ACTOR_EXIT and self.calls >= 1:
            os._exit(1)


def write_shard(table: Any, folder: Path) -> str:
    """One result shard, whole or not at all: written under a temporary name, then renamed."""

    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{uuid.uuid4().hex}.parquet"
    tmp = folder / f"{name}.tmp"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return name


def read_manifest(folder: Path) -> set[str]:
    """The images the finished Ray job says it wrote (its ``write_parquet`` output)."""

    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    return {sha for f in files for sha in pq.read_table(f, columns=["sha256"])["sha256"].to_pylist()}


def _column(a: Any):
    """(B,) -> a plain column; (B, k) -> fixed_size_list<k> keeping the dtype."""

    if a.ndim == 1:
        return pa.array(a)
    flat = pa.array(a.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, int(math.prod(a.shape[1:])))


def read_results(folder: Path, wanted: set[str]):
    """The result rows for ``wanted`` images from every readable shard (one row per image); a shard a
    killed writer left half written is deleted."""

    tables = []
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            t = pq.read_table(path)
        except Exception:  # unreadable (a damaged disk, a copy cut short): its rows run again
            path.unlink(missing_ok=True)
            continue
        tables.append(t.filter(pc.is_in(t["sha256"], pa.array(sorted(wanted), pa.string()))))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in META_COLUMNS})
    table = pa.concat_tables(tables, promote_options="default")
    first = {}
    for i, sha in enumerate(table["sha256"].to_pylist()):
        first.setdefault(sha, i)
    return table.take(sorted(first.values())) if len(first) < table.num_rows else table


def unpack_results(table: Any, roles: list[str]) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
    """Result rows -> ``store_rows``' (shas, reasons, {role: {name: array of the images that did not fail}})."""

    shas = table["sha256"].to_pylist()
    reasons = [r or "" for r in table["reason"].to_pylist()]
    ok = np.array([i for i, why in enumerate(reasons) if not why], dtype=np.int64)
    outputs: dict[str, dict[str, Any]] = {role: {} for role in roles}
    for name in table.column_names:
        role, _, out = name.partition("__")
        if not out or role not in outputs:
            continue
        outputs[role][out] = _array(table[name])[ok]
    return shas, reasons, outputs


def _array(col: Any):
    col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), col.type.list_size)
    return np.asarray(col.to_numpy(zero_copy_only=False))


# -------------------------------------------------------------------------------------------- score

def predict_ray(model_path: Path, inputs: dict[str, Any], post_ids: list[str], con: duckdb.DuckDBPyConnection,
                opts: RayOptions | None = None, device: str = "auto") -> Any:
    """score's model on Ray actors: (N, 3) quantiles in the order of ``post_ids``, as ``run_session`` gives."""

    opts = opts or RayOptions()
    resources = connect(opts)
    actors = plan_actors(resources, opts, device, SCORE_ROWS_PER_SHARD)
    folder = staging_root(con, opts) / f"score-{uuid.uuid4().hex[:12]}"
    (folder / "inputs").mkdir(parents=True)
    shard = opts.rows_per_shard or SCORE_ROWS_PER_SHARD
    names = sorted(inputs)
    try:
        for n, start in enumerate(range(0, len(post_ids), shard)):
            cols = {"post_id": pa.array(post_ids[start:start + shard], pa.string())}
            cols.update({k: _column(np.ascontiguousarray(inputs[k][start:start + shard])) for k in names})
            pq.write_table(pa.table(cols), folder / "inputs" / f"inputs-{n:06d}.parquet")
        try:
            _score_pipeline(folder, Path(model_path).read_bytes(), names, actors, opts)
        except Exception as err:
            raise _job_failed(err, folder) from None
        table = pa.concat_tables([pq.read_table(p) for p in sorted((folder / "out").glob("*.parquet"))])
    finally:
        if not opts.keep_staging:
            shutil.rmtree(folder, ignore_errors=True)
    where = {pid: i for i, pid in enumerate(table["post_id"].to_pylist())}
    if len(where) != len(post_ids) or any(pid not in where for pid in post_ids):
        raise EngineError(f"the Ray job returned predictions for {len(where):,} of {len(post_ids):,} posts: run "
                          "the same command again")
    quantiles = _array(table["quantiles"])  # (N, 3)
    return quantiles[np.array([where[pid] for pid in post_ids], dtype=np.int64)]


def _score_pipeline(folder: Path, model: bytes, names: list[str], actors: ActorPlan, opts: RayOptions) -> None:
    import ray.data

    shards = len(list((folder / "inputs").glob("*.parquet")))
    ds = ray.data.read_parquet(str(folder / "inputs"), override_num_blocks=shards)
    ds = ds.map_batches(
        ScoreActor, fn_constructor_kwargs={"model": model, "names": names, "device": actors.device,
                                           "threads": actors.threads},
        compute=ray.data.ActorPoolStrategy(size=min(actors.actors, shards)), batch_size=SCORE_ROWS_PER_SHARD,
        batch_format="pyarrow", num_cpus=actors.num_cpus, num_gpus=actors.num_gpus,
        **_restarts(opts),
    )
    ds.write_parquet(str(folder / "out"))


class ScoreActor:
    """Ray actor: score's ONNX model, one session per actor; rows keep their post_id."""

    def __init__(self, model: bytes, names: list[str], device: str, threads: int):
        self.session = ort.session(model, device, threads, spinning=False)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise EngineError(f"a Ray GPU actor got onnxruntime's {self.session.get_providers()[0]}, not CUDA")
        self.names = names

    def __call__(self, batch: Any):
        inputs = {k: _array(batch[k]) for k in self.names}
        quantiles = ort.run_batched(self.session, inputs)  # (B, 3)
        return pa.table({"post_id": batch["post_id"], "quantiles": _column(quantiles)})
