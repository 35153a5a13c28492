"""The one image-open policy, used by ingest's probe, featurize (local and Ray decoders), the quality
features and the report's thumbnails: which files are opened at all, which formats reach Pillow, how many
pixels and bytes are accepted, EXIF orientation, and draft (reduced-scale) JPEG decoding.

- ``resolve_image``: a post's image reference, resolved inside the images folder (links out refused).
- ``probe_image`` / ``probe_many``: ingest's check (sha256, size, a full decode under the policy).
- ``open_image``: Pillow under the policy; ``open_rgb``: upright RGB for a model; ``decoded_batches``: the
  decode threads featurize runs beside the model; ``decode_shared``: one read and decode of a file for the
  model and a second consumer (the quality features), when both would decode the same pixels.

Images are never copied into the store; ``images`` records where each file is and whether it decodes.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from igcli.errors import InputError
from igcli.util import sha256_stream

# Raster formats worth opening. Pillow would also open EPS (by running Ghostscript), PSD, ICNS and a
# dozen more; nobody posts those, and the fewer parsers untrusted files reach, the better. MPO (multi-
# picture JPEG from some cameras) opens as JPEG.
IMAGE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF")
# Pillow's default MAX_IMAGE_PIXELS (about 0.25 GB as 24-bit RGB), pinned here so that a caller
# setting the global to None cannot switch the guard off.
MAX_PIXELS = 89_478_485
# Bytes of one image file: a posted photo is a few MB; a larger file is refused before it is read into memory.
MAX_BYTES = 64 * 1024 * 1024
CHANGED = "the file changed since it was ingested: run igcli ingest again"
# The images-table key of a refused reference (resolve_image): never the start of an absolute path.
UNSAFE_KEY = "unsafe_path:"


class ImageTooLarge(InputError):
    """An image declares more pixels than ``MAX_PIXELS`` (a likely decompression bomb), or is over ``MAX_BYTES``."""


class ImageUnreadable(InputError):
    """An image file is missing, empty, not a regular file, truncated or in a format Pillow cannot decode."""


def check_pixels(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageUnreadable(f"{name}: the image is {width}x{height} and has no pixels to measure.")
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit for a decompression bomb; downsize the image if it is genuine."
        )


def open_file(path: str | Path) -> BinaryIO:
    """An image file opened for reading: a regular file of at most ``MAX_BYTES``, not reached through a link
    at its last step (stored paths are resolved at ingest, so a link there was swapped in since), never
    waiting on a FIFO or device. ``ImageUnreadable`` / ``ImageTooLarge``, or ``OSError``, otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageUnreadable(f"{path}: image path is not a regular file")
        if st.st_size > MAX_BYTES:
            raise ImageTooLarge(f"{path}: the file is {st.st_size / 2**20:.0f} MiB, over the "
                                f"{MAX_BYTES / 2**20:.0f} MiB limit for an image")
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file under ``open_file``'s rules."""
    with open_file(path) as fh:
        return fh.read(MAX_BYTES + 1)


@contextmanager
def open_image(source: str | Path | BinaryIO, draft: tuple[str | None, Any] | None = None, name: str | None = None
               ) -> Iterator[tuple[Any, tuple[int, int]]]:
    """(a loaded Pillow image, its size in the file): one of ``IMAGE_FORMATS``, at most ``MAX_PIXELS``. With
    ``draft`` = (mode, size), a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale that stays at or above
    ``size`` (a pair, or a function of the file's size; mode None: the file's own). A path is opened with
    ``open_file``; ``name`` names an open file in messages. Decoder failures propagate."""

    name = str(source) if isinstance(source, str | Path) else name or "image"
    with (open_file(source) if isinstance(source, str | Path) else nullcontext(source)) as fh, \
            _header(fh, name) as img:
        size = img.size
        _draft(img, draft)
        img.load()
        yield img, size


@contextmanager
def _header(fh: BinaryIO, name: str) -> Iterator[Any]:
    """The image of an open file, its header read and its pixel count checked; nothing decoded yet."""
    with Image.open(fh, formats=IMAGE_FORMATS) as img:
        check_pixels(img.size, name)
        yield img


def _draft(img: Any, draft: tuple[str | None, Any] | None) -> None:
    if draft is not None and img.format in ("JPEG", "MPO"):
        img.draft(draft[0] or img.mode, draft[1](img.size) if callable(draft[1]) else draft[1])


