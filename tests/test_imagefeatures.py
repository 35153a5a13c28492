"""igcli.features.images + igcli.vision.backbones: quality rows, objects / aesthetics rows, dedup, resume, weights.

Backbones are timm's tiny test models (a few hundred thousand parameters) with random or test-made
weights, on 32 px images, so the file runs in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from igcli import store
from igcli.commands.featurize import featurize_images
from igcli.commands.ingest import ingest_posts
from igcli.errors import InputError, ModelError, WeightsMissing
from igcli.features.images import ImageFeatureOptions
from igcli.vision.decode import CHANGED
from igcli.vision.families import imagenet_classes

CLASSIFIER = "test_efficientnet"   # tiny timm model with 1000 ImageNet classes
EMBEDDER = "test_vit"              # tiny timm model for the aesthetics role
N_DISTINCT = 10                    # distinct random images, plus one duplicated content
UNIQUE_OK = N_DISTINCT + 1


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)


@pytest.fixture
def con(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A store with 15 posts: 10 distinct images, two files with identical bytes, one image shared by two
    posts, one corrupt image and one post without an image. No hub, no weight caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    images = tmp_path / "data" / "img"
    images.mkdir(parents=True)
    rows = []
    for i in range(N_DISTINCT):
        _image(images / f"p{i}.jpg", seed=i)
        rows.append(f"p{i},user{i % 3},2017-04-{i + 1:02d},,,,{10 * i},img/p{i}.jpg")
    _image(images / "dup_a.jpg", seed=99)
    (images / "dup_b.jpg").write_bytes((images / "dup_a.jpg").read_bytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    rows += [
        "d1,user0,2017-04-20,,,,5,img/dup_a.jpg",
        "d2,user1,2017-04-21,,,,6,img/dup_b.jpg",
        "s1,user2,2017-04-22,,,,7,img/p0.jpg",       # the same file as p0
        "bad,user0,2017-04-23,,,,8,img/broken.jpg",
        "noimg,user1,2017-04-24,,,,9,",
    ]
    csv = tmp_path / "data" / "posts.csv"
    csv.write_text("post_id,username,posted_at,caption,hashtags,mentions,likes,image\n" + "\n".join(rows) + "\n")
    c = store.connect(tmp_path / "s.duckdb")
    ingest_posts(csv, con=c)
    yield c
    c.close()


def q(con, sql: str, params=None):
    return con.execute(sql, params or []).fetchall()


def tiny(**kw) -> ImageFeatureOptions:
    base = dict(objects=CLASSIFIER, aesthetics=EMBEDDER, random_init=True, batch_size=4, workers=2, device="cpu")
    return ImageFeatureOptions(**{**base, **kw})


def ok_shas(con) -> set[str]:
    return {r[0] for r in q(con, "SELECT sha256 FROM images WHERE status = 'ok'")}


def test_quality_rows_for_ok_images_and_corrupt_post_kept(con):
    res = featurize_images(con, ImageFeatureOptions(skip_backbones=True, workers=2))
    assert res.backbones == [] and res.messages == []
    assert (res.quality_computed, res.quality_failed) == (UNIQUE_OK, 0)
    shas = ok_shas(con)
    assert len(shas) == UNIQUE_OK
    rows = q(con, "SELECT sha256, brightness, entropy, aspect_ratio FROM image_quality")
    assert {r[0] for r in rows} == shas
    assert all(0 < b < 1 and e > 0 and a == pytest.approx(40 / 32) for _, b, e, a in rows)
    # the corrupt image: its post is still there, and it has no features of any kind
    (bad_status,), = q(con, "SELECT i.status FROM posts p JOIN images i ON i.path = p.image_path "
                                     "WHERE p.post_id = 'bad'")
    assert bad_status == "corrupt"
    assert q(con, "SELECT count(*) FROM posts")[0][0] == 15
    assert q(con, "SELECT count(*) FROM image_feature_errors")[0][0] == 0


def test_objects_and_embeddings_rows(con):
    import timm

    res = featurize_images(con, tiny())
    objects, aesthetics = res.backbones
    assert (objects.role, objects.name, aesthetics.role, aesthetics.name) == (
        "objects", CLASSIFIER, "aesthetics", EMBEDDER)
    # 14 posts have a decodable image but only 11 distinct contents: duplicates run once
    assert objects.images_run == aesthetics.images_run == UNIQUE_OK
    assert objects.images_failed == 0 and objects.device == "CPUExecutionProvider" and objects.images_per_s > 0
    assert objects.weights_fp == f"random-init:{CLASSIFIER}:0:crop1" and objects.random_init

    rows = q(con, "SELECT post_id, sha256, backbone, weights_fp, random_init, source, rank, wnid, prob "
                  "FROM image_classes ORDER BY sha256, rank")
    assert len(rows) == 5 * UNIQUE_OK
    assert {r[1] for r in rows} == ok_shas(con)
    assert {(r[0], r[2], r[3], r[4], r[5]) for r in rows} == {
        (None, CLASSIFIER, objects.weights_fp, True, "featurize")}
    wnids = {c.wnid for c in imagenet_classes()}
    for i in range(0, len(rows), 5):
        top = rows[i:i + 5]
        assert [r[6] for r in top] == [1, 2, 3, 4, 5]
        probs = [r[8] for r in top]
        assert probs == sorted(probs, reverse=True) and 0 < probs[-1] and probs[0] <= 1
        assert all(r[7] in wnids for r in top) and len({r[7] for r in top}) == 5

    dim = timm.create_model(EMBEDDER).head_hidden_size
    emb = q(con, "SELECT sha256, len(embedding), nima_dist, nima_mean, random_init, weights_fp FROM image_embeddings")
    assert len(emb) == UNIQUE_OK and {r[0] for r in emb} == ok_shas(con)
    assert {r[1:] for r in emb} == {(dim, None, None, True, f"random-init:{EMBEDDER}:0:crop1")}


def test_second_call_is_a_noop_and_random_init_is_reproducible(con):
    featurize_images(con, tiny())
    before = q(con, "SELECT sha256, rank, wnid, prob FROM image_classes ORDER BY ALL")
    res = featurize_images(con, tiny())
    assert res.quality_computed == 0 and [b.images_run for b in res.backbones] == [0, 0]
    assert q(con, "SELECT sha256, rank, wnid, prob FROM image_classes ORDER BY ALL") == before
    # The same seed gives the same random weights: rows recomputed from scratch match.
    q(con, "DELETE FROM image_classes")
    featurize_images(con, tiny())
    again = q(con, "SELECT sha256, rank, wnid, prob FROM image_classes ORDER BY ALL")
    assert [r[:3] for r in again] == [r[:3] for r in before]
    assert np.allclose([r[3] for r in again], [r[3] for r in before], atol=1e-6)


def test_rows_of_another_image_geometry_are_not_reused(con):
    """Rows made before CROP_PCT (their weights_fp lacks ":crop1") are kept but not taken for this igcli's:
    every image runs again, under the new fingerprint."""
    first = featurize_images(con, tiny())
    old = {b.role: b.weights_fp.removesuffix(":crop1") for b in first.backbones}
    q(con, "UPDATE image_classes SET weights_fp = ?", [old["objects"]])
    q(con, "UPDATE image_embeddings SET weights_fp = ?", [old["aesthetics"]])
    again = featurize_images(con, tiny())
    assert [b.images_run for b in again.backbones] == [UNIQUE_OK, UNIQUE_OK]
    per_fp = dict(q(con, "SELECT weights_fp, count(DISTINCT sha256) FROM image_classes GROUP BY 1"))
    assert per_fp == {old["objects"]: UNIQUE_OK, old["objects"] + ":crop1": UNIQUE_OK}


@pytest.mark.parametrize(("write_rows", "kept"), [(1, 4), (8, 8)])
def test_resume_after_interruption(con, monkeypatch, write_rows, kept):
    """An interrupted run keeps the transactions committed before it (one batch of 4, or two batches when
    WRITE_ROWS joins them) and a rerun does only the rest."""
    import igcli.engines.local as imf

    monkeypatch.setattr(imf, "WRITE_ROWS", write_rows)

    class Stop(Exception):
        pass

    def stop_after_first_batch(stage: str, done: int, total: int) -> None:
        if stage.startswith("objects") and done > 0:
            raise Stop

    with pytest.raises(Stop):
        featurize_images(con, tiny(), progress=stop_after_first_batch)
    assert q(con, "SELECT count(DISTINCT sha256), count(*) FROM image_classes")[0] == (kept, 5 * kept)
    # the quality rows are computed in the first backbone's decode threads and committed with its rows
    assert q(con, "SELECT count(*) FROM image_quality")[0][0] == kept

    seen: list[tuple[str, int, int]] = []
    res = featurize_images(con, tiny(), progress=lambda *a: seen.append(a))
    assert res.backbones[0].images_run == UNIQUE_OK - kept
    assert ("objects: " + CLASSIFIER, UNIQUE_OK - kept, UNIQUE_OK - kept) in seen
    assert q(con, "SELECT count(DISTINCT (sha256, rank)), count(*) FROM image_classes")[0] == (
        5 * UNIQUE_OK, 5 * UNIQUE_OK)
    assert q(con, "SELECT count(*) FROM image_quality")[0][0] == UNIQUE_OK
    assert res.quality_computed == UNIQUE_OK - kept


def test_a_failed_write_stops_the_run_and_keeps_the_batches_committed_before_it(con, monkeypatch):
    """Batches are written by a writer thread while the model runs on the next one: its error reaches the
    caller, the batches committed before it stay, nothing of the failed batch is stored, a rerun finishes."""
    import igcli.engines.local as imf

    real, calls = imf.store_rows, []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(imf, "WRITE_ROWS", 1)  # a transaction per batch of 4
    monkeypatch.setattr(imf, "store_rows", fail_second)
    with pytest.raises(OSError, match="disk full"):
        featurize_images(con, tiny())
    assert len(calls) == 2  # the run stopped at the failed batch
    assert q(con, "SELECT count(DISTINCT sha256), count(*) FROM image_classes")[0] == (4, 20)
    monkeypatch.setattr(imf, "store_rows", real)
    assert featurize_images(con, tiny()).backbones[0].images_run == UNIQUE_OK - 4
    assert q(con, "SELECT count(DISTINCT sha256), count(*) FROM image_classes")[0] == (UNIQUE_OK, 5 * UNIQUE_OK)


def test_batches_joined_in_one_transaction_store_the_same_rows(con, tmp_path, monkeypatch):
    """WRITE_ROWS joins batches into one transaction: the rows and errors are those of a transaction per
    batch, with an image that fails (its file changed since ingest) in the middle of a joined batch."""
    import igcli.engines.local as imf

    Image.fromarray(np.full((32, 40, 3), 7, np.uint8)).save(tmp_path / "data" / "img" / "p5.jpg", "JPEG")
    tables = {
        "image_classes": "SELECT sha256, backbone, weights_fp, rank, wnid, prob FROM image_classes ORDER BY ALL",
        "image_embeddings": "SELECT sha256, backbone, weights_fp, embedding FROM image_embeddings ORDER BY ALL",
        "image_feature_errors": "SELECT sha256, backbone, weights_fp, reason FROM image_feature_errors "
                                "WHERE backbone <> 'quality' ORDER BY ALL",
    }
    stored = {}
    for write_rows in (1, 12):   # a transaction per batch of 4; three batches per transaction
        monkeypatch.setattr(imf, "WRITE_ROWS", write_rows)
        for table in tables:
            q(con, f"DELETE FROM {table}" + (" WHERE backbone <> 'quality'" if table == "image_feature_errors" else ""))
        res = featurize_images(con, tiny())
        assert [(b.images_run, b.images_failed) for b in res.backbones] == [(UNIQUE_OK - 1, 1)] * 2
        stored[write_rows] = {t: q(con, sql) for t, sql in tables.items()}
    one, joined = stored[1], stored[12]
    assert [r[:5] for r in one["image_classes"]] == [r[:5] for r in joined["image_classes"]]
    assert np.allclose([r[5] for r in one["image_classes"]], [r[5] for r in joined["image_classes"]], atol=1e-6)
    assert [r[:3] for r in one["image_embeddings"]] == [r[:3] for r in joined["image_embeddings"]]
    assert len(one["image_embeddings"]) == UNIQUE_OK - 1
    assert np.allclose([r[3] for r in one["image_embeddings"]], [r[3] for r in joined["image_embeddings"]],
                       atol=1e-6)
    assert one["image_feature_errors"] == joined["image_feature_errors"]
    assert len(joined["image_feature_errors"]) == 2 and all(
        r[3] == CHANGED for r in joined["image_feature_errors"])


def test_decoding_starts_before_the_first_batch_is_asked_for(tmp_path):
    """decoded_batches starts its threads at once (featurize opens the onnxruntime session meanwhile)."""
    import threading
    from types import SimpleNamespace

    from igcli.vision.decode import decoded_batches

    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.jpg"))
        _image(Path(paths[-1]), seed=i)
    started = threading.Event()

    def prepare(img):
        started.set()
        return np.asarray(img.resize((8, 8)), dtype=np.uint8)

    runner = SimpleNamespace(input_size=(8, 8), data_config={}, prepare=prepare)
    batches = decoded_batches(paths, None, runner, batch_size=2, workers=2)
    assert started.wait(timeout=30)  # before any iteration
    got = list(batches)
    assert [x.shape for x, _ in got] == [(2, 8, 8, 3)] * 3 and all(r == ["", ""] for _, r in got)
    batches.close()  # closing twice (iteration already closed it) is harmless


def _decode_fixture(tmp_path, n):
    paths = []
    for i in range(n):
        paths.append(str(tmp_path / f"{i}.jpg"))
        _image(Path(paths[-1]), seed=i)
    return paths


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the idle scheduling class is Linux's")
def test_decode_threads_run_in_the_idle_class_and_the_consumer_at_its_own(tmp_path):
    """Workers yield the cores to the model's threads; what the consumer decodes itself keeps its priority."""
    import os
    import threading
    from types import SimpleNamespace

    from igcli.vision.decode import decoded_batches

    seen = {}

    def prepare(img):
        seen[threading.current_thread().name] = os.sched_getscheduler(threading.get_native_id())
        return np.asarray(img.resize((8, 8)), dtype=np.uint8)

    refused = []

    def probe():
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        except OSError as err:
            refused.append(err)

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    if refused:
        pytest.skip(f"this machine refuses SCHED_IDLE ({refused[0]}): decode threads keep their priority")
    runner = SimpleNamespace(input_size=(8, 8), data_config={}, prepare=prepare)
    main_policy = os.sched_getscheduler(threading.get_native_id())
    with decoded_batches(_decode_fixture(tmp_path, 8), None, runner, batch_size=2, workers=2) as batches:
        assert len(list(batches)) == 4
    workers = {name: policy for name, policy in seen.items() if name.startswith("igcli-decode")}
    assert workers and set(workers.values()) == {os.SCHED_IDLE}
    assert os.sched_getscheduler(threading.get_native_id()) == main_policy  # the consumer is untouched
    assert all(policy == main_policy for name, policy in seen.items() if name not in workers)


