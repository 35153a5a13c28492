"""igcli.vision.quality on synthetic images: known values, every input mode, broken files, bombs."""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
import threading
import time
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

import igcli.vision.quality as iq
from igcli.vision.quality import (
    QUALITY_FEATURES,
    ImageTooLarge,
    ImageUnreadable,
    face_detector_available,
    quality_features,
    quality_features_file,
    quality_features_many,
)


def _noise(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def _checker(size: tuple[int, int], a: tuple[int, int, int], b: tuple[int, int, int]) -> Image.Image:
    yy, xx = np.mgrid[: size[1], : size[0]]
    cells = ((yy + xx) % 2 == 0)[..., None]
    return Image.fromarray(np.where(cells, np.array(a, np.uint8), np.array(b, np.uint8)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit, 2-colour palette PNG of ``width`` x ``height``, all index 0, built row by row
    so that the full image never exists in memory."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    rows_per_chunk = 1000
    idat = []
    for start in range(0, height, rows_per_chunk):
        idat.append(packer.compress(row * min(rows_per_chunk, height - start)))
    idat.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 3, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"PLTE", bytes([0, 0, 0, 255, 255, 255]))
        + _png_chunk(b"IDAT", b"".join(idat))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture
def bomb_20k(tmp_path: Path) -> Path:
    data = _bomb_png(20_000, 20_000)
    assert len(data) < 200_000, f"bomb fixture is {len(data)} bytes; it should compress to a few KB"
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    return path


@pytest.fixture
def no_cv2(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    iq._haar_cascade_path.cache_clear()
    yield
    iq._haar_cascade_path.cache_clear()


# --- values ------------------------------------------------------------------------------------


def test_returns_every_feature_in_order_as_floats():
    feats = quality_features(_noise((64, 48)))
    assert tuple(feats) == QUALITY_FEATURES
    assert len(QUALITY_FEATURES) == 8
    for name in QUALITY_FEATURES[:-1]:
        assert type(feats[name]) is float, name


def test_black_and_white_brightness():
    black = quality_features(Image.new("RGB", (40, 30), (0, 0, 0)))
    white = quality_features(Image.new("RGB", (40, 30), (255, 255, 255)))
    assert black["brightness"] == 0.0
    assert white["brightness"] == 1.0
    assert black["contrast"] == white["contrast"] == 0.0


def test_mid_grey_and_half_black_half_white():
    grey = quality_features(Image.new("RGB", (10, 10), (51, 51, 51)))
    assert grey["brightness"] == pytest.approx(0.2)
    halves = np.zeros((10, 10), np.uint8)
    halves[:, 5:] = 255
    feats = quality_features(Image.fromarray(halves))
    assert feats["brightness"] == pytest.approx(0.5)
    assert feats["contrast"] == pytest.approx(0.5)  # the largest RMS contrast there is
    assert feats["entropy"] == pytest.approx(1.0)


def test_entropy_flat_is_zero_and_uniform_noise_is_eight_bits():
    assert quality_features(Image.new("RGB", (64, 64), (90, 20, 200)))["entropy"] == 0.0
    # 256 x 256 is the working size, so no resampling smooths the histogram.
    noise = quality_features(_noise((256, 256), mode="L"))["entropy"]
    assert noise == pytest.approx(8.0, abs=0.01)
    assert noise <= 8.0


def test_grey_has_no_colour_and_a_red_green_checker_has_plenty():
    grey = quality_features(_checker((64, 64), (30, 30, 30), (200, 200, 200)))
    assert grey["colorfulness"] == pytest.approx(0.0, abs=1e-9)
    assert grey["saturation"] == 0.0
    checker = quality_features(_checker((64, 64), (255, 0, 0), (0, 255, 0)))
    # rg = +-255: std 255, mean 0; yb = 127.5 everywhere: std 0, mean 127.5.
    assert checker["colorfulness"] == pytest.approx(255 + 0.3 * 127.5)
    assert checker["colorfulness"] > 82  # Hasler & Suesstrunk's "highly colourful"
    assert checker["saturation"] == pytest.approx(1.0)


def test_saturation_of_a_known_colour():
    # HSV saturation of (200, 100, 50) is (200 - 50) / 200.
    assert quality_features(Image.new("RGB", (8, 8), (200, 100, 50)))["saturation"] == pytest.approx(0.75)


def test_blurring_lowers_sharpness():
    sharp = _checker((128, 128), (0, 0, 0), (255, 255, 255)).resize((256, 256), Image.Resampling.NEAREST)
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    s_sharp = quality_features(sharp)["sharpness"]
    s_blurred = quality_features(blurred)["sharpness"]
    assert s_blurred < 0.2 * s_sharp
    assert quality_features(Image.new("L", (50, 50), 128))["sharpness"] == 0.0


def test_sharpness_matches_the_laplacian_definition():
    luma = np.asarray(_noise((31, 17), seed=3, mode="L")).astype(np.float64)
    lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    got = quality_features(Image.fromarray(luma.astype(np.uint8)))["sharpness"]
    assert got == pytest.approx(lap.var(), rel=1e-9)


def test_large_images_are_measured_on_a_256px_working_copy():
    big = _noise((1024, 512), seed=1).filter(ImageFilter.GaussianBlur(1))
    working = big.resize((256, 128), Image.Resampling.BILINEAR, reducing_gap=2.0)
    got, expected = quality_features(big), quality_features(working)
    assert got["sharpness"] == pytest.approx(expected["sharpness"])
    assert got["aspect_ratio"] == 2.0  # from the original, not the working copy
    # Downsizing averages noise away, so measuring at full size would give a different sharpness.
    luma = np.asarray(big.convert("L")).astype(np.float64)
    full_size = (luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]).var()
    assert got["sharpness"] != pytest.approx(full_size, rel=0.1)


def test_tiny_images_do_not_break():
    feats = quality_features(Image.new("RGB", (2, 1), (10, 20, 30)))
    assert feats["sharpness"] == 0.0
    assert feats["aspect_ratio"] == 2.0


def test_aspect_ratio_of_original_and_exif_rotation(tmp_path: Path):
    assert quality_features(Image.new("RGB", (300, 100)))["aspect_ratio"] == 3.0
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: displays as 100 wide, 300 tall
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (300, 100), (90, 90, 90)).save(path, exif=exif)
    assert quality_features_file(path)["aspect_ratio"] == pytest.approx(1 / 3)


# --- input modes -------------------------------------------------------------------------------


def _assert_same_features(got: dict, expected: dict) -> None:
    for name in ("brightness", "contrast", "saturation", "colorfulness", "sharpness", "entropy"):
        assert got[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name


def test_grey_rgba_palette_cmyk_and_16bit_match_their_rgb_equivalent():
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    expected = quality_features(Image.fromarray(rgb))

    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    _assert_same_features(quality_features(Image.fromarray(opaque, "RGBA")), expected)

    cmyk = np.dstack([255 - rgb, np.zeros(rgb.shape[:2], np.uint8)])  # K = 0: C = 255 - R, ...
    _assert_same_features(quality_features(Image.fromarray(cmyk, "CMYK")), expected)

    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (40, 60), dtype=np.uint8)
    indexed = Image.fromarray(index, "L")
    indexed = indexed.convert("P")
    indexed.putpalette(palette.ravel().tolist())
    _assert_same_features(quality_features(indexed), quality_features(Image.fromarray(palette[index])))

    grey = rgb[..., 1]
    grey_rgb = quality_features(Image.fromarray(np.dstack([grey] * 3)))
    _assert_same_features(quality_features(Image.fromarray(grey)), grey_rgb)
    # 16-bit grey: 257 * v is v on the 8-bit scale (Pillow's own convert would clip it to 255).
    deep = Image.frombytes("I;16", (60, 40), (grey.astype("<u2") * 257).tobytes())
    _assert_same_features(quality_features(deep), grey_rgb)
    assert quality_features(deep)["brightness"] == pytest.approx(grey.mean() / 255, abs=1e-3)


def test_16bit_png_and_1bit_files(tmp_path: Path):
    deep = Image.frombytes("I;16", (8, 8), (np.full(64, 32896, "<u2")).tobytes())  # 128 * 257
    deep.save(tmp_path / "deep.png")
    assert quality_features_file(tmp_path / "deep.png")["brightness"] == pytest.approx(128 / 255)
    Image.new("1", (8, 8), 1).save(tmp_path / "bits.png")
    assert quality_features_file(tmp_path / "bits.png")["brightness"] == 1.0


def test_transparency_is_flattened_onto_white():
    clear = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    assert quality_features(clear)["brightness"] == 1.0
    half = Image.new("LA", (10, 10), (0, 128))
    assert quality_features(half)["brightness"] == pytest.approx(127 / 255, abs=0.005)
    keyed = Image.new("P", (10, 10), 0)
    keyed.putpalette([0, 0, 0, 255, 0, 0])
    keyed.info["transparency"] = 0
    assert quality_features(keyed)["brightness"] == 1.0


def test_the_input_image_is_not_changed(tmp_path: Path):
    path = tmp_path / "big.jpg"
    _noise((1000, 800)).save(path)
    with Image.open(path) as img:
        quality_features(img)
        assert img.size == (1000, 800)
        assert img.mode == "RGB"


# --- files and batches -------------------------------------------------------------------------


def test_jpeg_round_trip_through_many(tmp_path: Path):
    img = _checker((16, 12), (250, 40, 40), (40, 40, 250)).resize((256, 192), Image.Resampling.NEAREST)
    path = tmp_path / "post.jpg"
    img.save(path, quality=95)
    [feats] = quality_features_many([path])
    assert isinstance(feats, dict)
    expected = quality_features(img)
    assert feats["brightness"] == pytest.approx(expected["brightness"], abs=0.02)
    assert feats["colorfulness"] == pytest.approx(expected["colorfulness"], rel=0.1)
    assert feats["aspect_ratio"] == pytest.approx(256 / 192)


def test_large_jpeg_is_decoded_at_reduced_size_and_keeps_its_values(tmp_path: Path):
    img = _checker((40, 30), (230, 180, 20), (20, 60, 120)).resize((4000, 3000), Image.Resampling.NEAREST)
    path = tmp_path / "camera.jpg"
    img.save(path, quality=90)
    feats = quality_features_file(path)
    assert feats["aspect_ratio"] == pytest.approx(4 / 3)
    assert feats["brightness"] == pytest.approx(np.asarray(img.convert("L")).mean() / 255, abs=0.01)
    with Image.open(path) as probe:  # what draft does for the working size: 1/8 scale, 500 x 375
        probe.draft(probe.mode, iq._working_size(probe.size))
        assert probe.size == (500, 375)


def test_broken_files_come_back_as_exceptions(tmp_path: Path):
    good = tmp_path / "good.jpg"
    _noise((200, 150)).save(good, quality=90)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    missing = tmp_path / "missing.jpg"
    pnm = tmp_path / "odd.ppm"
    _noise((8, 8)).save(pnm)  # a format Pillow reads but IMAGE_FORMATS does not allow

    results = quality_features_many([good, empty, truncated, missing, pnm], workers=2)
    assert isinstance(results[0], dict)
    for result, path in zip(results[1:], (empty, truncated, missing, pnm), strict=True):
        assert isinstance(result, ImageUnreadable), path
        assert path.name in str(result)
    assert "truncated" in str(results[2])


def test_decompression_bomb_is_refused_quickly(bomb_20k: Path):
    start = time.perf_counter()
    [result] = quality_features_many([bomb_20k])
    assert time.perf_counter() - start < 1.0
    assert isinstance(result, ImageTooLarge)
    assert "bomb.png" in str(result)


def test_bomb_is_refused_even_with_pillows_limit_switched_off(bomb_20k: Path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        quality_features_file(bomb_20k)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("action", ["ignore", "error"])
def test_bomb_in_pillows_warning_band_is_an_error(tmp_path: Path, action: str):
    path = tmp_path / "warn.png"
    path.write_bytes(_bomb_png(10_000, 10_000))  # 100 MP: between 1x and 2x Pillow's limit
    with warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLarge):
            quality_features_file(path)


def test_bomb_fixture_is_a_real_png():
    img = Image.open(io.BytesIO(_bomb_png(64, 32)))
    img.load()
    assert (img.size, img.mode) == ((64, 32), "P")


def test_many_keeps_order_and_threads_do_not_share_buffers(tmp_path: Path):
    paths = []
    for i in range(12):
        path = tmp_path / f"{i}.png"
        _noise((256 - 10 * i, 100 + 7 * i), seed=i).filter(ImageFilter.GaussianBlur(i % 3)).save(path)
        paths.append(path)
    sequential = [quality_features_file(p) for p in paths]
    assert quality_features_many(paths, workers=4) == sequential
    assert len({round(f["sharpness"], 6) for f in sequential}) == len(paths)
    with pytest.raises(ValueError, match="workers"):
        quality_features_many(paths, workers=0)


# --- faces -------------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("cv2") is not None, reason="OpenCV is installed here")
def test_face_count_is_none_without_opencv_installed():
    iq._haar_cascade_path.cache_clear()
    assert face_detector_available() is False
    assert quality_features(_noise((32, 32)))["face_count"] is None


def test_face_count_is_none_when_cv2_cannot_be_imported(no_cv2):
    assert face_detector_available() is False
    assert quality_features(_noise((32, 32)))["face_count"] is None


def test_face_count_uses_the_bundled_cascade_when_cv2_exists(tmp_path: Path, monkeypatch):
    (tmp_path / "haarcascade_frontalface_default.xml").write_text("<opencv_storage/>")
    seen = []

    class FakeCascade:
        def __init__(self, path: str):
            self.path = path

        def empty(self) -> bool:
            return False

        def detectMultiScale(self, gray, **kwargs):  # noqa: N802 - OpenCV's name
            seen.append((self.path, gray.shape, gray.dtype))
            return [(0, 0, 24, 24), (40, 40, 30, 30)]

    fake = types.ModuleType("cv2")
    fake.data = types.SimpleNamespace(haarcascades=str(tmp_path) + "/")
    fake.CascadeClassifier = FakeCascade
    monkeypatch.setitem(sys.modules, "cv2", fake)
    monkeypatch.setattr(iq, "_detectors", threading.local())
    iq._haar_cascade_path.cache_clear()
    try:
        assert face_detector_available() is True
        # Stored sideways: the detector must see the upright 85 x 256 working image.
        exif = Image.Exif()
        exif[0x0112] = 6
        path = tmp_path / "portrait.jpg"
        Image.new("RGB", (300, 100), (120, 110, 100)).save(path, exif=exif)
        assert quality_features_file(path)["face_count"] == 2.0
        assert seen[-1][1:] == ((256, 85), np.dtype(np.uint8))
        assert seen[-1][0].endswith("haarcascade_frontalface_default.xml")
    finally:
        iq._haar_cascade_path.cache_clear()
