"""One read and decode per image for the quality features and the backbone (``igcli.vision.decode.decode_shared``):
the stored rows are those of the two-pass flow (quality in a pass of its own, then the backbone), bit for bit.

The backbone is timm's tiny ``test_efficientnet`` (random weights) for both roles, so the file runs in
seconds; ``decode_shared`` is also checked at EfficientNet-Lite0's decode size (256 px).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcli import store
from igcli.commands.featurize import featurize_images
from igcli.commands.ingest import ingest_posts
from igcli.engines.local import LocalEngine
from igcli.features.images import ImageFeatureOptions
from igcli.vision.decode import CHANGED, decode_image, decode_shared
from igcli.vision.quality import QUALITY_SIDE, quality_features_file

DEV = Path("/work/shared/data/instagram-dev")
LITE0_MIN_SIDE = 256  # ceil(224 / crop_pct 0.875)


def _photo(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth picture with noise, so draft scales and the Laplacian give distinct values."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) % 256)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)  # (H, W, 3)


def _make_images(folder: Path) -> dict[str, str]:
    """name -> what it exercises."""
    folder.mkdir(parents=True)
    made = {}

    def save(name: str, img: Image.Image, why: str, **kw) -> None:
        img.save(folder / name, **kw)
        made[name] = why

    save("small.jpg", Image.fromarray(_photo(40, 32, 1)), "small RGB JPEG, no draft", quality=90)
    save("large.jpg", Image.fromarray(_photo(1200, 900, 2)), "draft at one scale for both", quality=90)
    save("panorama.jpg", Image.fromarray(_photo(2000, 400, 3)), "draft scales differ: second decode", quality=90)
    save("grey.jpg", Image.fromarray(_photo(300, 300, 4)).convert("L"), "grey JPEG", quality=90)
    save("cmyk.jpg", Image.fromarray(_photo(64, 48, 5)).convert("CMYK"), "CMYK JPEG", quality=90)
    rgba = Image.fromarray(_photo(50, 50, 6)).convert("RGBA")
    rgba.putalpha(Image.fromarray((np.arange(2500).reshape(50, 50) % 256).astype(np.uint8)))
    save("alpha.png", rgba, "PNG with alpha")
    pal = Image.fromarray(_photo(48, 40, 7)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", pal, "palette PNG with a transparent index", transparency=3)
    save("grey16.png", Image.fromarray(_photo(60, 40, 8)[..., 0].astype(np.uint16) * 257), "16-bit grey PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees to show
    save("rotated.jpg", Image.fromarray(_photo(600, 400, 9)), "EXIF orientation 6, draft", quality=90, exif=exif)
    save("changed.jpg", Image.fromarray(_photo(40, 40, 10)), "rewritten after ingest", quality=90)
    save("deleted.jpg", Image.fromarray(_photo(40, 40, 11)), "removed after ingest", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    made["broken.jpg"] = "corrupt at ingest"
    shutil.copy(folder / "large.jpg", folder / "large_copy.jpg")
    made["large_copy.jpg"] = "duplicate content"
    return made


def _store(tmp_path: Path, name: str, csv: Path):
    con = store.connect(tmp_path / f"{name}.duckdb")
    ingest_posts(csv, con=con)
    return con


@pytest.fixture
def stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two stores of the same posts and images, ingested before two of the files change."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder = tmp_path / "data" / "img"
    made = _make_images(folder)
    rows = [f"p{i},user{i % 3},2017-04-{i + 1:02d},,,,{10 * i},img/{name}" for i, name in enumerate(made)]
    csv = tmp_path / "data" / "posts.csv"
    csv.write_text("post_id,username,posted_at,caption,hashtags,mentions,likes,image\n" + "\n".join(rows) + "\n")
    old, new = _store(tmp_path, "old", csv), _store(tmp_path, "new", csv)
    Image.fromarray(_photo(40, 40, 12)).save(folder / "changed.jpg", quality=90)
    os.remove(folder / "deleted.jpg")
    yield old, new
    old.close()
    new.close()


class TwoPassEngine(LocalEngine):
    """The local engine without the shared decode: quality in a pass of its own, as before."""

    shares_decode = False


def options(**kw) -> ImageFeatureOptions:
    base = dict(objects="test_efficientnet", aesthetics="test_efficientnet", random_init=True, batch_size=4,
                workers=2, device="cpu")
    return ImageFeatureOptions(**{**base, **kw})


STORED = {  # every stored column but the time it was written
    "image_quality": "SELECT * EXCLUDE (computed_at) FROM image_quality ORDER BY sha256",
    "image_classes": "SELECT * FROM image_classes ORDER BY sha256, backbone, weights_fp, rank",
    "image_embeddings": "SELECT * EXCLUDE (computed_at) FROM image_embeddings ORDER BY sha256, backbone, weights_fp",
    "image_feature_errors": "SELECT * EXCLUDE (failed_at) FROM image_feature_errors ORDER BY ALL",
}


def stored(con) -> dict[str, list]:
    return {table: con.execute(sql).fetchall() for table, sql in STORED.items()}


def test_shared_decode_stores_the_two_pass_rows_bit_for_bit(stores):
    old, new = stores
    two_pass = featurize_images(old, options(engine=TwoPassEngine()))
    shared = featurize_images(new, options())
    before, after = stored(old), stored(new)
    assert before == after
    # the set covers what it claims: rows and errors of both kinds, one file per reason
    assert len(after["image_quality"]) == 9 and len(after["image_embeddings"]) == 9  # 11 ingested, 2 changed
    reasons = {(b, r) for _, b, _, r in after["image_feature_errors"]}
    assert ("quality", CHANGED) in reasons and ("test_efficientnet", CHANGED) in reasons
    assert any(b == "quality" and r.startswith("cannot read image file:") for b, r in reasons)
    assert (shared.quality_computed, shared.quality_failed) == (two_pass.quality_computed, two_pass.quality_failed)
    assert shared.quality_shared == 11  # every pending image went through the backbone's decode
    assert shared.quality_second_decodes == 1  # the panorama: 1/4 scale for quality, 1/2 for the model
    # a rerun is a no-op
    again = featurize_images(new, options())
    assert again.quality_computed == again.quality_failed == 0
    assert [b.images_run + b.images_failed for b in again.backbones] == [0, 0]
    assert stored(new) == after


def test_quality_rows_alone_are_recomputed_and_skip_backbones_runs(stores):
    """A store whose embeddings exist but whose quality rows do not gets them from the quality pass; without
    backbones the quality pass alone gives the same rows."""
    old, new = stores
    featurize_images(new, options())
    want = stored(new)
    new.execute("DELETE FROM image_quality")
    new.execute("DELETE FROM image_feature_errors WHERE backbone = 'quality'")
    res = featurize_images(new, options())
    assert (res.quality_computed, res.quality_failed, res.quality_shared) == (9, 2, 0)
    assert [b.images_run for b in res.backbones] == [0, 0]
    assert stored(new) == want
    alone = featurize_images(old, options(skip_backbones=True))
    assert (alone.quality_computed, alone.backbones) == (9, [])
    assert stored(old)["image_quality"] == want["image_quality"]


@pytest.mark.parametrize(("size", "second"), [((1080, 1350), False), ((1200, 900), True), ((2000, 400), True),
                                              ((4032, 3024), False), ((300, 200), False)])
def test_decode_shared_at_lite0_size_equals_two_decodes(tmp_path, size, second):
    """At EfficientNet-Lite0's decode size: the model's array and the quality features equal those of the two
    separate decodes, and only where the draft scales differ is the file decoded twice."""
    path = tmp_path / "p.jpg"
    Image.fromarray(_photo(*size, seed=size[0])).save(path, quality=85)

    def prepare(img):  # what the model would be given, as bytes
        return np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR))

    arr, why, quality, twice = decode_shared(str(path), None, prepare, LITE0_MIN_SIDE, QUALITY_SIDE, str(path))
    want_arr, want_why = decode_image(str(path), None, prepare, LITE0_MIN_SIDE)
    assert why == want_why == "" and np.array_equal(arr, want_arr)
    assert quality == quality_features_file(path)
    assert twice is second


def unaddressed(reason: str) -> str:
    """Pillow names the file object it could not identify ("<_io.BytesIO object at 0x7f...>", "<_io.BufferedReader
    name=12>": a file descriptor's number); the rest of the reason is the same."""
    return re.sub(r"<_io\.\w+ (object at 0x[0-9a-f]+|name=\d+)>", "<file>", reason)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` pixels (no pixel data needed for the refusal)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")    # IHDR's CRC
    return bytes(data)


def test_decode_shared_errors_match_each_pass(tmp_path):
    """A file that breaks in decoding gives each consumer the reason its own pass gives."""
    good = tmp_path / "good.jpg"
    Image.fromarray(_photo(800, 600, 1)).save(good, quality=85)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    huge = tmp_path / "huge.png"
    huge.write_bytes(_bomb_png(20_000, 20_000))
    bad_crc = tmp_path / "bad_crc.png"
    bad_crc.write_bytes(huge.read_bytes().replace((20_000).to_bytes(4, "big"), (30_000).to_bytes(4, "big"), 1))
    for path in (truncated, huge, bad_crc, tmp_path / "missing.jpg"):
        arr, why, quality, _ = decode_shared(str(path), None, np.asarray, LITE0_MIN_SIDE, QUALITY_SIDE, str(path))
        assert arr is None
        assert unaddressed(why) == unaddressed(decode_image(str(path), None, np.asarray, LITE0_MIN_SIDE)[1])
        if path.exists():
            with pytest.raises(Exception) as own:
                quality_features_file(path)
            assert unaddressed(quality) == unaddressed(str(own.value))
        else:
            assert quality.startswith("cannot read image file:")


@pytest.mark.skipif(not (DEV / "images").is_dir(), reason="the dev data is not on this machine")
def test_decode_shared_on_dev_images():
    """200 dev images (224 px JPEGs) at Lite0's decode size: one decode each, the same values as two."""
    paths = sorted((DEV / "images").iterdir())[:200]
    for path in paths:
        arr, why, quality, twice = decode_shared(str(path), None, np.asarray, LITE0_MIN_SIDE, QUALITY_SIDE,
                                                 str(path))
        assert not twice and why == ""
        assert np.array_equal(arr, decode_image(str(path), None, np.asarray, LITE0_MIN_SIDE)[0])
        assert quality == quality_features_file(path)