def test_consumer_decodes_images_no_worker_has_started(tmp_path):
    """A starved (here: stuck) worker never stalls the run: the consumer decodes the queued images itself."""
    import threading
    from types import SimpleNamespace

    from igcli.vision.decode import decoded_batches

    paths = _decode_fixture(tmp_path, 4)
    stuck, others_done, lock, by_consumer = threading.Event(), threading.Event(), threading.Lock(), []

    def prepare(img):
        if threading.current_thread().name.startswith("igcli-decode"):
            if not stuck.is_set():  # the only worker's first image waits until the consumer did the rest
                stuck.set()
                assert others_done.wait(timeout=30), "the consumer did not take over the queued images"
        else:
            with lock:
                by_consumer.append(threading.current_thread().name)
                if len(by_consumer) == 3:
                    others_done.set()
        return np.asarray(img.resize((8, 8)), dtype=np.uint8)

    runner = SimpleNamespace(input_size=(8, 8), data_config={}, prepare=prepare)
    with decoded_batches(paths, None, runner, batch_size=4, workers=1, prefetch=0) as batches:
        assert stuck.wait(timeout=30)  # the worker holds one image before the consumer asks for the batch
        (x, reasons), = list(batches)
        assert batches.inline == 3
    assert reasons == [""] * 4 and x.shape == (4, 8, 8, 3)
    assert by_consumer == [threading.current_thread().name] * 3
    alone = [decoded_batches([p], None, runner, 1, workers=0) for p in paths]  # decoded without threads
    assert all(np.array_equal(x[i], next(iter(b))[0][0]) for i, b in enumerate(alone))


