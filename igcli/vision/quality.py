"""Weight-free image quality features for the metadata branch (numpy + Pillow only).

Nothing here needs pretrained weights, a GPU or OpenCV, so the features exist for every post that has
a decodable image. Use it as a library::

    from igcli.vision.quality import QUALITY_FEATURES, quality_features_file, quality_features_many
    feats = quality_features_file(Path("post.jpg"))          # {"brightness": 0.43, ...}
    rows = quality_features_many(paths, workers=2)           # dict, or the exception, per path

The features, in ``QUALITY_FEATURES`` order:

``brightness``
    Mean Rec. 601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (Pillow's mode "L", rounded to whole
    levels), scaled to 0-1: black 0, white 1.
``contrast``
    Standard deviation of that luma, same 0-1 scale (RMS contrast; at most 0.5).
``saturation``
    Mean HSV saturation ``(max - min) / max`` per pixel, 0-1; 0 for black and grey pixels.
``colorfulness``
    Hasler & Suesstrunk (2003): with ``rg = R - G`` and ``yb = (R + G) / 2 - B`` on the 0-255 scale,
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)``. 0 for any grey image;
    their "highly colourful" level is 82, and a pure red/green checkerboard scores 293.
``sharpness``
    Variance of the 4-neighbour 3x3 Laplacian ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` of the 0-255
    luma (``cv2.Laplacian(gray, cv2.CV_64F).var()``, but over interior pixels only, with no border
    padding), measured on the working image described below. 0.0 for images under 3 px either way.
``entropy``
    Shannon entropy in bits of the 256-bin histogram of the luma rounded to integers: 0 for a flat
    image, 8 at most.
``aspect_ratio``
    Width / height of the original image as displayed: the full-size dimensions, not the working
    copy's, with an EXIF orientation of 5-8 (a phone photo stored sideways) swapping them.
``face_count``
    Frontal faces found by OpenCV's bundled Haar cascade, if ``cv2`` happens to be installed. It is
    never a dependency; without it the value is ``None``, never 0, because "no detector" must not
    read as "no faces". See ``face_detector_available()``.

Working size. Every feature except ``aspect_ratio`` is computed on a working copy whose longer side
is at most ``WORKING_SIZE`` (256) px: larger images are downsized (bilinear, antialiased), smaller ones
are used as they are, never upsampled, since interpolation would invent smoothness. This bounds the
cost per image whatever the input size, and it matters for ``sharpness``: the Laplacian's variance
depends on scale (downsizing a photo makes it look sharper per pixel), so it is only comparable
between images measured at the same working size, which is why that size is a fixed constant and not
an option. The other features move much less with it. ``quality_features_file`` also asks libjpeg to
decode large JPEGs at 1/2, 1/4 or 1/8 scale (``Image.draft``), staying at or above the working size:
a 12 MP photo then takes about 35 ms instead of 110 ms, and its features differ from a full decode by
up to about 2% (sharpness most), so training and scoring should both go through the same function.

Colour handling. Every mode becomes 8-bit RGB first: palette and grey images are expanded; anything
with transparency (RGBA, LA, PA, a palette or colour key with transparency) is composited onto white,
as a white page shows it; CMYK uses Pillow's conversion (embedded ICC profiles are not applied);
16-bit and 32-bit grey (``I;16``, ``I``, ``F``) are scaled from 0-65535 to 0-255, where Pillow's
own conversion would clip everything above 255 to white. Multi-frame files (GIF, APNG) use the first
frame.

Safety. An image declaring more than ``MAX_PIXELS`` pixels is refused with ``ImageTooLarge`` before
any pixel is decoded, whatever ``PIL.Image.MAX_IMAGE_PIXELS`` has been set to elsewhere; Pillow's own
``DecompressionBombError`` and (if warnings are errors) ``DecompressionBombWarning`` become the same
exception. Between 1x and 2x Pillow's limit Pillow still prints its warning before the refusal: turning
it into an error with a warnings filter is process-wide and not thread-safe, so this module does not.
Only the raster formats in ``IMAGE_FORMATS`` are opened. Files that cannot be opened or decoded raise
``ImageUnreadable``; ``quality_features_many`` returns both exceptions instead of raising, so a batch
can record the reason per file and carry on. Truncated files are an error as long as nobody sets
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` (a process-wide switch).
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from igcli.errors import IgcliError
from igcli.vision.decode import ImageTooLarge, ImageUnreadable, check_pixels, open_image

QUALITY_FEATURES: tuple[str, ...] = (
    "brightness",
    "contrast",
    "saturation",
    "colorfulness",
    "sharpness",
    "entropy",
    "aspect_ratio",
    "face_count",
)

WORKING_SIZE = 256

_WHITE = (255, 255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HAAR_FILE = "haarcascade_frontalface_default.xml"


def quality_features(img: Image.Image) -> dict[str, float | None]:
    """The ``QUALITY_FEATURES`` of an image, in that order; only ``face_count`` can be ``None``.

    ``img`` is not modified. For files prefer ``quality_features_file``, which also decodes large
    JPEGs at reduced size.
    """
    check_pixels(img.size, _describe(img))
    work, aspect_ratio = _prepare(img, img.size)
    return _features(work, aspect_ratio)


def quality_features_file(path: Path) -> dict[str, float | None]:
    """``quality_features`` of an image file; raises ``ImageUnreadable`` or ``ImageTooLarge``."""
    return _features_of(Path(path), Path(path))


def _features_of(source: Path | BinaryIO, name: Path | str) -> dict[str, float | None]:
    try:
        # Decode at 1/2, 1/4 or 1/8 scale while staying at or above the working size.
        with open_image(source, draft=(None, _working_size), name=str(name)) as (img, original_size):
            work, aspect_ratio = _prepare(img, original_size)
    except Exception as exc:
        err = _quality_error(exc, name)
        if err is exc:
            raise
        raise err from exc
    return _features(work, aspect_ratio)


def _quality_error(exc: Exception, name: Path | str) -> Exception:
    """The exception ``quality_features_file`` raises for ``exc`` raised in decoding the file ``name``."""
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return ImageTooLarge(f"{name}: {exc} Refusing to decode it; downsize the image if it is genuine.")
    if isinstance(exc, IgcliError):
        return exc
    # Corrupt files reach Pillow's decoders with OSError, SyntaxError, ValueError, EOFError,
    # struct.error, zlib.error and more; none of them may stop a batch.
    return ImageUnreadable(f"{name}: cannot decode image ({type(exc).__name__}: {exc})")


class _QualitySide:
    """The quality features as ``decode_shared``'s side: featurize's decode threads compute them from the
    image they decode for a backbone, with the results ``quality_features_many`` gives (a dict, or for an
    image that cannot be used the exception's message)."""

    def draft(self, size: tuple[int, int]) -> tuple[int, int]:
        return _working_size(size)

    def of_image(self, img: Image.Image, size: tuple[int, int], name: str) -> dict[str, float | None] | str:
        try:
            work, aspect_ratio = _prepare(img, size)
        except Exception as exc:
            return str(_quality_error(exc, name))
        return _features(work, aspect_ratio)

    def of_data(self, data: bytes, name: str) -> dict[str, float | None] | str:
        try:
            return _features_of(io.BytesIO(data), name)
        except (ImageUnreadable, ImageTooLarge) as exc:
            return str(exc)

    def of_error(self, err: Exception, name: str) -> str:
        return str(_quality_error(err, name))


QUALITY_SIDE = _QualitySide()


def quality_features_many(paths: Sequence[Path], workers: int = 2) -> list[dict[str, float | None] | Exception]:
    """``quality_features_file`` for each path, in order, on ``workers`` threads.

    Threads pay off because Pillow releases the GIL while decoding. An image that cannot be used
    comes back as its ``ImageUnreadable`` / ``ImageTooLarge`` exception instead of a dict; any other
    exception is a bug and propagates.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")

    def one(path: Path) -> dict[str, float | None] | Exception:
        try:
            return quality_features_file(path)
        except (ImageUnreadable, ImageTooLarge) as exc:
            return exc

    if workers == 1 or len(paths) <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(paths))) as pool:
        return list(pool.map(one, paths))


def face_detector_available() -> bool:
    """Whether ``face_count`` will be a number: ``cv2`` is importable and ships its Haar cascade."""
    return _haar_cascade_path() is not None


# --- decoding ----------------------------------------------------------------------------------


def _describe(img: Image.Image) -> str:
    return str(getattr(img, "filename", "") or f"<{img.mode} image>")


def _working_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    longest = max(width, height)
    if longest <= WORKING_SIZE:
        return width, height
    scale = WORKING_SIZE / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block must not cost the image its features
        return 1


def _as_l_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """The same picture in mode L, RGB or RGBA, 8 bits per channel."""
    if img.mode.startswith("I") or img.mode == "F":
        values = np.asarray(img, dtype=np.float32)  # (H, W)
        if values.size and values.max() > 255:
            values = values / 257.0  # 16-bit range; Pillow's convert("L") would clip instead
        return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8))
    if img.has_transparency_data:
        return img if img.mode == "RGBA" else img.convert("RGBA")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("RGB")


def _prepare(img: Image.Image, original_size: tuple[int, int]) -> tuple[Image.Image, float]:
    """The working copy in mode RGB, upright, transparency flattened onto white, and the displayed
    aspect ratio of the original."""
    orientation = _orientation(img)
    width, height = original_size
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    work = _as_l_rgb_or_rgba(img)
    size = _working_size(work.size)
    if size != work.size:
        work = work.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if work.mode == "RGBA":
        work = Image.alpha_composite(Image.new("RGBA", work.size, _WHITE), work)
    if work.mode != "RGB":
        work = work.convert("RGB")
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        # Only the face detector cares which way is up; the other features are rotation invariant.
        work = work.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    return work, width / height


# --- features ----------------------------------------------------------------------------------


class _Scratch(threading.local):
    """Per-thread float32 buffers big enough for any working image.

    Fresh 100-400 kB temporaries per image cost more in page faults than the arithmetic does (glibc
    returns freed memory to the OS and touches it anew), so every array op below writes into these.
    Integer-valued data (pixel differences, their squares, the Laplacian) is exact in float32, and
    the sums are taken in float64, so the statistics are exact too.
    """

    def __init__(self) -> None:
        self.buf = np.empty((4, WORKING_SIZE * WORKING_SIZE), dtype=np.float32)


_scratch = _Scratch()
_LEVELS = np.arange(256, dtype=np.float64)


def _sum(x: np.ndarray) -> float:
    return float(np.add.reduce(x, axis=None, dtype=np.float64))


def _sum_and_sum_of_squares(x: np.ndarray) -> tuple[float, float]:
    """Sum, then sum of squares, of ``x``; squares ``x`` in place."""
    total = _sum(x)
    np.square(x, out=x)
    return total, _sum(x)


def _features(work: Image.Image, aspect_ratio: float) -> dict[str, float | None]:
    luma = work.convert("L")  # Pillow's Rec. 601 luma, rounded to integers
    counts = np.asarray(luma.histogram(), dtype=np.float64)  # (256,)
    luma8 = np.asarray(luma)  # (H, W) uint8
    rgb = np.asarray(work)  # (H, W, 3) uint8
    height, width = luma8.shape
    n = height * width

    p = counts / n
    brightness = _LEVELS @ p
    contrast = np.sqrt(max(0.0, (_LEVELS**2) @ p - brightness**2))
    nonzero = p[p > 0]
    entropy = float(-(nonzero * np.log2(nonzero)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0

    r, g, b, t = (row[:n].reshape(height, width) for row in _scratch.buf)  # (H, W) float32 each
    np.copyto(r, rgb[..., 0])
    np.copyto(g, rgb[..., 1])
    np.copyto(b, rgb[..., 2])

    np.subtract(r, g, out=t)  # rg
    rg_sum, rg_sq = _sum_and_sum_of_squares(t)
    np.add(r, g, out=t)  # 2 * yb = R + G - 2B, to stay integer
    t -= b
    t -= b
    yb_sum, yb_sq = _sum_and_sum_of_squares(t)
    rg_mean, yb_mean = rg_sum / n, yb_sum / (2 * n)
    rg_var = max(0.0, rg_sq / n - rg_mean**2)
    yb_var = max(0.0, yb_sq / (4 * n) - yb_mean**2)
    colorfulness = np.sqrt(rg_var + yb_var) + 0.3 * np.hypot(rg_mean, yb_mean)

    np.maximum(r, g, out=t)
    np.maximum(t, b, out=t)  # HSV value
    np.minimum(r, g, out=r)
    np.minimum(r, b, out=r)
    np.subtract(t, r, out=r)  # chroma
    np.maximum(t, 1.0, out=t)  # chroma is 0 wherever the value is 0
    np.divide(r, t, out=r)
    saturation = _sum(r) / n

    return {
        "brightness": float(brightness) / 255.0,
        "contrast": float(contrast) / 255.0,
        "saturation": saturation,
        "colorfulness": float(colorfulness),
        "sharpness": _laplacian_variance(luma8),
        "entropy": entropy,
        "aspect_ratio": aspect_ratio,
        "face_count": _face_count(luma8),
    }


def _laplacian_variance(luma8: np.ndarray) -> float:
    height, width = luma8.shape
    if height < 3 or width < 3:
        return 0.0
    inner = (height - 2, width - 2)
    m = inner[0] * inner[1]
    luma = _scratch.buf[0, : height * width].reshape(height, width)
    laplacian = _scratch.buf[1, :m].reshape(inner)
    centre4 = _scratch.buf[2, :m].reshape(inner)
    np.copyto(luma, luma8)
    np.add(luma[:-2, 1:-1], luma[2:, 1:-1], out=laplacian)
    laplacian += luma[1:-1, :-2]
    laplacian += luma[1:-1, 2:]
    np.multiply(luma[1:-1, 1:-1], 4.0, out=centre4)
    laplacian -= centre4
    total, squares = _sum_and_sum_of_squares(laplacian)
    return max(0.0, squares / m - (total / m) ** 2)


# --- optional face detector --------------------------------------------------------------------

_detectors = threading.local()  # OpenCV does not promise a CascadeClassifier is safe across threads


@functools.cache
def _haar_cascade_path() -> str | None:
    try:
        import cv2
    except ImportError:
        return None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder:
        return None  # distro builds of OpenCV do not ship cv2.data
    path = os.path.join(folder, _HAAR_FILE)
    if not os.path.isfile(path) or cv2.CascadeClassifier(path).empty():
        return None
    return path


def _face_count(gray: np.ndarray) -> float | None:
    path = _haar_cascade_path()
    if path is None:
        return None
    import cv2

    cached = getattr(_detectors, "cascade", None)
    if cached is None or cached[0] != path:
        cached = _detectors.cascade = (path, cv2.CascadeClassifier(path))
    # 20 px is the cascade's native window: about 8% of the 256 px working image.
    faces = cached[1].detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
    return float(len(faces))
