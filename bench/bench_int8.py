"""Static int8 for the default backbone: how far each quantization choice keeps EfficientNet-Lite0's meaning.

    python bench/bench_int8.py --calibrate 128 --test 512 [--rounds 3] [--json out.json]

The fp32 Lite0 graph igcli exports (uint8 image in, logits and embedding out) is quantized with onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations) after its shape arithmetic is folded for
224 px and ``quant_pre_process`` runs, calibrated on ``--calibrate`` dev images and compared with fp32 on
``--test`` others: top-1 agreement, top-5 set agreement, embedding cosine (mean and min), and images/s of each
graph (one session, all threads, batch 32, the median of ``--rounds`` rounds that run every graph in turn).
One row per configuration, so the table shows which layers lose the agreement: all convolutions with min-max
ranges; percentile ranges with the first convolution and the head kept in float; the same with every depthwise
convolution kept in float too; and only the depthwise convolutions in int8. igcli's bar to make int8 the CPU
default: top-1 >= 97% and cosine >= 0.995 (issue 36).

A second table shows why, layer by layer, for the second configuration's graph (``--layer-images`` of the
compared images; about 6 GB peak at 24): each quantized conv's SQNR against fp32 and of its own
QuantizeLinear/DequantizeLinear pair (onnxruntime's ``qdq_loss_debug``), the uint8 range its output was given and
how many levels of it fall in ReLU6's 0..6, and on the fp32 activations the spread of the channel ranges that
share one per-tensor scale. Beside it, the same quantization with each ReLU6 folded into its conv (``Clip`` in
``op_types_to_quantize``): its per-layer SQNR, and its agreement with fp32 in the notes (not timed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEV_DATA, print_table, write_json  # noqa: E402

RELU6 = (0.0, 6.0)          # timm's Lite0 activation: Clip(0, 6) in the exported graph
UINT8_LEVELS = 255          # steps of a uint8 activation (QuantType.QUInt8)


def layer_name(node: str) -> str:
    """timm's module path of an exported Conv node: '/heads/blocks/blocks.1/blocks.1.0/conv_dw/Conv' ->
    'blocks.1.0.conv_dw', '/heads/conv_head/Conv' -> 'conv_head'."""
    parts = node.strip("/").split("/")[:-1]
    return ".".join(parts[-2:] if len(parts) >= 2 and parts[-2].startswith("blocks.") else parts[-1:])


def quantized_range(scale: float, zero_point: int) -> tuple[float, float]:
    """The float interval a uint8 tensor with this scale and zero point represents."""
    return -zero_point * scale, (UINT8_LEVELS - zero_point) * scale


def levels_in(lo: float, hi: float, scale: float, zero_point: int) -> float:
    """uint8 steps of a per-tensor scale that fall inside [lo, hi] (0 where the intervals do not meet)."""
    qlo, qhi = quantized_range(scale, zero_point)
    return max(0.0, min(hi, qhi) - max(lo, qlo)) / scale


def channel_ranges(batches: list[np.ndarray], sizes: list[int], channels: int) -> np.ndarray:
    """max - min of each channel of NCHW activations over every image and position. ``batches`` are flat, as
    onnxruntime's ``collect_activations`` returns them, one per batch of ``sizes[i]`` images."""
    lo = hi = None
    for flat, n in zip(batches, sizes, strict=True):
        x = flat.reshape(n, channels, -1)                     # (B, C, H*W)
        blo, bhi = x.min(axis=(0, 2)), x.max(axis=(0, 2))
        lo, hi = (blo, bhi) if lo is None else (np.minimum(lo, blo), np.maximum(hi, bhi))
    return hi - lo


def spread(ranges: np.ndarray) -> float:
    """Largest channel range over the median one: how much of a per-tensor scale the widest channel takes."""
    med = float(np.median(ranges))
    return float(ranges.max()) / med if med > 0 else float("inf")