def test_image_that_fails_to_decode_is_recorded_not_fatal(con):
    (path, old_sha), = q(con, "SELECT path, sha256 FROM images WHERE path LIKE '%p3.jpg'")
    garbage = b"\xff\xd8\xff\xe0 garbage that no decoder accepts"
    Path(path).write_bytes(garbage)
    sha = hashlib.sha256(garbage).hexdigest()  # as if it had been ingested like this
    q(con, "UPDATE images SET sha256 = ? WHERE sha256 = ?", [sha, old_sha])
    res = featurize_images(con, tiny())
    assert res.quality_failed == 1 and res.quality_computed == UNIQUE_OK - 1
    assert [(b.images_run, b.images_failed) for b in res.backbones] == [(UNIQUE_OK - 1, 1)] * 2
    errors = q(con, "SELECT backbone, reason FROM image_feature_errors WHERE sha256 = ? ORDER BY backbone", [sha])
    assert [e[0] for e in errors] == sorted(["quality", CLASSIFIER, EMBEDDER])
    assert all("decode" in e[1] for e in errors)
    assert q(con, "SELECT count(*) FROM image_classes WHERE sha256 = ?", [sha])[0][0] == 0
    again = featurize_images(con, tiny())  # failures are not retried
    assert again.quality_failed == 0 and [b.images_failed for b in again.backbones] == [0, 0]


