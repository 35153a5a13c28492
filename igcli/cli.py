"""The ``igcli`` command line: a thin Typer shell over the library stages.

Each command parses options, calls one library function and renders the result with rich. Expected
failures (``IgcliError``) print one line to stderr and exit non-zero; nobody sees a traceback for them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from igcli.commands.evaluate import evaluate as run_evaluate
from igcli.commands.features import FramesOptions, export_frame
from igcli.commands.featurize import featurize as run_featurize
from igcli.commands.forget import forget as run_forget
from igcli.commands.ingest import ingest_classes, ingest_posts
from igcli.commands.report import build_report
from igcli.commands.sample import generate_sample
from igcli.commands.score import ScoreOptions
from igcli.commands.score import score as run_score
from igcli.commands.status import store_status
from igcli.commands.train import TrainOptions, train_all_combinations
from igcli.commands.train import train as run_train
from igcli.console import TerminalConsole
from igcli.engines import get_engine
from igcli.errors import IgcliError
from igcli.features.images import ImageFeatureOptions
from igcli.features.metadata import FeaturizeOptions
from igcli.vision.backbones import Fingerprint

app = typer.Typer(
    name="igcli",
    help="Predict Instagram likes from a point-in-time correct DuckDB feature store.\n\n"
    "Pipeline: [bold]igcli sample demo/[/] → [bold]igcli ingest demo/posts.csv[/] → [bold]igcli featurize[/] → "
    "[bold]igcli train[/] → [bold]igcli score demo/new_posts.csv[/]",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80-column default. User text is
# printed as it is, never as markup, and cannot act on the terminal (igcli.console).
out = TerminalConsole(width=None if sys.stdout.isatty() else 140)
err = TerminalConsole(stderr=True, width=None if sys.stderr.isatty() else 140)

DbOpt = Annotated[Path, typer.Option("--db", help="DuckDB store file.", show_default=True)]
ExportsOpt = Annotated[Path, typer.Option(help="Where models were exported.")]
DEFAULT_DB = Path("igcli.duckdb")
EngineOpt = Annotated[str, typer.Option(
    help="local (this process) or ray: the image backbones and the model run on a Ray cluster, the store stays "
         "here (pip install 'igcli\\[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="--engine ray: a running cluster (HOST:PORT or 'auto') \\[default: $RAY_ADDRESS, else a "
                          "local Ray for this run].")]
StagingOpt = Annotated[Path | None, typer.Option(
    help="--engine ray: folder for work lists and result shards, on storage every node reads "
         "\\[default: igcli-staging beside the store].")]
RayActorsOpt = Annotated[int | None, typer.Option(
    "--ray-actors", help="--engine ray: model actors \\[default: one per GPU, else the cluster's CPUs minus one].")]


def _progress():
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=True,
    )


class _Bars:
    """Adapts the library's ``progress(stage, done, total)`` callbacks to rich progress bars."""

    def __init__(self, unit: str = "img/s"):
        self._time = time
        self.unit = unit
        self.bar = _progress()
        self.tasks: dict[str, tuple[int, float]] = {}

    def __enter__(self):
        self.live = err.is_terminal
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.bar.stop()

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = (self.bar.add_task(stage, total=total, rate=""), self._time.perf_counter())
        task, t0 = self.tasks[stage]
        rate = done / max(self._time.perf_counter() - t0, 1e-9)
        self.bar.update(task, completed=done, total=total, rate=f"{rate:,.0f} {self.unit}")


# ------------------------------------------------------------------------------------------ sample