def qdq_params(model, tensor: str) -> tuple[float, int] | None:
    """(scale, zero point) of the QuantizeLinear a QDQ graph puts on ``tensor``, or None where it has none."""
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] == tensor:
            return (float(numpy_helper.to_array(init[n.input[1]])),
                    int(numpy_helper.to_array(init[n.input[2]])))
    return None


def agreement(l32: np.ndarray, e32: np.ndarray, l8: np.ndarray, e8: np.ndarray) -> tuple[float, float, float, float]:
    """(top-1 agree %, top-5 set agree %, embedding cosine mean, min) of a graph's logits and embeddings
    against fp32's, image by image."""
    top1 = np.mean(l32.argmax(1) == l8.argmax(1))
    top5 = np.mean([set(np.argsort(-x)[:5]) == set(np.argsort(-y)[:5]) for x, y in zip(l32, l8, strict=True)])
    cos = np.sum(e32 * e8, 1) / np.linalg.norm(e32, axis=1) / np.linalg.norm(e8, axis=1)
    return 100 * float(top1), 100 * float(top5), float(cos.mean()), float(cos.min())


LAYER_HEADER = ["layer", "kind", "SQNR dB", "own QDQ dB", "uint8 range", "levels in 0..6", "ch. range max/med",
                "levels med. ch.", "folded: SQNR dB", "folded: own QDQ dB", "folded: levels med. ch."]


def by_kind(rows: list[list], column: str) -> dict[str, float]:
    """Median of one LAYER_HEADER column over the rows of each kind of layer (blank cells left out)."""
    i = LAYER_HEADER.index(column)
    kinds: dict[str, list[float]] = {}
    for r in rows:
        if r[i] != "":
            kinds.setdefault(r[1], []).append(r[i])
    return {k: float(np.median(v)) for k, v in kinds.items()}


def extreme(rows: list[list], column: str, worst=min) -> list:
    """The row with the lowest (or, with ``worst=max``, highest) value in a LAYER_HEADER column."""
    i = LAYER_HEADER.index(column)
    return worst((r for r in rows if r[i] != ""), key=lambda r: r[i])


def feeds(batches: list[np.ndarray]):
    """An onnxruntime ``CalibrationDataReader`` giving each uint8 NHWC batch once as the graph's ``image`` input:
    what ``quantize_static`` calibrates on and ``collect_activations`` runs."""
    from onnxruntime.quantization import CalibrationDataReader

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": b} for b in batches])

        def get_next(self):
            return next(self.it, None)

    return Feeds()