def test_file_changed_since_ingest_is_not_stored_under_the_old_hash(con):
    (path, sha), = q(con, "SELECT path, sha256 FROM images WHERE path LIKE '%p4.jpg'")
    _image(Path(path), seed=1234)  # still a valid image, but not the content that was ingested
    res = featurize_images(con, tiny())
    assert res.quality_failed == 1 and [b.images_failed for b in res.backbones] == [1, 1]
    reasons = q(con, "SELECT DISTINCT reason FROM image_feature_errors WHERE sha256 = ?", [sha])
    assert len(reasons) == 1 and "igcli ingest" in reasons[0][0]
    assert q(con, "SELECT count(*) FROM image_quality WHERE sha256 = ?", [sha])[0][0] == 0
    assert q(con, "SELECT count(*) FROM image_embeddings WHERE sha256 = ?", [sha])[0][0] == 0


def test_class_index_order_matches_timm():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    assert [c.wnid for c in imagenet_classes()] == [info.index_to_label_name(i) for i in range(1000)]


def test_explicit_backbone_without_weights_fails_fast(con):
    t0 = time.perf_counter()
    with pytest.raises(WeightsMissing, match="--objects-weights") as info:
        featurize_images(con, ImageFeatureOptions(objects=CLASSIFIER, objects_explicit=True, aesthetics=EMBEDDER))
    assert time.perf_counter() - t0 < 10
    assert CLASSIFIER in str(info.value) and "HF_HOME" in str(info.value)
    assert q(con, "SELECT count(*) FROM image_classes")[0][0] == 0
    assert q(con, "SELECT count(*) FROM image_embeddings")[0][0] == 0  # nothing ran before the failure
    assert q(con, "SELECT count(*) FROM image_quality")[0][0] == 0