def _draft_outcome(data: bytes, draft: tuple[str | None, Any] | None, name: str) -> tuple[str, tuple[int, int]]:
    """(mode, size) that ``open_image(draft=draft)`` decodes ``data`` at, from a second read of its header."""
    with _header(io.BytesIO(data), name) as img:
        _draft(img, draft)
        return img.mode, img.size


# ------------------------------------------------------------------------------------- ingest's probe
@dataclass(frozen=True)
class ImageProbe:
    path: str
    status: str  # ok | missing | corrupt | unsafe_path | not_a_file
    error: str | None = None
    sha256: str | None = None
    byte_size: int | None = None
    mtime_ns: int | None = None
    width: int | None = None
    height: int | None = None


def resolve_image(ref: str, images_dir: Path | str) -> tuple[str, str | None]:
    """Resolve ``ref`` against ``images_dir``; returns (key, refusal reason or None).

    The key is the absolute resolved path. A reference that leaves ``images_dir`` (``..``, an absolute
    path elsewhere, a symlink pointing out) is refused, keyed by its raw text after ``UNSAFE_KEY``: no
    resolved path starts so, so a refusal never replaces the row of a file that another folder's posts use
    (nor do the refused posts point at it).
    """
    base = _real_dir(str(images_dir))
    resolved = os.path.realpath(os.path.join(base, ref))  # follows symlinks: a link out is caught here
    if resolved != base and not resolved.startswith(base.rstrip(os.sep) + os.sep):
        return UNSAFE_KEY + ref, f"image path {ref!r} leaves the images folder {base}"
    return resolved, None


@lru_cache(maxsize=64)
def _real_dir(path: str) -> str:
    return os.path.realpath(path)


