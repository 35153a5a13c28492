"""The ``igcli`` command line: a thin Typer shell over the library stages.

Each command parses options, calls one library function and renders the result with rich. Expected
failures (``IgcliError``) print one line to stderr and exit non-zero; nobody sees a traceback for them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from igcli.errors import IgcliError

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
out = Console()
err = Console(stderr=True)

DbOpt = Annotated[Path, typer.Option("--db", help="DuckDB store file.", show_default=True)]
DEFAULT_DB = Path("igcli.duckdb")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=True,
    )


class _Bars:
    """Adapts the library's ``progress(stage, done, total)`` callbacks to rich progress bars."""

    def __init__(self, unit: str = "img/s"):
        import time

        self._time = time
        self.unit = unit
        self.bar = _progress()
        self.tasks: dict[str, tuple[int, float]] = {}

    def __enter__(self):
        if err.is_terminal:
            self.bar.start()
        return self

    def __exit__(self, *exc):
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
    from igcli.sample import generate_sample

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
        Path | None, typer.Option(help="Folder image paths are relative to [default: the file's folder].")
    ] = None,
    encoding: Annotated[
        str | None, typer.Option(help="CSV encoding: utf-8, utf-16 or latin-1 [default: detect].")
    ] = None,
    db: DbOpt = DEFAULT_DB,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
) -> None:
    """Load posts into the store. Bad rows go to the [bold]rejects[/] table; good rows are upserted by post_id.

    Required columns: post_id, username, posted_at. Optional: caption, hashtags, mentions, likes, followers,
    following, user_post_count, image, observed_at. Counts accept 1,234 / 1.2k / 3m.

    [bold]Example:[/] igcli ingest demo/posts.csv --db igcli.duckdb
    """
    from igcli.ingest import ingest_posts

    with _Bars() as bars:
        r = ingest_posts(posts, db=db, images_dir=images, encoding=encoding, progress=bars)
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
    if r.ignored_columns:
        out.print(f"ignored unknown column(s): {', '.join(r.ignored_columns)}")
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
    from igcli.ingest import ingest_classes

    r = ingest_classes(classes, db=db)
    out.print(
        f"loaded {r.rows:,} class rows for {r.posts:,} posts ({r.posts_unknown:,} not in the store yet, "
        f"{r.rejected:,} rows rejected, {r.replaced:,} replaced) in {r.seconds:.2f}s"
    )


# ------------------------------------------------------------------------------------------ status

@app.command()
def status(db: DbOpt = DEFAULT_DB) -> None:
    """Rows per table, rejects, images by decode status and the latest runs.

    [bold]Example:[/] igcli status --db igcli.duckdb
    """
    from igcli.status import store_status

    s = store_status(db)
    t = Table(title=f"store {db}")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name, n in s["tables"].items():
        t.add_row(name, f"{n:,}")
    out.print(t)
    if s["images"]:
        out.print("images: " + ", ".join(f"{k} {v:,}" for k, v in s["images"].items()))
    for line in s["rejects"]:
        out.print(f"  reject {line}")
    for run in s["runs"]:
        out.print(f"  run {run}")


def main() -> None:
    try:
        app()
    except IgcliError as e:
        err.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted: nothing from the unfinished step was committed")
        sys.exit(130)


if __name__ == "__main__":
    main()