def test_implicit_backbone_without_weights_is_skipped_with_a_message(con):
    res = featurize_images(con, ImageFeatureOptions(objects=CLASSIFIER, aesthetics=EMBEDDER))
    assert [b.skipped_reason is not None for b in res.backbones] == [True, True]
    assert [b.weights_fp for b in res.backbones] == [None, None]
    assert len(res.messages) == 2
    assert "--objects-weights" in res.messages[0] and "--aesthetics-weights" in res.messages[1]
    assert res.quality_computed == UNIQUE_OK  # the weight-free features still ran
    assert q(con, "SELECT count(*) FROM image_classes")[0][0] == 0


def _saved(tmp_path: Path, name: str, suffix: str = ".pth", seed: int = 1, **kw):
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, **kw).eval()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(path))
    else:
        torch.save(model.state_dict(), path)
    return model, path


def _expected_top5(model, image_path: str):
    """timm's own eval transform (float, normalised) at igcli's CROP_PCT and torch: independent of igcli's
    uint8 pipeline."""
    import timm
    import torch

    from igcli.vision.backbones import CROP_PCT
    from igcli.vision.decode import open_rgb

    cfg = {**timm.data.resolve_model_data_config(model), "crop_pct": CROP_PCT}
    x = timm.data.create_transform(**cfg, is_training=False)(open_rgb(image_path))
    with torch.inference_mode():
        prob, idx = model(x[None]).softmax(-1).topk(5)
    return [imagenet_classes()[i].wnid for i in idx[0].tolist()], prob[0].tolist()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_a_file(con, tmp_path, suffix):
    model, path = _saved(tmp_path, CLASSIFIER, suffix)
    fp = hashlib.sha256(path.read_bytes()).hexdigest() + ":crop1"
    res = featurize_images(con, ImageFeatureOptions(objects=CLASSIFIER, objects_weights=path, aesthetics=EMBEDDER,
                                                    batch_size=4))
    objects, aesthetics = res.backbones
    assert (objects.weights_fp, objects.weights_source, objects.random_init) == (fp, "file", False)
    assert objects.images_run == UNIQUE_OK
    assert aesthetics.skipped_reason is not None and len(res.messages) == 1  # no weights for it: skipped
    assert q(con, "SELECT DISTINCT weights_fp, random_init FROM image_classes") == [(fp, False)]
    for image_path, sha in q(con, "SELECT min(path), sha256 FROM images WHERE status = 'ok' GROUP BY sha256"):
        wnids, probs = _expected_top5(model, image_path)
        got = q(con, "SELECT wnid, prob FROM image_classes WHERE sha256 = ? ORDER BY rank", [sha])
        assert [g[0] for g in got] == wnids
        assert np.allclose([g[1] for g in got], probs, atol=1e-5)


