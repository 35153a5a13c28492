"""The local engine: decode threads and one runner in this process (``igcli.vision.runtime``); the model of
``score`` in this process's onnxruntime session."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from igcli import ort, store
from igcli.errors import ModelError
from igcli.features.images import (
    CPU_BATCH,
    CPU_STREAMS,
    CPU_WORKERS,
    GPU_BATCH,
    WRITE_ROWS,
    BackboneRun,
    ImageFeatureOptions,
    Progress,
    QualityJob,
    plan_group,
    store_rows,
)
from igcli.vision.backbones import BackboneRequest, Weights, resolve_device
from igcli.vision.decode import decoded_batches
from igcli.vision.quality import QUALITY_SIDE
from igcli.vision.runtime import open_runner, start_session


class LocalEngine:
    name = "local"
    shares_decode = True  # featurize passes it the quality features to compute in its decode threads

    def check_featurize(self, options: Any) -> None:
        pass

    def featurize(self, con: duckdb.DuckDBPyConnection, group: list, options: Any,
                  progress: Progress | None = None, quality: QualityJob | None = None) -> list[BackboneRun]:
        return run_group(con, group, options, progress, quality)

    def predictor(self, model_path: Path, device: str) -> _SessionPredictor:
        return _SessionPredictor(ort.session(model_path, device), model_path)


class _SessionPredictor:
    def __init__(self, session: Any, model_path: Path | None = None) -> None:
        self.session = session
        self.providers = session.get_providers()
        self.model_path = model_path
        self._streams: list[_SessionPredictor] | None = None

    def __call__(self, inputs: dict[str, np.ndarray], post_ids: list[str],
                 con: duckdb.DuckDBPyConnection) -> np.ndarray:
        return ort.run_batched(self.session, inputs)

    def streams(self) -> list[_SessionPredictor]:
        """Predictors for independent runs side by side (score's drivers walk two paths): on the CPU, ``CPU_STREAMS``
        sessions of the cores split between them, as featurize runs its batches (two 1-thread sessions ran score's
        nine driver passes 25-35% faster than one 2-thread session, on 2 cores); on a GPU this one alone."""
        cores = os.cpu_count() or 1
        if self.providers[0] != "CPUExecutionProvider" or self.model_path is None or cores < CPU_STREAMS:
            return [self]
        if self._streams is None:
            self._streams = [_SessionPredictor(ort.session(self.model_path, "cpu", threads=cores // CPU_STREAMS))
                             for _ in range(CPU_STREAMS)]
        return self._streams


def run_group(
    con: duckdb.DuckDBPyConnection,
    group: list[tuple[BackboneRequest, Weights]],
    options: ImageFeatureOptions,
    progress: Progress | None = None,
    quality: QualityJob | None = None,
) -> list[BackboneRun]:
    """The local engine for one backbone group: ``plan_group``, then decode threads and one runner in
    this process; one forward pass per image serves every role. With ``quality``, the decode threads also
    compute the quality features of the images in its ``todo`` from the same read and decode
    (``decode_shared``), and each transaction writes their rows with the backbone's.

    Three things overlap: decode threads work a few batches ahead (they start before the onnxruntime
    session opens), the main thread runs the model, and one writer thread commits the batches (one
    transaction per ``WRITE_ROWS`` images or more) while the model runs on the next ones. At most one
    transaction waits to be written, so an interrupted run loses at most the batches not yet committed and
    resumes from there."""

    plan = plan_group(con, group, options)
    runs, pending = plan.runs, plan.pending
    if progress:
        progress(plan.stage, 0, len(pending))
    if not pending:
        return list(runs.values())  # nothing to do: the model is not even loaded
    device = resolve_device(options.device)
    runner = open_runner(group, device, options.runtime, options.quantize, options.threads, session=False)
    sha256s = [sha for sha, _ in pending]
    batch, workers = batching(options, device)
    write_rows = max(batch, WRITE_ROWS)
    batches = decoded_batches([p for _, p in pending], sha256s, runner, batch, workers,
                              side=QUALITY_SIDE if quality else None,
                              side_names=quality.names(pending) if quality else None)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="igcli-write")
    streams, threads = model_streams(options, device, runner.runtime)
    model = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="igcli-model") if streams > 1 else None
    try:
        if runner.runtime == "onnxruntime":
            start_session(runner, device, threads)
            if device != "cpu" and runner.provider != "CUDAExecutionProvider":
                # onnxruntime lists the CUDA provider but could not load it (a CUDA or cuDNN library missing):
                # auto runs torch on the GPU instead; a runtime the user named fails rather than run on the CPU.
                if options.runtime != "auto":
                    raise ModelError(f"onnxruntime could not start its CUDA provider (it would run on "
                                     f"{runner.provider}): use --runtime torch, or --device cpu")
                runner = open_runner(group, device, "torch", options.quantize, options.threads)
        for run in runs.values():
            run.device, run.exported = runner.provider, runner.exported

        def write(parts: list[tuple[list[str], list[str], dict]], extras: list) -> None:
            shas, reasons, outputs = join_batches(parts)
            with store.transaction(con):
                now = store.utcnow()
                store_rows(con, plan, shas, reasons, outputs, now)
                if quality is not None:
                    quality.write(con, shas, extras, now)
            store.fault_point("backbone.after_batch")

        t0 = time.perf_counter()
        done = 0
        last = None    # (future, images) of the transaction being written
        parts: list = []  # (shas, reasons, outputs) of the batches not yet handed to the writer
        extras: list = []  # the quality side's result per image of those batches (None: not wanted)

        def committed() -> None:
            nonlocal done
            future, n = last
            future.result()  # the writer's error, if any, stops the run here
            done += n
            seconds = time.perf_counter() - t0
            for run in runs.values():
                run.seconds = seconds
                run.images_per_s = done / seconds if seconds > 0 else 0.0
            if progress:
                progress(plan.stage, done, len(pending))

        def forward(x, reasons: list[str]) -> dict:  # x: (B, H, W, 3) uint8
            ok = [i for i, why in enumerate(reasons) if not why]
            return runner.post(runner.infer(x[ok] if len(ok) < len(reasons) else x)) if ok else {}

        def flush() -> None:
            """Hand the batches gathered so far to the writer, as one transaction."""
            nonlocal last, parts, extras
            if not parts:
                return
            if last is not None:
                committed()
            last, parts, extras = (writer.submit(write, parts, extras), sum(len(r) for _, r, _ in parts)), [], []

        def hand_over(future, shas: list[str], reasons: list[str], side: list | None) -> None:
            parts.append((shas, reasons, future.result()))
            extras.extend(side or [None] * len(shas))
            if sum(len(r) for _, r, _ in parts) >= write_rows:
                flush()

        start = 0
        running: deque = deque()  # batches in the model, oldest first: written in their order
        for x, reasons, *rest in batches:  # rest: [the quality results] with a QualityJob
            side = rest[0] if rest else None
            shas = sha256s[start:start + len(reasons)]
            start += len(reasons)
            if model is None:
                hand_over(_Done(forward(x, reasons)), shas, reasons, side)
                continue
            if len(running) == streams:
                hand_over(*running.popleft())
            running.append((model.submit(forward, x, reasons), shas, reasons, side))
        while running:
            hand_over(*running.popleft())
        flush()
        if last is not None:
            committed()
        if quality is not None:
            quality.second_decodes += batches.second_decodes
    finally:
        batches.close()
        if model is not None:
            model.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    return list(runs.values())


class _Done:
    """A finished result where the loop expects a future (one model stream runs in the loop's thread)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


def model_streams(options: ImageFeatureOptions, device: str, runtime: str) -> tuple[int, int]:
    """(batches in the model at once, onnxruntime threads each). On the CPU onnxruntime runs two batches at a
    time, each on half the threads: one batch on all threads spends a share of every operator waiting for
    its slowest thread (bench_featurize: 2 x 1 thread is 11-26% faster than 1 x 2 threads on 2 cores).
    A GPU, and torch, take one batch at a time."""
    threads = options.threads or os.cpu_count() or 1
    if device != "cpu" or runtime != "onnxruntime" or threads < CPU_STREAMS:
        return 1, threads
    return CPU_STREAMS, threads // CPU_STREAMS


def batching(options: ImageFeatureOptions, device: str) -> tuple[int, int]:
    """(images per model call, decode threads): the options', else the device's defaults. On the CPU the
    model takes every core and two threads decode beside it; on a GPU decoding is the CPU's only work, and
    larger batches keep the GPU and the per-batch DuckDB writes from waiting on each other."""
    gpu = device != "cpu"
    batch = options.batch_size or (GPU_BATCH if gpu else CPU_BATCH)
    if options.workers is not None:
        return batch, options.workers
    return batch, gpu_workers() if gpu else CPU_WORKERS


def gpu_workers() -> int:
    """Decode threads beside a GPU: every core but the one that drives the model and the writes."""
    return max(CPU_WORKERS, (os.cpu_count() or 1) - 1)


def join_batches(parts: list[tuple[list[str], list[str], dict]]) -> tuple[list[str], list[str], dict]:
    """Consecutive batches ``(shas, reasons, outputs)`` as one, for ``store_rows``: ``outputs`` holds the
    rows of the images that did not fail, in order, so the arrays of each role are concatenated in order."""
    if len(parts) == 1:
        return parts[0]
    shas = [sha for s, _, _ in parts for sha in s]
    reasons = [why for _, r, _ in parts for why in r]
    filled = [o for _, _, o in parts if o]
    outputs = {role: {k: np.concatenate([o[role][k] for o in filled]) for k in filled[0][role]}
               for role in (filled[0] if filled else {})}
    return shas, reasons, outputs


