"""Image files: safe path resolution and a cheap probe (sha256, size, full decode check).

Images are never copied into the store; ``images`` records where each file is and whether it decodes.
Probing runs in a bounded thread pool: hashing and Pillow's decoder release the GIL.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Refuse images above this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 50_000_000


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
    path elsewhere, a symlink pointing out) is refused, keyed by its raw text.
    """
    base = _real_dir(str(images_dir))
    resolved = os.path.realpath(os.path.join(base, ref))  # follows symlinks: a link out is caught here
    if resolved != base and not resolved.startswith(base.rstrip(os.sep) + os.sep):
        return ref, f"image path {ref!r} leaves the images folder {base}"
    return resolved, None


@lru_cache(maxsize=64)
def _real_dir(path: str) -> str:
    return os.path.realpath(path)


def probe_image(path: str) -> ImageProbe:
    """Hash and fully decode one file. Never raises for a bad image: the reason goes in ``error``."""
    from PIL import Image, UnidentifiedImageError

    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ImageProbe(path, "missing", "image file not found")
    except OSError as err:
        return ImageProbe(path, "missing", f"cannot read image file: {err.strerror}")
    if not os.path.isfile(path):
        return ImageProbe(path, "not_a_file", "image path is not a regular file")
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        return ImageProbe(path, "missing", f"cannot read image file: {err.strerror}")
    common = {"sha256": hashlib.sha256(data).hexdigest(), "byte_size": len(data), "mtime_ns": st.st_mtime_ns}
    if not data:
        return ImageProbe(path, "corrupt", "image file is empty (0 bytes)", **common)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                return ImageProbe(
                    path, "corrupt", f"image is {width}x{height} pixels, over the {MAX_PIXELS:,} limit",
                    width=width, height=height, **common,
                )
            if img.format == "JPEG":
                img.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # checks every byte, cheaply
            img.load()
    except UnidentifiedImageError:
        return ImageProbe(path, "corrupt", "not an image Pillow can read", **common)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
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