def test_weights_file_that_does_not_fit_names_the_flag(con, tmp_path):
    _, path = _saved(tmp_path, "test_resnet")
    with pytest.raises(InputError, match="--objects-weights"):
        featurize_images(con, ImageFeatureOptions(objects=CLASSIFIER, objects_weights=path, skip_backbones=False,
                                                  aesthetics=EMBEDDER))
    with pytest.raises(InputError, match="does not exist"):
        featurize_images(con, ImageFeatureOptions(objects_weights=tmp_path / "nope.pth"))


def test_pretrained_weights_from_the_hf_cache(con, tmp_path):
    """A cache laid out as huggingface_hub leaves it is used offline; fingerprint = the cached file's sha256."""
    import huggingface_hub.constants
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(CLASSIFIER).hf_hub_id  # timm/test_efficientnet.<tag>
    cache = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text("0" * 40)
    snapshot = cache / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    model, path = _saved(snapshot, CLASSIFIER, ".safetensors", seed=3)
    path.rename(snapshot / "model.safetensors")
    res = featurize_images(con, ImageFeatureOptions(objects=CLASSIFIER, objects_explicit=True, aesthetics=EMBEDDER))
    objects = res.backbones[0]
    assert objects.weights_source == "cache" and objects.images_run == UNIQUE_OK
    assert objects.weights_fp == hashlib.sha256((snapshot / "model.safetensors").read_bytes()).hexdigest() + ":crop1"
    image_path, sha = q(con, "SELECT min(path), sha256 FROM images WHERE status = 'ok' GROUP BY sha256 LIMIT 1")[0]
    wnids, _ = _expected_top5(model, image_path)
    assert [r[0] for r in q(con, "SELECT wnid FROM image_classes WHERE sha256 = ? ORDER BY rank", [sha])] == wnids


def test_nima_checkpoint_gives_a_score_distribution(con, tmp_path):
    import timm

    _, path = _saved(tmp_path, EMBEDDER, num_classes=10)
    res = featurize_images(con, tiny(roles=("aesthetics",), nima_weights=path, random_init=False))
    (aesthetics,) = res.backbones
    assert aesthetics.weights_fp == hashlib.sha256(path.read_bytes()).hexdigest() + ":crop1"
    assert aesthetics.images_run == UNIQUE_OK and not aesthetics.random_init
    rows = q(con, "SELECT embedding, nima_dist, nima_mean FROM image_embeddings")
    assert len(rows) == UNIQUE_OK
    dim = timm.create_model(EMBEDDER).head_hidden_size
    for emb, dist, mean in rows:
        assert len(emb) == dim and len(dist) == 10
        assert sum(dist) == pytest.approx(1, abs=1e-5) and min(dist) > 0
        assert 1 <= mean <= 10 and mean == pytest.approx(float(np.dot(dist, np.arange(1, 11))), abs=1e-4)
    with pytest.raises(InputError, match="not both"):
        featurize_images(con, tiny(nima_weights=path, aesthetics_weights=path))