@app.command()
def sample(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write posts.csv, new_posts.csv and images/ into.")],
    posts: Annotated[int, typer.Option(help="Number of historical posts.")] = 2000,
    users: Annotated[int, typer.Option(help="Number of users.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 224,
    no_images: Annotated[bool, typer.Option("--no-images", help="Skip writing image files.")] = False,
) -> None:
    """Write a synthetic dataset in the real data's layout, with a planted, learnable signal.

    [bold]Example:[/] igcli sample demo/ --posts 2000 --users 100 --seed 0
    """

    s = generate_sample(out_dir, posts=posts, users=users, seed=seed, image_size=image_size,
                        images=not no_images)
    out.print(
        f"wrote {s.posts:,} posts from {s.users} users ({s.images:,} images, {s.posts_without_image} without "
        f"image) and {s.new_posts:,} new posts ({s.cold_start_users} cold-start users) to {s.out_dir}"
    )


# ------------------------------------------------------------------------------------------ ingest

@app.command()
def ingest(
    posts: Annotated[Path, typer.Argument(help="CSV (RFC 4180, UTF-8) or Parquet file of posts.")],
    images: Annotated[
        Path | None, typer.Option(help="Folder image paths are relative to \\[default: the file's folder].")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="CSV encoding: utf-8, utf-16 or latin-1 \\[default: detect].")
    ] = None,
    db: DbOpt = DEFAULT_DB,
    recheck: Annotated[bool, typer.Option(
        help="Compare every row even when the file is unchanged since the store's latest ingest, which was of it.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Load posts into the store. Bad rows go to the [bold]rejects[/] table; good rows are upserted by post_id.

    Required columns: post_id, username, posted_at. Optional: caption, hashtags, mentions, likes, followers,
    following, user_post_count, image, observed_at. Counts accept 1,234 / 1.2k / 3m. The same file again,
    unchanged and with nothing ingested in between, is not compared row by row: its last outcome stands.

    [bold]Example:[/] igcli ingest demo/posts.csv --db igcli.duckdb
    """

    with _Bars() as bars:
        r = ingest_posts(posts, db=db, images_dir=images, encoding=encoding, progress=bars, recheck=recheck)
    if as_json:
        out.print_json(json.dumps({k: v for k, v in r.__dict__.items()}, default=str))
        return
    t = Table(title=f"ingest {posts.name}", show_header=False)
    rows = [("loaded", r.loaded), ("updated", r.updated), ("unchanged", r.unchanged), ("rejected", r.rejected),
            ("loaded with warnings", r.warned), ("rows/s", f"{r.rows_per_s:,.0f}"), ("seconds", f"{r.seconds:.2f}")]
    for k, v in rows:
        t.add_row(k, f"{v:,}" if isinstance(v, int) else v)
    for status, n in sorted(r.images.items()):
        t.add_row(f"images {status}", f"{n:,}")
    out.print(t)
    if r.reused:
        out.print(f"unchanged since its ingest {r.reused}, the store's latest: rows not compared again (--recheck "
                  "compares them)")
    if r.ignored_columns:
        out.print(f"ignored unknown column(s): {', '.join(r.ignored_columns)}", markup=False)
    for hint in r.hints:
        out.print(f"  {hint}", markup=False)
    for line in r.image_problems:
        out.print(f"  {line}", markup=False)
    if r.image_problems_total > len(r.image_problems):
        out.print(f"  … {r.image_problems_total - len(r.image_problems):,} more posts whose image is not used")
    for line, col, message in r.warnings:
        out.print(f"  warning line {line}{f' [{col}]' if col else ''}: {message}", markup=False)
    for line, col, reason in r.reasons:
        out.print(f"  rejected line {line}{f' [{col}]' if col else ''}: {reason}", markup=False)
    if r.rejected > len(r.reasons):
        out.print(f"  … all {r.rejected:,} in the rejects table (igcli status)")


@app.command("ingest-classes")
def ingest_classes_cmd(
    classes: Annotated[Path, typer.Argument(help="CSV with post_id, rank, wnid, prob (label optional).")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Load precomputed ImageNet top-k classes, so the objects branch needs no classifier run.

    [bold]Example:[/] igcli ingest-classes imagenet_top5.csv
    """

    r = ingest_classes(classes, db=db)
    out.print(
        f"loaded {r.rows:,} class rows for {r.posts:,} posts ({r.posts_unknown:,} not in the store yet, "
        f"{r.rejected:,} rows rejected, {r.replaced:,} replaced) in {r.seconds:.2f}s"
    )


# ---------------------------------------------------------------------------------------- featurize

@app.command()
def featurize(
    db: DbOpt = DEFAULT_DB,
    hashtag_ranking: Annotated[Path | None, typer.Option(
        help="Hashtag popularity list, one tag per line, most popular first. Without it, a tag's weight is "
             "ln(1 + its uses in the store's posts older than the post).")] = None,
    half_life: Annotated[float, typer.Option(help="Half-life in days of the decayed mean of past ln-likes.")] = 30.0,
    user_stats_as_of: Annotated[str, typer.Option(
        help="'post': history strictly before each post (default). 'end': the paper's leaky average over all "
             "the user's posts, for the leak benchmark only; recorded on every row and in model cards.")] = "post",
    objects: Annotated[str | None, typer.Option(
        help="ImageNet classifier for the objects branch (efficientnet_lite0..2 or a timm name, e.g. the paper's "
             "inception_resnet_v2), or 'none' \\[default: efficientnet_lite0, weights from its pip package].")] = None,
    aesthetics: Annotated[str | None, typer.Option(
        help="Backbone for the aesthetics branch's embedding, or 'none' \\[default: efficientnet_lite0: an ImageNet "
             "embedding, not an aesthetics score, unless --nima-weights is given; mobilenetv1_100 is NIMA's "
             "family]. With the same backbone as --objects, one forward pass serves both.")] = None,
    objects_weights: Annotated[Path | None, typer.Option(help="Local weights file for the classifier.")] = None,
    aesthetics_weights: Annotated[Path | None, typer.Option(
        help="Local weights file for the aesthetics backbone.")] = None,
    nima_weights: Annotated[Path | None, typer.Option(help="NIMA checkpoint (MobileNet with a 10-bin head).")] = None,
    random_init: Annotated[bool, typer.Option(
        "--random-init", help="Tests and benchmarks only: random backbone weights, rows marked.")] = False,
    no_backbones: Annotated[bool, typer.Option(
        "--no-backbones", help="Only metadata and weight-free image quality features.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (auto: CUDA when torch sees a GPU).")] = "auto",
    batch_size: Annotated[int | None, typer.Option(
        help="Images per backbone batch (decoded ahead, written together; on the CPU the model runs 2 at a time) "
             "\\[default: 32 on the CPU, 128 on a GPU].", show_default=False)] = None,
    workers: Annotated[int | None, typer.Option(
        help="Threads decoding and resizing images, overlapped with inference \\[default: 2 on the CPU, every "
             "core but one on a GPU].", show_default=False)] = None,
    runtime: Annotated[str, typer.Option(
        help="auto, onnxruntime (exported once per backbone and weights into $IGCLI_CACHE/onnx, default "
             "~/.cache/igcli/onnx) or torch (eager). auto: onnxruntime on the CPU; on a GPU onnxruntime's CUDA "
             "provider, or torch CUDA when onnxruntime has none.")] = "auto",
    quantize: Annotated[str | None, typer.Option(
        help="int8: onnxruntime dynamic quantization. Refused today: it fails the 95% top-5 agreement with fp32 "
             "on the dev images (BENCHMARKS.md).")] = None,
    rebuild: Annotated[bool, typer.Option(
        "--rebuild", help="Recompute every post's metadata features from scratch instead of advancing the "
                          "stored per-user state from new posts.")] = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    staging: StagingOpt = None,
    ray_actors: RayActorsOpt = None,
) -> None:
    """Compute point-in-time metadata features and image features for everything that lacks them.

    Metadata: the user's history strictly before each post (count, mean / median / std of ln-likes, last 5
    and 10, time-decayed mean, days since previous and first post), followers / following / post count from
    the latest snapshot at or before the post, caption length, #hashtags, #mentions, hashtag weight, month,
    weekday, hour group. Images: weight-free quality features always; the backbones (default efficientnet_lite0
    for both the object classes and the ImageNet embedding, weights from its installed pip package, one
    forward pass for both) through onnxruntime. Other backbones run when their weights are found (timm /
    Hugging Face cache, or a local file). Metadata features advance from new and changed posts only
    (per-user running state in the store); a second run is a no-op; an interrupted run resumes.

    With [bold]--engine ray[/] the backbones run on a Ray cluster (the rest stays here); a failed job leaves the
    store as it was and the same command resumes it.

    [bold]Example:[/] igcli featurize --hashtag-ranking hashtag_ranking.txt --no-backbones
    """

    roles = tuple(r for r, name in (("objects", objects), ("aesthetics", aesthetics)) if name != "none")
    objects = None if objects == "none" else objects
    aesthetics = None if aesthetics == "none" else aesthetics
    img = ImageFeatureOptions(
        roles=roles, objects=objects, aesthetics=aesthetics, objects_explicit=objects is not None,
        aesthetics_explicit=aesthetics is not None or aesthetics_weights is not None or nima_weights is not None,
        objects_weights=objects_weights, aesthetics_weights=aesthetics_weights, nima_weights=nima_weights,
        random_init=random_init, device=device, batch_size=batch_size, workers=workers,
        skip_backbones=no_backbones, runtime=runtime, quantize=quantize,
        engine=get_engine(engine, address=ray_address, staging=staging, actors=ray_actors),
    )
    opts = FeaturizeOptions(hashtag_ranking=hashtag_ranking, half_life_days=half_life,
                            user_stats_as_of=user_stats_as_of, images=img, rebuild=rebuild)
    with _Bars() as bars:
        r = run_featurize(db, opts, progress=bars)
    t = Table(title="featurize", show_header=False)
    t.add_row("posts", f"{r.posts:,}")
    t.add_row("features new / changed / unchanged", f"{r.inserted:,} / {r.updated:,} / {r.unchanged:,}")
    t.add_row("posts without history", f"{r.no_history:,}")
    t.add_row("hashtag weights", "ranking file" if r.hashtag_source.startswith("ranking:") else
              "tag frequency in older posts of the store")
    t.add_row("user snapshots", ", ".join(f"{k} {v:,}" for k, v in sorted(r.snapshot_choices.items())))
    if r.leaky_user_stats:
        t.add_row(out.styled("user stats", "red"), out.styled("LEAKY (all posts of the user): benchmark only", "red"))
    if r.images is not None:
        im = r.images
        # how many quality rows came from a backbone's decode of the image (and how many of those decoded the
        # file again at their own JPEG scale): the one-decode-per-image path, visible
        shared = f", {im.quality_shared:,} from a backbone's decode" if im.quality_shared else ""
        if im.quality_second_decodes:
            shared += f" ({im.quality_second_decodes:,} decoded again at their own scale)"
        t.add_row("image quality computed / failed", f"{im.quality_computed:,} / {im.quality_failed:,}{shared}")
        for b in r.images.backbones:
            if b.skipped_reason:
                continue
            mark = " (random init)" if b.random_init else (" (int8)" if Fingerprint.parse(b.weights_fp).int8 else "")
            if b.role == "aesthetics" and not b.nima:
                mark += " (ImageNet embedding)"
            shared = f", same pass as {'+'.join(b.shared_with)}" if b.shared_with else ""
            if b.device == "-":
                t.add_row(f"{b.role}: {b.name}{mark}", "nothing pending")
                continue
            resumed = f", {b.resumed:,} from an earlier Ray job's shards" if b.resumed else ""
            t.add_row(f"{b.role}: {b.name}{mark}",
                      f"{b.images_run:,} images on {b.device}, {b.images_per_s:,.1f} img/s, {b.images_failed} failed"
                      f"{shared}{resumed}")
    t.add_row("seconds", f"{r.seconds:.2f}")
    out.print(t)
    for m in r.messages:
        err.print(err.styled("note:", "yellow"), m, highlight=False)


# -------------------------------------------------------------------------------------------- train

def _metrics_row(t: Table, label: str, m: dict, extra: str = "") -> None:
    cov = m.get("coverage_p10_p90")
    pair = m.get("pairwise")
    t.add_row(label, f"{m['n']:,}", f"{m['mae']:.3f}", f"{m['mse']:.3f}", f"{100 * m['within_10pct']:.1f}%",
              "-" if m["spearman"] != m["spearman"] else f"{m['spearman']:.3f}",
              "-" if cov is None else f"{100 * cov:.1f}%",
              "-" if pair is None or pair != pair else f"{100 * pair:.1f}%", extra)


def _metrics_table(title: str, posts: str = "test posts") -> Table:
    t = Table(title=title)
    for c in ("model", posts, "MAE", "MSE", "±10%", "Spearman", "p10–p90 cover", "pairwise", "note"):
        t.add_column(c, justify="left" if c in ("model", "note") else "right")
    return t


@app.command()
def train(
    db: DbOpt = DEFAULT_DB,
    branches: Annotated[str | None, typer.Option(
        help="Comma-separated: metadata,objects,aesthetics \\[default: chosen on the validation part among the "
             "combinations with metadata whose features the store has].")] = None,
    all_combinations: Annotated[bool, typer.Option(
        "--all-combinations", help="Train all seven subsets of branches and print them as one table.")] = False,
    split: Annotated[str, typer.Option(
        help="random: 67/33 by post (the paper). user: by user (unseen users at test). "
             "time: each user's latest third is the test part. warm-holdout: a fifth of users held out by a "
             "stable hash; their first two thirds are history, their last third is scored as `igcli score` "
             "would (likes hidden); training on the other users only.")] = "warm-holdout",
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Most epochs; early stopping on the validation part.")] = 200,
    ensemble: Annotated[int, typer.Option(
        help="Models trained with different seeds and averaged in the exported graph.")] = 2,
    family_depth: Annotated[int | None, typer.Option(help="WordNet depth of object families \\[default: 7].")] = None,
    objects_source: Annotated[str | None, typer.Option(
        help="'precomputed' or a classifier name \\[default: the source covering most posts; when train chooses "
             "the branches, a classifier's before precomputed classes].")] = None,
    aesthetics_source: Annotated[str | None, typer.Option(help="Embedding backbone \\[default: most posts].")] = None,
    exports: Annotated[Path, typer.Option(help="Where models are exported.")] = Path("exports"),
    refit: Annotated[bool, typer.Option(
        "--refit/--no-refit", help="After evaluation, refit the exported model on every labelled post "
                                   "(--no-refit exports the evaluated model).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run record as one JSON object.")] = False,
) -> None:
    """Train the store's best model: branches chosen on validation, evaluated on held-out users, then refit.

    Reports MAE / MSE of ln-likes, the share within ±10% of the true likes, Spearman and p10–p90 coverage,
    next to two baselines on the same test posts: the constant training mean and the user's mean ln-likes
    over earlier posts, and ends with one verdict line against that history mean. Every run is stored in the
    [bold]runs[/] table.

    [bold]Example:[/] igcli train    (or: igcli train --branches metadata,objects --split user --seed 1)
    """

    opts = TrainOptions(branches=_branches_option(branches), split=split,
                        seed=seed, epochs=epochs, ensemble=ensemble, family_depth=family_depth,
                        objects_source=objects_source, aesthetics_source=aesthetics_source, exports_dir=exports,
                        refit=refit)
    with _Bars(unit="epochs/s") as bars:
        if all_combinations:
            ab = train_all_combinations(db, opts, progress=bars)
            runs, skipped = ab.runs, ab.skipped
        else:
            runs, skipped = [run_train(db, opts, progress=bars)], []
    if as_json:
        payload = [r.as_json() for r in runs] if all_combinations else runs[0].as_json()
        out.print_json(json.dumps(payload, default=str))
        return
    t = _metrics_table(f"test part, split={split}, seed={seed}")
    first = runs[0] if runs else None
    if first:
        for name, m in first.baselines.items():
            _metrics_row(t, {"constant_train_mean": "baseline: training mean",
                             "user_mean_earlier_posts": "baseline: user's mean, earlier posts"}.get(name, name), m)
    for r in runs:
        marks = [m for m, on in (("random-init backbone", r.random_init_inputs), ("LEAKY user stats", r.leaky_features))
                 if on]
        _metrics_row(t, "+".join(r.branches), r.metrics, ", ".join(marks))
    out.print(t)
    for combo, why in skipped:
        out.print(f"skipped {'+'.join(combo)}: {why}", markup=False)
    # the families of the model this train published (the one `score` and the report use), with their test posts
    with_families = sorted((r for r in runs if r.family_effects),
                           key=lambda r: r.chosen_by not in ("validation", "forced"))
    if with_families:
        r = with_families[0]
        ft = Table(title=f"object families of {r.model_id}, learned contribution to ln-likes")
        for c in ("family", "Δ ln-likes", "test posts"):
            ft.add_column(c, justify="left" if c == "family" else "right")
        for fam, eff in r.family_effects:
            ft.add_row(fam, f"{eff:+.3f}", f"{r.family_posts.get(fam, 0):,}")
        out.print(ft)
    if first:
        parts = [f"{label}: MAE {m['mae']:.3f} ({m['n']:,})" for key, label in
                 (("with_history", "test posts with history"), ("cold_start", "cold start"))
                 if (m := first.subsets.get(key))]
        out.print("; ".join([*parts, f"{first.zero_likes_excluded} posts with 0 likes left out"]))
    for r in runs:
        out.print(f"model {r.model_id} → {r.export_dir}  ({r.timings['train_s']:.1f}s, "
                  f"{r.timings['epochs']} epochs over {r.timings.get('members', 1)} ensemble members)")
    _print_choice_and_verdict(runs, all_combinations)


def _branches_option(branches: str | None) -> tuple[str, ...] | None:
    """--branches as a tuple; None (not given) lets train choose on validation."""
    if branches is None:
        return None
    return tuple(b.strip() for b in branches.split(",") if b.strip()) or ("",)


def _print_choice_and_verdict(runs: list, ablation: bool) -> None:
    """How the branches were chosen, what was exported, and the verdict line (a warning when the model does not
    beat the users' history mean)."""
    if not runs:
        return
    r = min(runs, key=lambda x: x.candidates[0]["val_mae"]) if ablation else runs[0]
    if r.chosen_by == "validation" and len(r.candidates) > 1:
        tried = ", ".join(f"{'+'.join(c['branches'])} {c['val_mae']:.3f}" for c in r.candidates if "val_mae" in c)
        out.print(f"branches chosen on the validation part (MAE): {tried}", markup=False)
    for c in r.candidates:
        if "skipped" in c:
            out.print(f"not tried {'+'.join(c['branches'])}: {c['skipped']}", markup=False)
    if r.refit:
        out.print(f"exported: refit on all {r.refit['rows']:,} labelled posts ({sum(r.refit['epochs'])} epochs, "
                  f"{r.refit['seconds']:.1f}s); the metrics above are the evaluated model's", markup=False)
    out.print(out.styled(r.verdict, "bold"))
    if not r.beats_history:
        err.print(err.styled("warning:", "yellow"), "this model does not beat the users' own history mean on the "
                  "test part: its predictions are no better than a user's average likes (image features from "
                  "`igcli featurize` and more posts per user help)", highlight=False)


# -------------------------------------------------------------------------------------------- score

@app.command()
def score(
    posts: Annotated[Path, typer.Argument(help="CSV or Parquet of posts to score (likes optional).")],
    db: DbOpt = DEFAULT_DB,
    model: Annotated[str, typer.Option(
        help="'best' (the model `igcli train` chose for this store), 'latest', a model id under --exports, or a "
             "model directory.")] = "best",
    exports: ExportsOpt = Path("exports"),
    images: Annotated[Path | None, typer.Option(help="Folder image paths are relative to.")] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", help="Also write the predictions to this .csv or .parquet.")] = None,
    what_if: Annotated[bool, typer.Option(
        "--what-if", help="Score each row as an alternative against the stored history alone; store nothing.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (auto: CUDA when present).")] = "auto",
    objects_weights: Annotated[Path | None, typer.Option(help="Weights of the model's classifier.")] = None,
    aesthetics_weights: Annotated[Path | None, typer.Option(
        help="Weights of the model's aesthetics backbone.")] = None,
    nima_weights: Annotated[Path | None, typer.Option(help="The model's NIMA checkpoint.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    staging: StagingOpt = None,
    ray_actors: RayActorsOpt = None,
) -> None:
    """Score posts with a trained model; predictions (the median, with a p10–p90 band) go to the [bold]predictions[/]
    table, and the posts become history for later predictions. [bold]--what-if[/] compares drafts instead:
    each row is scored against the stored history alone and nothing is stored.

    Each post sees only the earlier posts of its user that the store knows; unseen users are cold starts.
    Scoring the same posts with the same model again replaces their rows, except a prediction made before the post's
    likes were known, which stays (the one `igcli evaluate` counts); `igcli forget` removes posts. Each post gets its
    drivers (× likes of the user's level, trend, audience, timing, caption and hashtags, image); the batch's inputs
    are checked for drift.

    [bold]Example:[/] igcli score demo/new_posts.csv --out predictions.csv
    [bold]Example:[/] igcli score drafts.csv --what-if
    """
    opts = ScoreOptions(model=model, exports_dir=exports, images_dir=images, out=out_file, device=device,
                        objects_weights=objects_weights, aesthetics_weights=aesthetics_weights,
                        nima_weights=nima_weights, what_if=what_if,
                        engine=get_engine(engine, address=ray_address, staging=staging, actors=ray_actors))
    with _Bars() as bars:
        r = run_score(posts, db, opts, progress=bars)
    if as_json:
        out.print_json(json.dumps(r.as_json(), default=str))
        return
    t = Table(title=f"{'what-if ' if r.what_if else ''}score {posts.name}", show_header=False)
    t.add_row("model", f"{r.model_id} ({r.model_note})")
    t.add_row("posts scored", f"{r.posts:,}")
    t.add_row("rows rejected", f"{r.rejected:,}")
    t.add_row("cold-start users (posts)", f"{r.cold_start_users:,} ({r.cold_start_posts:,})")
    t.add_row("posts without a usable image", f"{r.without_image:,}")
    for branch, n in r.masked.items():
        t.add_row(f"posts with {branch} masked", f"{n:,}")
    t.add_row("onnxruntime provider", r.provider)
    t.add_row("posts/s end to end", f"{r.posts_per_s:,.0f}")
    t.add_row("seconds", f"{r.seconds:.2f}")
    if r.out:
        t.add_row("written to", r.out)
    out.print(t)
    for line in r.image_problems:
        out.print(f"  {line}", markup=False)
    if r.image_problems_total > len(r.image_problems):
        out.print(f"  … {r.image_problems_total - len(r.image_problems):,} more posts whose image was not used")
    for line in r.date_warnings:
        out.print(f"  warning: {line}", markup=False)
    if r.what_if:
        for user in r.what_if:
            alts = user["alternatives"]
            best = alts[0]
            out.print(f"best of {len(alts)} for @{user['username']}: {best['post_id']}, "
                      f"{best['predicted_likes']:,} likes, {best['vs_usual']:.2f}× your usual", markup=False)
        _predictions_table("alternatives, best first per user", [a for u in r.what_if for a in u["alternatives"]])
        out.print("what-if: nothing was stored")
        return
    if r.posts <= len(r.examples):
        _predictions_table("predictions", r.examples)
    else:
        _predictions_table("furthest above their usual", r.above_usual)
        _predictions_table("furthest below their usual", r.below_usual)
    _print_loop_notes(r)
    out.print(f"stored {r.posts:,} predictions as batch {r.batch_id}; these posts now count as history for later "
              f"predictions (compare drafts with --what-if; remove them with `igcli forget --batch {r.batch_id}`)")


def _predictions_table(title: str, rows: list[dict]) -> None:
    if not rows:
        return
    ex = Table(title=title)
    for c in ("post_id", "user", "predicted likes (median)", "p10", "p90", "usual", "vs usual", "drivers"):
        ex.add_column(c, justify="left" if c in ("post_id", "user", "drivers") else "right")
    for e in rows:
        ex.add_row(e["post_id"], e["username"], f"{e['predicted_likes']:,}", f"{e['p10_likes']:,}",
                   f"{e['p90_likes']:,}", f"{e['usual_likes']:,}", f"{e['vs_usual']:.2f}×", e.get("drivers", ""))
    out.print(ex)


# ------------------------------------------------------------------------------------------ forget

@app.command("forget")
def forget_cmd(
    post_ids: Annotated[list[str] | None, typer.Argument(help="post_id values to remove.")] = None,
    batch: Annotated[str | None, typer.Option(help="A scoring batch id (printed by `igcli score`) to remove whole.")
                     ] = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Remove posts (by id, or a whole scoring batch) and bring the features back to what they were without them.

    [bold]Example:[/] igcli forget --batch e08a89ee8fa5
    """
    r = run_forget(db, post_ids=post_ids, batch=batch)
    out.print(f"forgot {r.posts:,} posts of {r.users:,} users ({r.predictions:,} predictions, {r.snapshots:,} user "
              f"snapshots); features recomputed in {r.seconds:.2f}s")
    if r.unknown:
        out.print(f"  not in the store: {', '.join(r.unknown)}", markup=False)


# ---------------------------------------------------------------------------------------- features

@app.command()
def features(
    out_file: Annotated[Path, typer.Option(
        "--out", help="The file to write: .parquet, .csv or .arrow (Arrow IPC), by suffix.")],
    db: DbOpt = DEFAULT_DB,
    entities: Annotated[Path | None, typer.Option(
        help="User features as of any time: a CSV or Parquet with username, as_of; each row is answered with "
             "what the store knew strictly before as_of.")] = None,
    posts: Annotated[Path | None, typer.Option(
        help="Serving frame of these posts (CSV or Parquet), ingested as `igcli score` ingests them.")] = None,
    ids: Annotated[Path | None, typer.Option(
        help="Serving frame of stored posts: one post_id per line, or a CSV with a post_id column.")] = None,
    model: Annotated[str, typer.Option(
        help="Serving frame: the model whose feature parameters and image sources apply ('best' as score takes "
             "it, 'latest', an id or a directory).")] = "best",
    exports: ExportsOpt = Path("exports"),
    images: Annotated[Path | None, typer.Option(help="--posts: folder image paths are relative to.")] = None,
    columns: Annotated[str | None, typer.Option(
        help="Comma-separated columns to write, in this order \\[default: all].", show_default=False)] = None,
    objects_source: Annotated[str | None, typer.Option(
        help="Training frame: 'precomputed' or a classifier name \\[default: the source covering most posts].",
        show_default=False)] = None,
    aesthetics_source: Annotated[str | None, typer.Option(
        help="Training frame: embedding backbone \\[default: the one covering most posts].", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Write a point-in-time feature frame for your own tools (pandas, polars, DuckDB, a notebook).

    Without --entities, --posts or --ids: the [bold]training frame[/], one row per labelled post with every
    input the model can use as of that post's time and its label ln_likes, exactly what `igcli train` loads.
    With --posts or --ids: the [bold]serving frame[/], exactly what `igcli score` feeds the model. With
    --entities: [bold]user features as of any time[/] (history level, trend, counts, audience snapshot).

    [bold]Example:[/] igcli features --out train.parquet --columns post_id,username,posted_at,hist_mean,ln_likes
    """

    opts = FramesOptions(entities=entities, posts=posts, ids=ids, model=model, exports_dir=exports, images_dir=images,
                         columns=tuple(c.strip() for c in columns.split(",") if c.strip()) if columns else None,
                         objects_source=objects_source, aesthetics_source=aesthetics_source)
    with _Bars() as bars:
        r = export_frame(out_file, db, opts, progress=bars)
    if as_json:
        out.print_json(json.dumps(r.__dict__, default=str))
        return
    out.print(f"wrote the {r.frame} frame, {r.rows:,} rows × {len(r.columns)} columns, to {r.path} in "
              f"{r.seconds:.2f}s", highlight=False, markup=False)


def _print_loop_notes(r) -> None:
    """What score recorded for the loop: the batch's drift, and rows kept from before the likes were known."""
    out.print(f"input drift against training: {r.drift_summary}", markup=False, highlight=False)
    if r.kept_earlier:
        out.print(f"{r.kept_earlier:,} posts kept the prediction this model made before their likes were known "
                  "(`igcli evaluate` counts that one)", highlight=False)


# ---------------------------------------------------------------------------------------- evaluate

@app.command()
def evaluate(
    db: DbOpt = DEFAULT_DB,
    model: Annotated[str | None, typer.Option(help="Only this model id \\[default: every model that scored].")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only predictions scored at or after this date (2025-01-31 or 2025-01-31T12:00, UTC).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """How past predictions turned out, now that their posts' likes are known (ingest the posts again with likes).

    For each model: realized MAE of ln-likes, ±10%, p10–p90 coverage and within-user pairwise accuracy of the
    predictions made before the likes were known; on the same posts the user's mean of earlier posts (posts whose
    user had history) and usual_likes; then per scoring batch, or per week when batches are many. Predictions made
    after the likes were known are reported apart. Outcomes are stored in the [bold]evaluations[/] table; a rerun
    with nothing new writes nothing.

    [bold]Example:[/] igcli evaluate --db igcli.duckdb --since 2025-01-01
    """

    r = run_evaluate(db, model=model, since=since)
    if as_json:
        out.print_json(json.dumps(r.as_json(), default=str))
        return
    out.print(f"outcomes: {r.new:,} new, {r.updated:,} updated, {r.unchanged:,} unchanged", highlight=False)
    if not r.models:
        out.print("no stored prediction yet: run `igcli score POSTS` first", highlight=False)
    for m in r.models:
        if not m.blind["n"] and not m.informed:
            out.print(f"model {m.model_id}: no prediction has its likes yet ({m.waiting:,} wait for them)",
                      highlight=False)
            continue
        t = _metrics_table(f"model {m.model_id}: predictions made before the likes were known", "posts")
        _metrics_row(t, "model", m.blind)
        _metrics_row(t, "model, posts with history", m.with_history["model"])
        _metrics_row(t, "baseline: user's mean, earlier posts", m.with_history["user_mean"], "same posts")
        if m.usual:
            _metrics_row(t, "usual_likes", m.usual)
        if m.informed:
            _metrics_row(t, "scored after the likes were known", m.informed, "apart, not above")
        out.print(t)
        if m.periods:
            pt = Table(title=f"by {m.period} of scoring")
            for c in ("scored", "posts", "MAE", "±10%", "p10–p90 cover", "MAE, with history", "user's mean",
                      "usual_likes"):
                pt.add_column(c, justify="left" if c == "scored" else "right")
            for p in m.periods:
                pt.add_row(f"{p['start']:%Y-%m-%d %H:%M}" if m.period == "batch" else f"week of {p['start']:%Y-%m-%d}",
                           f"{p['n']:,}", _num(p["mae"]), _pct(p["within_10pct"]), _pct(p["coverage_p10_p90"]),
                           _num(p["model_mae_with_history"]), _num(p["user_mean_mae"]), _num(p["usual_mae"]))
            out.print(pt)
        notes = [f"{m.waiting:,} predictions wait for their likes"] if m.waiting else []
        if m.zero_likes:
            notes.append(f"{m.zero_likes:,} posts with 0 likes left out")
        if notes:
            out.print("; ".join(notes), highlight=False)


def _num(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


# ------------------------------------------------------------------------------------------ report

@app.command()
def report(
    db: DbOpt = DEFAULT_DB,
    model: Annotated[str, typer.Option(
        help="'latest', a model id under --exports (or recorded in the runs table), or a model directory.")
    ] = "latest",
    exports: ExportsOpt = Path("exports"),
    out_file: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """One self-contained HTML page of the store, the model and its last scores (no network, no other file).

    Store: posts, users, likes, rejects, images, backbones. Model: test metrics next to the baselines,
    predicted vs actual, calibration, error by history, branch combinations, object families. Last scores:
    the latest batch the model scored, its inputs' drift, the posts furthest above and below with their drivers.
    How past predictions turned out: realized error over time against the user's-mean baseline, coverage (after
    `igcli evaluate`). Sections without data are left out; with no trained model the page shows the store only.

    [bold]Example:[/] igcli report --db igcli.duckdb --model latest --out report.html
    """

    r = build_report(db, model=model, exports_dir=exports, out=out_file)
    for note in r.notes:
        err.print(err.styled("note:", "yellow"), note, highlight=False)
    out.print(f"wrote {r.path} ({r.bytes / 1024:,.0f} KiB: {', '.join(r.sections) or 'no section'})", highlight=False)
    out.print(r.summary, highlight=False, markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------ status

@app.command()
def status(db: DbOpt = DEFAULT_DB) -> None:
    """Rows per table, rejects, images by decode status and the latest runs.

    [bold]Example:[/] igcli status --db igcli.duckdb
    """

    s = store_status(db)
    t = Table(title=f"store {db}")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name, n in s["tables"].items():
        t.add_row(name, f"{n:,}")
    out.print(t)
    if s["internal_tables"]:
        out.print(f"and {len(s['internal_tables'])} internal tables (feature state and bookkeeping)")
    if s["images"]:
        out.print("images: " + ", ".join(f"{k} {v:,}" for k, v in s["images"].items()))
    for line in s["rejects"]:
        out.print(f"  reject {line}", markup=False)
    for run in s["runs"]:
        out.print(f"  run {run}")


def main() -> None:
    try:
        app()
    except IgcliError as e:
        err.print(err.styled("error:", "red"), str(e), highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: nothing from the unfinished step was committed")
        sys.exit(130)


if __name__ == "__main__":
    main()