def layer_rows(pre_path: Path, configured: Path, folded: Path, images: np.ndarray, tmp: Path,
               batch: int = 8) -> list[list]:
    """One row per Conv whose output ``configured`` (a QDQ graph of ``pre_path``) quantizes, in graph order (columns:
    LAYER_HEADER). Activations come from onnxruntime's qdq_loss_debug: every Conv and Clip tensor of the fp32
    graph and every QDQ and Clip tensor of the two int8 graphs, on ``images`` (uint8 NHWC).

    A layer's output is what the next node receives: the Clip (ReLU6) output where the conv has one, else the
    conv output; in an int8 graph after its QuantizeLinear/DequantizeLinear pair where it has one. "own QDQ" is
    the noise of the quantized conv output's pair alone (its input against its output in the int8 graph, both
    through ReLU6 where the conv has one). Channel ranges are of the fp32 output; "levels" divide a range by the
    per-tensor uint8 scale of the quantized conv output.
    """
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.quantization.quant_utils import DEQUANT_OUTPUT_SUFFIX

    chunks = [images[i:i + batch] for i in range(0, len(images), batch)]
    sizes = [len(c) for c in chunks]

    pre, qc, qf = (onnx.load(str(p)) for p in (pre_path, configured, folded))
    consumers: dict[str, list] = {}
    for n in pre.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out_channels = {i.name: i.dims[0] for i in pre.graph.initializer if i.dims}
    scalars = {i.name: float(onnx.numpy_helper.to_array(i)) for i in pre.graph.initializer if not i.dims}
    layers = []
    for n in pre.graph.node:
        if n.op_type != "Conv" or (params := qdq_params(qc, n.output[0])) is None:
            continue                                         # output not quantized (kept in float)
        after = consumers.get(n.output[0], [])
        relu6 = (len(after) == 1 and after[0].op_type == "Clip"
                 and tuple(scalars.get(x) for x in after[0].input[1:3]) == RELU6)
        out = after[0].output[0] if relu6 else n.output[0]
        # folded: the quantizer removed the Clip and gave the conv its output's name and range
        layers.append((n, out, relu6, params, qdq_params(qf, out)))
    wanted = {t for n, out, *_ in layers for t in (n.output[0], out)}

    def activations(path: Path, ops: list[str]) -> dict[str, list[np.ndarray]]:
        saved = tmp / f"{path.stem}-saved.onnx"
        modify_model_output_intermediate_tensors(str(path), str(saved), ops)
        kept: dict[str, list[np.ndarray]] = {}
        # one batch at a time, keeping only what the rows read: every tensor of a few dozen images is gigabytes
        for chunk in chunks:
            for k, v in collect_activations(str(saved), feeds([chunk])).items():
                if k.removesuffix(DEQUANT_OUTPUT_SUFFIX) in wanted:
                    kept.setdefault(k, []).extend(v)
        return kept

    def received(acts: dict, t: str) -> list[np.ndarray]:
        return acts[t + DEQUANT_OUTPUT_SUFFIX] if t + DEQUANT_OUTPUT_SUFFIX in acts else acts[t]

    sqnr = compute_signal_to_quantization_noice_ratio

    def relu6_sqnr(x: list[np.ndarray], y: list[np.ndarray]) -> float:
        return sqnr([np.clip(v, *RELU6) for v in x], [np.clip(v, *RELU6) for v in y])

    def own_noise(acts: dict, quantized: dict[str, bool]) -> dict[str, float]:
        """SQNR of each quantized tensor's QDQ pair alone (pre vs post), after ReLU6 where the conv has one:
        the noise the next layer gets from this pair, not the negatives ReLU6 drops anyway."""
        match = {k: v for k, v in create_activation_matching(acts, f).items() if "float" in v and k in quantized}
        err = compute_activation_error({k: v for k, v in match.items() if not quantized[k]})
        err |= compute_activation_error({k: v for k, v in match.items() if quantized[k]}, relu6_sqnr)
        return {k: e["qdq_err"] for k, e in err.items()}

    qdq_ops = ["QuantizeLinear", "DequantizeLinear", "Clip"]
    f = activations(pre_path, ["Conv", "Clip"])
    ac = activations(configured, qdq_ops)
    own = own_noise(ac, {n.output[0]: relu6 for n, _, relu6, *_ in layers})
    configured_sqnr = {out: sqnr(f[out], received(ac, out)) for _, out, *_ in layers}
    del ac
    af = activations(folded, qdq_ops)
    folded_sqnr = {out: sqnr(f[out], received(af, out)) for _, out, *_, fq in layers if fq}
    own_folded = own_noise(af, {out: relu6 for _, out, relu6, *_ in layers})
    del af
    rows = []
    for n, out, relu6, (scale, zp), fq in layers:
        ranges = channel_ranges(f[out], sizes, out_channels[n.input[1]])
        med = float(np.median(ranges))
        lo, hi = quantized_range(scale, zp)
        depthwise = any(x.name == "group" and x.i > 1 for x in n.attribute)
        rows.append([
            layer_name(n.name),
            ("dw" if depthwise else "pw") + (" ReLU6" if relu6 else " linear"),
            round(configured_sqnr[out], 1),
            round(own[n.output[0]], 1),
            f"{lo:.1f}..{hi:.1f}",
            round(levels_in(*RELU6, scale, zp), 1) if relu6 else "",
            round(spread(ranges), 1),
            round(med / scale, 1),
            round(folded_sqnr[out], 1) if fq else "",
            round(own_folded[out], 1) if fq else "",
            round(med / fq[0], 1) if fq else "",
        ])
    return rows