def test_unknown_model_and_bad_options(con):
    with pytest.raises(InputError, match="timm.list_models"):
        featurize_images(con, tiny(objects="no_such_model_xyz"))
    with pytest.raises(InputError, match="--batch-size"):
        featurize_images(con, tiny(batch_size=0))
    with pytest.raises(InputError, match="--device"):
        featurize_images(con, tiny(device="tpu"))


def test_int8_rows_carry_an_int8_fingerprint(con):
    with pytest.raises(InputError, match="refused"):  # it failed the 95% top-5 bar on the dev images
        featurize_images(con, tiny(roles=("objects",), quantize="int8"))
    res = featurize_images(con, tiny(roles=("objects",), quantize="int8", allow_unverified_int8=True))
    (objects,) = res.backbones
    assert objects.weights_fp == f"random-init:{CLASSIFIER}:0:crop1:int8" and objects.images_run == UNIQUE_OK
    assert q(con, "SELECT DISTINCT weights_fp FROM image_classes") == [(objects.weights_fp,)]
    fp32 = featurize_images(con, tiny(roles=("objects",)))  # fp32 rows are other rows, never mixed
    assert fp32.backbones[0].images_run == UNIQUE_OK
    fp32_fp = fp32.backbones[0].weights_fp
    assert fp32_fp != objects.weights_fp and not fp32_fp.endswith(":int8")
    per_fp = dict(q(con, "SELECT weights_fp, count(DISTINCT sha256) FROM image_classes GROUP BY 1"))
    assert per_fp == {objects.weights_fp: UNIQUE_OK, fp32_fp: UNIQUE_OK}  # the int8 rows are still there
    with pytest.raises(InputError, match="--quantize"):
        featurize_images(con, tiny(quantize="int4"))