def probe_image(path: str) -> ImageProbe:
    """Hash and fully decode one file under the policy. Never raises for a bad image: the reason goes in
    ``error``. The file is opened once (``open_file``: a FIFO or a link swapped in after the ``stat`` is
    refused, not waited on or followed), hashed as a stream and decoded from the same descriptor, so the
    hash is of the bytes decoded and a large file is never held whole."""

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ImageProbe(path, "missing", "image file not found")
    except OSError as err:
        return ImageProbe(path, "missing", f"cannot read image file: {err.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return ImageProbe(path, "not_a_file", "image path is not a regular file")
    if st.st_size > MAX_BYTES:
        return ImageProbe(path, "corrupt", f"image file is {st.st_size / 2**20:.0f} MiB, over the "
                          f"{MAX_BYTES / 2**20:.0f} MiB limit", byte_size=st.st_size, mtime_ns=st.st_mtime_ns)
    try:
        fh = open_file(path)
    except ImageTooLarge as err:      # grew since the stat
        return ImageProbe(path, "corrupt", str(err), byte_size=st.st_size, mtime_ns=st.st_mtime_ns)
    except ImageUnreadable as err:    # swapped for a FIFO or a device since the stat
        return ImageProbe(path, "not_a_file", str(err))
    except OSError as err:            # ELOOP: swapped for a link since it was resolved
        return ImageProbe(path, "not_a_file", f"cannot open image file: {err.strerror}")
    with fh:
        try:
            st = os.fstat(fh.fileno())
            digest = sha256_stream(fh)
            fh.seek(0)
        except OSError as err:
            return ImageProbe(path, "missing", f"cannot read image file: {err.strerror}")
        common = {"sha256": digest, "byte_size": st.st_size, "mtime_ns": st.st_mtime_ns}
        if not st.st_size:
            return ImageProbe(path, "corrupt", "image file is empty (0 bytes)", **common)
        try:
            # a full decode checks every byte; a JPEG at 1/8 scale does it cheaply
            with open_image(fh, draft=("RGB", (1, 1)), name=path) as (_, (width, height)):
                pass
        except ImageTooLarge as err:
            return ImageProbe(path, "corrupt", str(err), **common)
        except UnidentifiedImageError:
            return ImageProbe(path, "corrupt", "not an image Pillow can read", **common)
        except (OSError, SyntaxError, ValueError, EOFError, InputError, Image.DecompressionBombError) as err:
            return ImageProbe(path, "corrupt", f"image does not decode: {err}", **common)
    return ImageProbe(path, "ok", None, width=width, height=height, **common)


def probe_many(
    paths: Iterable[str], workers: int | None = None, progress: Callable[[int], None] | None = None
) -> list[ImageProbe]:
    paths = list(paths)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    out: list[ImageProbe] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for probe in pool.map(probe_image, paths, chunksize=64):
            out.append(probe)
            if progress:
                progress(1)
    return out


# ------------------------------------------------------------------------ decode + resize for a model

def decoded_batches(
    paths: list[str],
    sha256s: list[str] | None,
    runner: Any,
    batch_size: int = 32,
    workers: int = 2,
    prefetch: int = 2,
    side: SideUse | None = None,
    side_names: list[str | None] | None = None,
) -> DecodedBatches:
    """Batches ``(x, reasons)``, in order: x (B, H, W, 3) uint8 for ``runner`` (its ``prepare`` and
    ``input_size``; the runner needs no session yet), reasons[i] "" or why image i could not be used (its
    x is zeros).

    ``workers`` threads start decoding and resizing at once, up to ``prefetch`` batches ahead of the
    consumer, while it runs the model on the current one (PIL and onnxruntime release the GIL). They run
    at background priority (``background_thread``), so they fill the cycles the model's threads leave idle
    instead of pre-empting them mid-operator; an image still queued when the consumer needs it is decoded
    by the consumer itself, so nothing waits on starved background threads. With
    ``sha256s`` a file whose content no longer matches its ingested hash is refused, so a row is never
    stored under the wrong image. Iterate it once; ``close()`` (also a context manager) stops the threads.

    With ``side`` (``SideUse``), an image whose ``side_names[i]`` is not None also gets the side's result from
    the same read and decode (``decode_shared``), computed in the same threads, and each batch is
    ``(x, reasons, extras)``: extras[i] the side's result, or None. ``second_decodes`` counts the images
    whose side needed a decode of its own (another JPEG draft scale).
    """
    return DecodedBatches(paths, sha256s, runner, batch_size, workers, prefetch, side, side_names)


class DecodedBatches:
    """The iterator ``decoded_batches`` returns; see there."""

    def __init__(self, paths: list[str], sha256s: list[str] | None, runner: Any, batch_size: int,
                 workers: int, prefetch: int, side: SideUse | None = None,
                 side_names: list[str | None] | None = None) -> None:

        self._paths, self._sha256s = paths, sha256s
        self._side, self._side_names = side, side_names
        if side is not None and (side_names is None or len(side_names) != len(paths)):
            raise ValueError("side_names must name every path (None: no side result for it)")
        self.second_decodes = 0  # images whose side decoded the file a second time
        self._h, self._w = runner.input_size
        self._min_side = math.ceil(max(self._h, self._w) / runner.data_config.get("crop_pct", 1.0))
        self._prepare = runner.prepare
        self._batch = batch_size
        self._starts = iter(range(0, len(paths), batch_size))
        self._pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="igcli-decode",
                                         initializer=background_thread) if workers > 0 else None)
        self._queue: deque = deque()
        self.inline = 0  # images the consumer decoded itself because no worker had started them
        if self._pool is not None:
            for _ in range(prefetch + 1):
                if not self._submit():
                    break

    def _one(self, i: int):
        sha = self._sha256s[i] if self._sha256s is not None else None
        name = self._side_names[i] if self._side is not None else None
        if name is None:
            return (*decode_image(self._paths[i], sha, self._prepare, self._min_side), None, False)
        return decode_shared(self._paths[i], sha, self._prepare, self._min_side, self._side, name)

    def _submit(self) -> bool:
        s = next(self._starts, None)
        if s is None:
            return False
        self._queue.append([(i, self._pool.submit(self._one, i))
                            for i in range(s, min(s + self._batch, len(self._paths)))])
        return True

    def _results(self, futures: list) -> list:
        mine = {}
        for i, future in futures:  # what no worker has started is decoded here, at the consumer's priority
            if not future.done() and future.cancel():
                self.inline += 1
                mine[i] = self._one(i)
        return [mine[i] if i in mine else future.result() for i, future in futures]

    def _collect(self, results: list):
        x = np.zeros((len(results), self._h, self._w, 3), dtype=np.uint8)
        for j, (arr, *_) in enumerate(results):
            if arr is not None:
                x[j] = arr
        reasons = [r[1] for r in results]
        if self._side is None:
            return x, reasons
        self.second_decodes += sum(r[3] for r in results)
        return x, reasons, [r[2] for r in results]

    def __iter__(self):
        try:
            if self._pool is None:
                for s in self._starts:
                    yield self._collect([self._one(i) for i in range(s, min(s + self._batch, len(self._paths)))])
                return
            while self._queue:
                futures = self._queue.popleft()
                self._submit()
                yield self._collect(self._results(futures))
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecodedBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def background_thread() -> None:
    """Put the calling thread in Linux's idle scheduling class: it runs only on a core nothing else at
    normal priority wants. Elsewhere (or where refused) the thread keeps its priority."""

    if sys.platform.startswith("linux"):
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass


