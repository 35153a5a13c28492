"""bench/bench_int8.py helpers: layer names, uint8 ranges and levels, channel ranges, and the per-layer rows of a
tiny Conv/ReLU6 graph quantized as the bench quantizes Lite0 (no dev data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_bench


def _bench():
    return load_bench("bench_int8")


def test_layer_names_are_timm_module_paths():
    b = _bench()
    assert b.layer_name("/heads/blocks/blocks.1/blocks.1.0/conv_dw/Conv") == "blocks.1.0.conv_dw"
    assert b.layer_name("/heads/blocks/blocks.6/blocks.6.0/conv_pwl/Conv") == "blocks.6.0.conv_pwl"
    assert b.layer_name("/heads/conv_head/Conv") == "conv_head"


def test_levels_count_the_uint8_steps_inside_an_interval():
    b = _bench()
    lo, hi = b.quantized_range(0.8, 128)
    assert (lo, hi) == pytest.approx((-102.4, 101.6))
    assert b.levels_in(0, 6, 0.8, 128) == pytest.approx(7.5)           # a symmetric range leaves ReLU6 few steps
    assert b.levels_in(0, 6, 6 / 255, 0) == pytest.approx(255)         # a 0..6 range gives it all of them
    assert b.levels_in(0, 6, 0.1, 255) == 0                            # a range wholly below 0 gives it none
    assert b.levels_in(0, 6, 0.01, 0) == pytest.approx(255)            # 0..2.55: capped by the range's top


def test_channel_ranges_span_every_batch_and_position():
    b = _bench()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 4, 4)).astype(np.float32) * np.array([1, 2, 10], np.float32)[None, :, None, None]
    flat = [x[:2].reshape(-1), x[2:].reshape(-1)]                      # as collect_activations returns them
    ranges = b.channel_ranges(flat, [2, 3], 3)
    np.testing.assert_allclose(ranges, x.max(axis=(0, 2, 3)) - x.min(axis=(0, 2, 3)))
    assert b.spread(ranges) == pytest.approx(ranges.max() / np.median(ranges))
    assert b.spread(np.zeros(3)) == float("inf")


def test_agreement_of_a_graph_with_itself_and_with_a_shuffle():
    b = _bench()
    rng = np.random.default_rng(1)
    logits, emb = rng.normal(size=(20, 50)), rng.normal(size=(20, 8))
    assert b.agreement(logits, emb, logits, emb) == pytest.approx((100.0, 100.0, 1.0, 1.0))
    top1, top5, cmean, cmin = b.agreement(logits, emb, logits[::-1], -emb)
    assert top1 < 100 and top5 < 100 and cmean == pytest.approx(-1.0) and cmin == pytest.approx(-1.0)


def test_by_kind_and_extreme_read_one_column():
    b = _bench()
    row = lambda name, kind, sqnr, levels: [name, kind, sqnr, 30.0, "", levels, 1.0, 1.0, "", "", ""]  # noqa: E731
    rows = [row("a", "dw ReLU6", 10.0, 7.5), row("b", "pw linear", 5.0, ""), row("c", "dw ReLU6", 20.0, 50.0)]
    assert b.by_kind(rows, "SQNR dB") == {"dw ReLU6": 15.0, "pw linear": 5.0}
    assert b.by_kind(rows, "levels in 0..6") == {"dw ReLU6": pytest.approx(28.75)}   # blank cells left out
    assert b.extreme(rows, "SQNR dB")[0] == "b"
    assert b.extreme(rows, "levels in 0..6", worst=max)[0] == "c"


def _tiny_graph(path: Path) -> None:
    """image (N, 3, 8, 8) -> 1x1 conv + ReLU6 -> depthwise 3x3 + ReLU6 -> 1x1 linear -> Add: Lite0's block shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w = {"w1": rng.normal(size=(4, 3, 1, 1)), "w2": rng.normal(size=(4, 1, 3, 3)), "w3": rng.normal(size=(2, 4, 1, 1))}
    init = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    init += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], name="/m/blocks/blocks.0/blocks.0.0/conv_pw/Conv"),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="/m/act1/Clip"),
             helper.make_node("Conv", ["a1", "w2"], ["c2"], name="/m/blocks/blocks.0/blocks.0.0/conv_dw/Conv",
                              group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"], name="/m/act2/Clip"),
             helper.make_node("Conv", ["a2", "w3"], ["c3"], name="/m/blocks/blocks.0/blocks.0.0/conv_pwl/Conv"),
             # as in Lite0, no conv output is a graph output (quantize_static gave this one's no QDQ pair)
             helper.make_node("Add", ["c3", "c3"], ["out"], name="/m/add/Add")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2, 8, 8])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def test_layer_rows_of_a_tiny_graph_show_the_range_relu6_loses(tmp_path):
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    b = _bench()
    _tiny_graph(tmp_path / "pre.onnx")
    images = (np.random.default_rng(3).normal(size=(12, 3, 8, 8)) * 3).astype(np.float32)

    def quantize(out: Path, ops: list[str]) -> None:
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"image": images[:6]}, {"image": images[6:]}])

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(tmp_path / "pre.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=ops)

    quantize(tmp_path / "q.onnx", ["Conv"])
    quantize(tmp_path / "f.onnx", ["Conv", "Clip"])
    rows = b.layer_rows(tmp_path / "pre.onnx", tmp_path / "q.onnx", tmp_path / "f.onnx", images, tmp_path, batch=5)
    col = {h: i for i, h in enumerate(b.LAYER_HEADER)}
    assert [r[0] for r in rows] == ["blocks.0.0.conv_pw", "blocks.0.0.conv_dw", "blocks.0.0.conv_pwl"]
    assert [r[1] for r in rows] == ["pw ReLU6", "dw ReLU6", "pw linear"]
    assert all(len(r) == len(b.LAYER_HEADER) for r in rows)
    for r in rows[:2]:
        # quantized before its ReLU6, the conv output's range reaches below 0: 0..6 gets only part of the 255 steps
        assert 0 < r[col["levels in 0..6"]] < 250
        assert r[col["folded: levels med. ch."]] > r[col["levels med. ch."]]
        assert r[col["folded: own QDQ dB"]] > r[col["own QDQ dB"]]
    assert rows[2][col["levels in 0..6"]] == ""                        # no ReLU6 after a linear projection
    assert all(20 < r[col["own QDQ dB"]] < 80 for r in rows)          # 8-bit noise, not an identity or garbage
    assert all(np.isfinite(r[col["SQNR dB"]]) and np.isfinite(r[col["folded: SQNR dB"]]) for r in rows)