def test_lite0_on_dev_images_agrees_with_the_papers_classes(dev_data: Path, tmp_path: Path):
    """200 real posts: EfficientNet-Lite0's top-1 lies in the paper's Inception-ResNet-v2 top-5 for about half
    of them (chance: 5 / 1000)."""
    import csv

    with open(dev_data / "posts.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["image"]]
    rows = sorted(rows, key=lambda r: r["post_id"])[::max(1, len(rows) // 200)][:200]
    subset = tmp_path / "posts.csv"
    with open(subset, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    c = store.connect(tmp_path / "s.duckdb")
    try:
        ingest_posts(subset, con=c, images_dir=dev_data)
        res = featurize_images(c, ImageFeatureOptions(batch_size=32, workers=2))
        assert [(b.role, b.name, b.images_failed) for b in res.backbones] == [
            ("objects", "efficientnet_lite0", 0), ("aesthetics", "efficientnet_lite0", 0)]
        ours = dict(q(c, """SELECT p.post_id, c.wnid FROM posts p JOIN images i ON i.path = p.image_path
                            JOIN image_classes c ON c.sha256 = i.sha256 AND c.rank = 1"""))
    finally:
        c.close()
    paper: dict[str, set[str]] = {}
    with open(dev_data / "imagenet_top5.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            paper.setdefault(r["post_id"], set()).add(r["wnid"])
    both = [pid for pid in ours if pid in paper]
    assert len(both) >= 150
    agree = sum(ours[pid] in paper[pid] for pid in both) / len(both)
    # chance is 0.5%; these 200 images gave 99 agreeing (49.5%) when this bound was set: it allows ten images
    # of near-ties flipping with another onnxruntime build, not a weaker model (bench_quality's note measures
    # the share on every dev image)
    assert agree >= 0.45, agree


def test_batch_and_decode_threads_default_by_device(monkeypatch):
    import igcli.engines.local as imf

    monkeypatch.setattr(imf.os, "cpu_count", lambda: 16)
    assert imf.batching(ImageFeatureOptions(), "cpu") == (32, 2)   # the model takes the cores
    assert imf.batching(ImageFeatureOptions(), "cuda") == (imf.GPU_BATCH, 15)  # decoding is the CPU's only work
    assert imf.batching(ImageFeatureOptions(batch_size=8, workers=0), "cuda") == (8, 0)
    monkeypatch.setattr(imf.os, "cpu_count", lambda: 1)
    assert imf.batching(ImageFeatureOptions(), "cuda") == (imf.GPU_BATCH, 2)


def test_a_gpu_whose_onnxruntime_cuda_provider_does_not_load_runs_torch_under_auto(con, monkeypatch):
    """The CUDA provider listed but not started (here: no GPU at all, so onnxruntime-gpu falls back to the
    CPU): auto runs torch on the device instead, a named --runtime onnxruntime fails before writing."""
    import onnxruntime as ort

    import igcli.engines.local as imf
    import igcli.features.images
    import igcli.vision.runtime as rt

    monkeypatch.setattr(imf, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(igcli.features.images, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    import igcli.ort

    real_make = igcli.ort.session
    monkeypatch.setattr(igcli.ort, "session", lambda model, device="auto", threads=None, spinning=True, fix="":
                        real_make(model, "cpu", threads, spinning, fix))  # what a failed CUDA provider leaves
    real_torch = rt._torch_runner

    def torch_on_cpu(runner, req, weights, device, threads):
        assert device == "cuda"
        runner = real_torch(runner, req, weights, "cpu", threads)
        runner.provider = "torch:cuda"
        return runner

    monkeypatch.setattr(rt, "_torch_runner", torch_on_cpu)
    with pytest.raises(ModelError, match="could not start its CUDA provider"):
        featurize_images(con, tiny(runtime="onnxruntime", device="cuda"))
    assert q(con, "SELECT count(*) FROM image_classes")[0][0] == 0
    res = featurize_images(con, tiny(device="cuda"))
    assert {b.device for b in res.backbones} == {"torch:cuda"}
    assert sum(b.images_run for b in res.backbones) > 0
    assert q(con, "SELECT count(*) FROM image_classes")[0][0] > 0


def test_two_batches_in_the_model_at_once_store_what_one_at_a_time_stores(con, monkeypatch):
    import igcli.engines.local as imf

    assert imf.model_streams(ImageFeatureOptions(threads=2), "cpu", "onnxruntime") == (2, 1)
    assert imf.model_streams(ImageFeatureOptions(threads=8), "cpu", "onnxruntime") == (2, 4)
    assert imf.model_streams(ImageFeatureOptions(threads=1), "cpu", "onnxruntime") == (1, 1)
    assert imf.model_streams(ImageFeatureOptions(threads=8), "cpu", "torch") == (1, 8)
    assert imf.model_streams(ImageFeatureOptions(threads=8), "cuda", "onnxruntime") == (1, 8)
    got = {}
    for streams in (1, 2):
        for table in ("image_classes", "image_embeddings", "image_feature_errors"):
            con.execute(f"DELETE FROM {table}")
        monkeypatch.setattr(imf, "model_streams", lambda o, d, r, n=streams: (n, 1))
        res = featurize_images(con, tiny(batch_size=2, threads=2))  # 6 batches: streams overlap and wrap
        assert {b.images_run for b in res.backbones} == {UNIQUE_OK}
        got[streams] = (q(con, "SELECT sha256, rank, wnid, prob FROM image_classes ORDER BY sha256, rank"),
                        q(con, "SELECT sha256, embedding FROM image_embeddings ORDER BY sha256"))
    (cls1, emb1), (cls2, emb2) = got[1], got[2]
    assert len(cls1) == len(cls2) > 0 and [r[:3] for r in cls1] == [r[:3] for r in cls2]
    assert np.allclose([r[3] for r in cls1], [r[3] for r in cls2], atol=1e-6)
    assert [r[0] for r in emb1] == [r[0] for r in emb2] and len(emb1) > 0
    assert np.allclose(np.array([r[1] for r in emb1]), np.array([r[1] for r in emb2]), atol=1e-5)


def test_open_rgb_turns_a_sideways_jpeg_upright(tmp_path):
    """EXIF orientation 6 (stored rotated): the image the model sees is the one a viewer shows."""
    from igcli.vision.decode import open_rgb

    stored = Image.new("RGB", (300, 100), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 150, 100))  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    stored.save(path, exif=exif, quality=95)
    img = open_rgb(path)
    assert img.size == (100, 300) and img.mode == "RGB"
    upright = np.asarray(img).mean(axis=(1, 2))
    assert upright[:140].mean() > 240 and upright[160:].mean() < 15  # the white half now on top