def decode_image(path: str, sha256: str | None, prepare: Callable, min_side: int | None = None):
    """(H, W, 3) uint8 and "" , or (None, reason): a broken file is data, never an exception."""
    try:
        data = read_image_bytes(path)
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            return None, CHANGED
        return prepare(open_rgb(io.BytesIO(data), min_side)), ""
    except Exception as err:  # any decoder failure is data, not a crash
        return None, _decode_reason(err)


def _decode_reason(err: BaseException) -> str:
    return f"cannot decode image ({type(err).__name__}: {err})"[:500]


def unread_reason(err: Exception) -> str:
    """Why a file could not be read under ``open_file``'s rules (not a regular file, over the byte limit, an
    OS error), in the words ``image_feature_errors`` keeps for the quality features."""
    if isinstance(err, InputError):
        return str(err)
    return f"cannot read image file: {getattr(err, 'strerror', None) or err}"


class SideUse(Protocol):
    """A second consumer of the images ``decode_shared`` decodes for a model: featurize's quality features
    (``igcli.vision.quality.QUALITY_SIDE``). Its results are its own value, or a reason string."""

    def draft(self, size: tuple[int, int]) -> tuple[int, int]:
        """The JPEG draft size it asks for (mode: the file's own), given the size in the file."""

    def of_image(self, img: Any, size: tuple[int, int], name: str) -> Any:
        """Its result from the loaded image (size in the file), before the model's preprocessing; must not
        change ``img``."""

    def of_data(self, data: bytes, name: str) -> Any:
        """Its result from its own decode of the file's bytes (the model's draft scale differs from its own)."""

    def of_error(self, err: Exception, name: str) -> Any:
        """Its result when decoding at its own draft scale raised ``err``."""


def decode_shared(path: str, sha256: str | None, prepare: Callable, min_side: int | None, side: SideUse,
                  side_name: str) -> tuple[Any, str, Any, bool]:
    """``decode_image``'s (array, reason), then ``side``'s result from the same read and, where the JPEG draft
    scale both ask for is the same (always for a file that is not a JPEG, or that is at most
    ``min_side`` px a side), the same decode, and whether the side needed a decode of its own. ``side_name``
    names the file in the side's messages. The side sees exactly the pixels its own ``open_image`` would
    decode, so its results are those of a separate pass."""

    try:
        data = read_image_bytes(path)
    except Exception as err:
        return None, _decode_reason(err), unread_reason(err), False
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        return None, CHANGED, CHANGED, False
    same = None  # whether the side's own draft decodes the same pixels; None: not known yet
    try:
        with _header(io.BytesIO(data), "image") as img:  # "image": open_rgb's name for a file object
            size = img.size
            _draft(img, _model_draft(min_side))
            same = img.format not in ("JPEG", "MPO") or \
                (img.mode, img.size) == _draft_outcome(data, (None, side.draft), side_name)
            img.load()
    except Exception as err:  # any decoder failure is data, not a crash
        # Failed in decoding the pixels they share: the side's error is the same one. Failed before (the
        # header, the pixel limit: messages name the file) or at another scale: the side's own attempt.
        extra = side.of_error(err, side_name) if same else side.of_data(data, side_name)
        return None, _decode_reason(err), extra, same is False
    # the side first: the model's preprocessing turns an upright RGB image in place
    extra = side.of_image(img, size, side_name) if same else side.of_data(data, side_name)
    try:
        return prepare(_upright_rgb(img)), "", extra, not same
    except Exception as err:
        return None, _decode_reason(err), extra, not same


def open_rgb(path: str | Path | BinaryIO, min_side: int | None = None):
    """Open an image as upright RGB under the policy (``open_image``); large JPEGs decoded at reduced scale."""

    with open_image(path, draft=_model_draft(min_side)) as (img, _):
        return _upright_rgb(img)


def _model_draft(min_side: int | None) -> tuple[str, tuple[int, int]] | None:
    return ("RGB", (min_side, min_side)) if min_side else None


def _upright_rgb(img: Any) -> Any:
    """A loaded image as upright RGB, transparency flattened onto white; an upright RGB image is turned in
    place (the caller's image changes), else a new image is returned."""
    ImageOps.exif_transpose(img, in_place=True)  # no copy of an upright image (most of them)
    if img.mode != "RGB":
        if img.has_transparency_data:  # flatten onto white, as a page shows it
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("RGB")
    return img