def explain(layers: list[list], configured: list, folded: tuple[float, float, float, float], n_test: int,
            n_images: int, seconds: float, int8_convs: int) -> list[str]:
    """The per-layer table's notes, every number read from its rows (``configured``: the configuration table's
    row of the same graph; ``folded``: ``agreement`` of the ReLU6-folded graph on the same images)."""
    def kinds(column: str) -> str:
        return ", ".join(f"{k} {v:.1f}" for k, v in sorted(by_kind(layers, column).items()))

    def med(column: str) -> float:
        i = LAYER_HEADER.index(column)
        return float(np.median([r[i] for r in layers if r[i] != ""]))

    relu6 = [r for r in layers if r[5] != ""]
    few = extreme(layers, "levels in 0..6")
    low = extreme(layers, "SQNR dB")
    own = extreme(layers, "own QDQ dB")
    wide = extreme(layers, "ch. range max/med", worst=max)
    own_f = extreme(layers, "folded: own QDQ dB")
    gains = [r[8] - r[2] for r in layers if r[8] != ""]
    spread_x = med("ch. range max/med")
    range_x = float(np.median([255 / r[5] for r in relu6 if r[5] > 0])) if relu6 else 1.0
    noisy = min(by_kind(layers, LAYER_HEADER[9]).items(), key=lambda kv: kv[1])[0]
    drops = [prev[8] - r[8] for prev, r in zip(layers, layers[1:], strict=False)
             if r[1] == noisy and r[8] != "" != prev[8]]
    drop = float(np.median(drops)) if drops else 0.0
    top1, top5, cmean, cmin = folded
    meets = top1 >= 97.0 and cmean >= 0.995
    return [
        f"one row per Conv whose output the configuration quantizes ({len(layers)} of its {int8_convs} convs with "
        f"int8 weights, in graph order; the first conv and the head stay in float; dw = depthwise, pw = pointwise; "
        f"folded: the same quantization with ReLU6 folded, below), on {n_images} of the {n_test} compared images "
        f"({seconds:.0f} s with the folded graph's quantization). SQNR = 20 log10(|fp32| / |fp32 - int8|) of "
        "the layer's output (after its ReLU6 where it has one) as the next node receives it, from "
        "onnxruntime.quantization.qdq_loss_debug (collect_activations, "
        "create_activation_matching, compute_activation_error); own QDQ = the noise of the conv output's "
        "QuantizeLinear/DequantizeLinear pair alone, seen through ReLU6 where the conv has one; channel range = "
        "max - min of a channel of the fp32 output; levels = a range / the per-tensor uint8 scale of the "
        "quantized conv output",
        f"the graph: with op_types_to_quantize=['Conv'] each conv's output is quantized before its Clip (ReLU6), "
        f"so its one per-tensor uint8 range is calibrated on the pre-activation values, negatives included "
        f"({few[0]}: {few[4]}), and the 0..6 that ReLU6 keeps gets {few[5]:.1f} of the 255 levels there, median "
        f"{float(np.median([r[5] for r in relu6])):.1f} over the {len(relu6)} "
        "ReLU6 convs; the Clip output is quantized again where a conv reads it",
        f"where it goes: SQNR vs fp32 falls along the graph to {layers[-1][2]:.1f} dB at {layers[-1][0]} (lowest "
        f"{low[2]:.1f} dB at {low[0]}, {low[1]}); median SQNR vs fp32 by kind: {kinds('SQNR dB')}; median "
        f"own QDQ SQNR by kind: {kinds('own QDQ dB')} (lowest {own[3]:.1f} dB at {own[0]}); median levels in "
        f"0..6 by kind: {kinds(LAYER_HEADER[5])}",
        f"why, measured: one per-tensor scale for all channels costs the median channel the factor by which the "
        f"widest channel's range exceeds its own: {spread_x:.1f}x (median over layers; largest {wide[6]:.1f}x at "
        f"{wide[0]}); calibrating the scale before ReLU6 costs the ReLU6 outputs {range_x:.1f}x (255 / the levels "
        f"in 0..6, median over the ReLU6 convs): "
        + ("the pre-activation range costs more than the channel spread" if range_x > spread_x else
           "the channel spread costs more than the pre-activation range")
        + f"; the median channel gets {med('levels med. ch.'):.1f} levels as quantized (median over "
        f"layers), {med(LAYER_HEADER[10]):.1f} with ReLU6 folded",
        f"folding each ReLU6 into its conv (the same quantization with 'Clip' in op_types_to_quantize: onnxruntime's "
        "QDQ quantizer then removes the Clip and gives the conv output the Clip output's calibrated range) raises "
        f"SQNR vs fp32 at {sum(g > 0 for g in gains)} of {len(gains)} layers (median +{float(np.median(gains)):.1f} "
        f"dB) and, on the {n_test} images, top-1 agreement from {configured[1]}% to {top1:.1f}%, top-5 set from "
        f"{configured[2]}% to {top5:.1f}%, cosine mean from {configured[3]} to {cmean:.4f} (min {cmin:.4f}): "
        + ("meets" if meets else "does not meet") + " the bar (top-1 >= 97%, cosine >= 0.995); not timed here",
        f"what is left after folding: own QDQ SQNR by kind {kinds(LAYER_HEADER[9])} (lowest {own_f[9]:.1f} dB at "
        f"{own_f[0]}): the {noisy} layers are now the noisiest quantizers, and SQNR vs fp32 falls at each of them by "
        f"a median {drop:.1f} dB from the layer before; it ends at {layers[-1][8]:.1f} dB at {layers[-1][0]}",
        "the standard fixes and this graph: cross-layer equalization (Nagel et al. 2019) scales a conv's output "
        "channel by 1/s and the next conv's input channel by s, exact only through a positively homogeneous "
        "activation (f(s x) = s f(x), s > 0, as ReLU); ReLU6 = min(max(x, 0), 6) is not (the clip at 6 moves with "
        "s), so on Lite0 it changes the model's function unless ReLU6 is replaced; and the spread it would even out "
        "is small here (above). Per-channel activation scales have no place in an int8 conv: ONNX's QLinearConv "
        "operator takes a scalar x_scale and y_scale (per-tensor) and only w_scale per channel",
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=DEV_DATA / "images")
    p.add_argument("--calibrate", type=int, default=128)
    p.add_argument("--test", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds over every graph (median)")
    p.add_argument("--layer-images", type=int, default=24,
                   help="test images whose every layer's activations are compared (memory grows with them)")
    p.add_argument("--json", help="write the tables as JSON for bench/run_all.py")
    a = p.parse_args(argv)

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
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

    def outputs(s):
        outs = [s.run(None, {"image": test[i:i + 32]}) for i in range(0, len(test), 32)]
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    def rate(s) -> float:
        t = time.perf_counter()
        outputs(s)
        return len(test) / (time.perf_counter() - t)

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
            (f"percentile ranges, only the {len(depthwise)} depthwise convs int8", CalibrationMethod.Percentile,
             [n.name for n in convs if n.name not in depthwise] + head),
        ]
        fp32 = ort.InferenceSession(str(runner.onnx_path), providers=["CPUExecutionProvider"])
        l32, e32 = outputs(fp32)
        rows = [["fp32 (igcli's graph)", 100.0, 100.0, 1.0, 1.0]]
        sessions = [fp32]

        def quantize(out: Path, method, exclude: list[str], ops: list[str]) -> None:
            calibration = feeds([cal[j:j + 16] for j in range(0, len(cal), 16)])
            quantize_static(str(tmp / "pre.onnx"), str(out), calibration, quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method, op_types_to_quantize=ops, nodes_to_exclude=exclude,
                            extra_options={"CalibPercentile": 99.999})

        for i, (label, method, exclude) in enumerate(configs):
            quantize(tmp / f"q{i}.onnx", method, exclude, ["Conv"])
            sessions.append(ort.InferenceSession(str(tmp / f"q{i}.onnx"), providers=["CPUExecutionProvider"]))
            top1, top5, cmean, cmin = agreement(l32, e32, *outputs(sessions[-1]))
            rows.append([label, round(top1, 1), round(top5, 1), round(cmean, 4), round(cmin, 4)])
        # Speed: every graph once per round, rounds interleaved, so a busy moment of the machine hits all of them.
        rates = [[] for _ in sessions]
        for _ in range(max(1, a.rounds)):
            for k, sess in enumerate(sessions):
                rates[k].append(rate(sess))
        medians = [float(np.median(r)) for r in rates]
        for row, m in zip(rows, medians, strict=True):
            row += [round(m, 1), round(m / medians[0], 2)]
        # Why: row 2's graph layer by layer, beside the same quantization with each ReLU6 folded into its conv
        # (Clip in op_types_to_quantize: onnxruntime's QDQ quantizer then removes the Clip and quantizes the conv
        # output with the Clip output's calibrated range) -- agreement on the --test images, not timed.
        t_layers = time.perf_counter()
        quantize(tmp / "q1-relu6.onnx", CalibrationMethod.Percentile, configs[1][2], ["Conv", "Clip"])
        fold = ort.InferenceSession(str(tmp / "q1-relu6.onnx"), providers=["CPUExecutionProvider"])
        folded = agreement(l32, e32, *outputs(fold))
        del fold
        layers = layer_rows(tmp / "pre.onnx", tmp / "q1.onnx", tmp / "q1-relu6.onnx", test[:a.layer_images], tmp)
        q1 = onnx.load(str(tmp / "q1.onnx"))
        weights = {i.name for i in q1.graph.initializer}
        int8_convs = sum(n.op_type == "Conv" and n.input[1] not in weights for n in q1.graph.node)
        t_layers = time.perf_counter() - t_layers
    header = ["graph", "top-1 agree %", "top-5 set agree %", "cosine mean", "cosine min", "img/s", "x fp32"]
    title = f"static int8 vs fp32 Lite0 ({a.calibrate} calibration images, {a.test} others)"
    best = max(rows[1:], key=lambda r: (r[1], r[3]))
    # cosines and ratios keep their digits as text (the tables print floats with one decimal)
    rows = [[r[0], r[1], r[2], f"{r[3]:.4f}", f"{r[4]:.4f}", r[5], f"{r[6]:.2f}"] for r in rows]
    print_table(title, header, rows)
    meets = best[1] >= 97.0 and best[3] >= 0.995
    notes = [
        f"{a.calibrate} dev images calibrate, {a.test} others are compared; onnxruntime CPU, one session per graph "
        f"with all threads, batch 32; img/s is the median of {a.rounds} interleaved rounds (model only, images "
        "decoded beforehand)",
        f"closest to fp32: {best[0]} (top-1 {best[1]}%, cosine {best[3]:.4f}, {best[6]:.2f}x fp32's speed): "
        + ("meets" if meets else "does not meet") + " the bar (top-1 >= 97%, cosine >= 0.995)"
        + ("" if meets else ", so `--quantize int8` stays refused"),
        "rows 2-4 keep more layers in float: the agreement each step wins back is what those layers lost; the last "
        "row quantizes the depthwise convolutions alone (everything else in float), the third leaves them out: "
        "together they split the loss between depthwise and pointwise convolutions",
    ]
    for n in notes:
        print(f"- {n}")
    layer_title = (f"where the agreement goes: {configs[1][0]}, layer by layer ({min(a.layer_images, a.test)} of the "
                   "compared images)")
    print_table(layer_title, LAYER_HEADER, layers)
    layer_notes = explain(layers, rows[2], folded, a.test, min(a.layer_images, a.test), t_layers, int8_convs)
    for n in layer_notes:
        print(f"- {n}")
    write_json(a.json, "int8", header, rows, notes,
               tables=[{"title": layer_title, "header": LAYER_HEADER, "rows": layers, "notes": layer_notes}])


if __name__ == "__main__":
    main()
