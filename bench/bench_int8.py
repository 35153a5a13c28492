"""Static int8 for the default backbone: how far each quantization choice keeps EfficientNet-Lite0's meaning.

    python bench/bench_int8.py --calibrate 128 --test 512

The fp32 Lite0 graph igcli exports (uint8 image in, logits and embedding out) is quantized with onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) after its shape arithmetic is folded for
224 px and ``quant_pre_process`` runs, calibrated on ``--calibrate`` dev images and compared with fp32 on
``--test`` others: top-1 agreement, top-5 set agreement, embedding cosine (mean and min), and images/s of each
graph (one session, all threads, batch 32). One row per configuration, so the table shows which layers lose the
agreement: all convolutions with min-max ranges; percentile ranges with the first convolution and the head
kept in float; and the same with every depthwise convolution kept in float too. igcli's bar to make int8 the
CPU default: top-1 >= 97% and cosine >= 0.995 (issue 36).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV_DATA, print_table  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=DEV_DATA / "images")
    p.add_argument("--calibrate", type=int, default=128)
    p.add_argument("--test", type=int, default=512)
    a = p.parse_args(argv)

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from igcli.vision.backbones import BackboneRequest, resolve_weights
    from igcli.vision.decode import open_rgb
    from igcli.vision.runtime import group_requests, open_runner

    reqs = [BackboneRequest(r, "efficientnet_lite0") for r in ("objects", "aesthetics")]
    group = group_requests([(q, resolve_weights(q)) for q in reqs])[0]
    runner = open_runner(group, "cpu", "onnxruntime", session=False)
    paths = sorted(a.images.glob("*.jpg"))
    np.random.default_rng(0).shuffle(paths)

    def load(chunk):
        return np.stack([runner.prepare(open_rgb(q, 224)) for q in chunk]).astype(np.uint8)

    cal, test = load(paths[:a.calibrate]), load(paths[a.calibrate:a.calibrate + a.test])

    def run(path: Path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        s.run(None, {"image": test[:2]})
        t = time.perf_counter()
        outs = [s.run(None, {"image": test[i:i + 32]}) for i in range(0, len(test), 32)]
        rate = len(test) / (time.perf_counter() - t)
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]), rate

    with tempfile.TemporaryDirectory(prefix="igcli-int8-") as tmp:
        tmp = Path(tmp)
        m = onnx.load(str(runner.onnx_path))
        dims = m.graph.input[0].type.tensor_type.shape.dim
        for i, v in zip(range(1, 4), (224, 224, 3), strict=True):
            dims[i].ClearField("dim_param")
            dims[i].dim_value = v
        onnx.save(m, tmp / "fixed.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(tmp / "folded.onnx")
        ort.InferenceSession(str(tmp / "fixed.onnx"), so, providers=["CPUExecutionProvider"])
        quant_pre_process(str(tmp / "folded.onnx"), str(tmp / "pre.onnx"))
        pre = onnx.load(str(tmp / "pre.onnx"))
        convs = [n for n in pre.graph.node if n.op_type == "Conv"]
        head = [n.name for n in pre.graph.node if n.op_type in ("Gemm", "MatMul")]
        depthwise = [n.name for n in convs if any(x.name == "group" and x.i > 1 for x in n.attribute)]
        configs = [
            ("all convs int8, min-max ranges", CalibrationMethod.MinMax, []),
            ("percentile ranges, first conv + head fp32", CalibrationMethod.Percentile, [convs[0].name, *head]),
            (f"... and the {len(depthwise)} depthwise convs fp32", CalibrationMethod.Percentile,
             [convs[0].name, *head, *depthwise]),
        ]
        l32, e32, r32 = run(runner.onnx_path)
        rows = [["fp32 (igcli's graph)", "100.0%", "100.0%", "1.0000", "1.0000", f"{r32:.0f}"]]
        for i, (label, method, exclude) in enumerate(configs):
            batches = iter([{"image": cal[j:j + 16]} for j in range(0, len(cal), 16)])

            class Reader(CalibrationDataReader):
                def get_next(self, it=batches):
                    return next(it, None)

            out = tmp / f"q{i}.onnx"
            quantize_static(str(tmp / "pre.onnx"), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, op_types_to_quantize=["Conv"], nodes_to_exclude=exclude,
                            extra_options={"CalibPercentile": 99.999})
            l8, e8, r8 = run(out)
            top1 = np.mean(l32.argmax(1) == l8.argmax(1))
            top5 = np.mean([set(np.argsort(-x)[:5]) == set(np.argsort(-y)[:5]) for x, y in zip(l32, l8, strict=True)])
            cos = np.sum(e32 * e8, 1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e8, axis=1)
            rows.append([label, f"{100 * top1:.1f}%", f"{100 * top5:.1f}%", f"{cos.mean():.4f}", f"{cos.min():.4f}",
                         f"{r8:.0f}"])
    print_table(f"static int8 vs fp32 Lite0 ({a.calibrate} calibration images, {a.test} others)",
                ["graph", "top-1 agree", "top-5 set agree", "cosine mean", "cosine min", "img/s"], rows)


if __name__ == "__main__":
    main()
