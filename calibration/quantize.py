#!/usr/bin/env python3
"""Int8 variants of a bundle's encoder (and decoder), calibrated on images preprocessed as SAM does.

`--variants int8,int8-qdq` writes the variant files into the bundle and names them in its
bundle.toml ([models.encoder.variants.int8], with sha256), where `alignsam --precision` finds them:

* `int8`: dynamic quantisation (weights int8, activations quantised at run time), MatMul and, with
  `--dynamic-ops MatMul,Conv`, Conv; the Conv padding is first moved into a float Pad (rten 0.27's
  ConvInteger pads wrongly when the input zero point is not 128).
* `int8-qdq`: static QDQ, per-tensor activation ranges from the calibration images, per-channel
  weights; Softmax and its neighbours kept float (tract 0.23.9 folds DequantizeLinear -> Softmax ->
  QuantizeLinear into a wrong lookup table, and alignsam refuses such a file on tract).

`--out FILE` writes one QDQ encoder anywhere, `--trt-table DIR` a TensorRT INT8 calibration table.
Each int8 encoder is then compared with the float one in ONNX Runtime on held-out images (relative
error, cosine, sign agreement). The runtime uses a variant only after `alignsam gate --record`
measured it on the whole prompting loop (calibration/README.md).

    pip install -r models/requirements.txt
    python calibration/quantize.py --bundle models/small-sam \\
        --data ../shared/data/saliency/SOD --split train --images 32 \\
        --variants int8,int8-qdq --dynamic-ops MatMul,Conv
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
    quantize_dynamic,
    write_calibration_table,
)
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def read_bundle(bundle: Path) -> tuple[Path, int, np.ndarray, np.ndarray]:
    """The encoder path, frame size and pixel statistics from `bundle.toml`."""
    manifest = tomllib.loads((bundle / "bundle.toml").read_text())
    image = manifest["image"]
    encoder = bundle / manifest["models"]["encoder"]["file"]
    mean = np.array(image["pixel_mean"], np.float32).reshape(3, 1, 1)
    std = np.array(image["pixel_std"], np.float32).reshape(3, 1, 1)
    return encoder, int(image["size"]), mean, std


def dataset_images(data: Path, split: str) -> list[Path]:
    """The split's images in split-file order (the order `alignsam` uses too)."""
    split_file = data / "splits" / f"{split}.txt"
    if not split_file.is_file():
        sys.exit(f"{split_file}: no such split file")
    paths = []
    for line in split_file.read_text().split():
        match = [data / "images" / f"{line}{ext}" for ext in IMAGE_EXTENSIONS]
        found = next((p for p in match if p.is_file()), None)
        if found is None:
            sys.exit(f"{data / 'images' / line}.*: no image for id {line!r} in {split_file}")
        paths.append(found)
    if not paths:
        sys.exit(f"{split_file}: empty split")
    return paths


def preprocess(path: Path, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """`SamPredictor.set_image`: PIL bilinear resize of the longest side, (x - mean) / std, zero
    padding bottom/right. Returns [1, 3, size, size] float32."""
    rgb = np.array(Image.open(path).convert("RGB"))
    resized = ResizeLongestSide(size).apply_image(rgb)
    x = (resized.transpose(2, 0, 1).astype(np.float32) - mean) / std
    out = np.zeros((1, 3, size, size), np.float32)
    out[0, :, : x.shape[1], : x.shape[2]] = x
    return out


class Images(CalibrationDataReader):
    """Feeds preprocessed images to ONNX Runtime's calibrators, one at a time."""

    def __init__(self, paths: list[Path], size: int, mean: np.ndarray, std: np.ndarray, input_name: str):
        self.paths, self.size, self.mean, self.std, self.input_name = paths, size, mean, std, input_name
        self.rewind()

    def get_next(self):
        path = next(self.iter, None)
        if path is None:
            return None
        return {self.input_name: preprocess(path, self.size, self.mean, self.std)}

    def rewind(self):
        self.iter = iter(self.paths)


VARIANTS = ("int8", "int8-qdq")


def slim_copy(src: Path, dst: Path) -> Path:
    """The model passed through onnxslim (quantize_dynamic fails on raw torch exports), with
    graph.value_info dropped (it would pin the decoder's point count, which must stay symbolic)."""
    import onnxslim

    model = onnxslim.slim(onnx.load(str(src)))
    del model.graph.value_info[:]
    onnx.save(model, str(dst))
    return dst


def explicit_padding(path: Path) -> int:
    """Moves every Conv's padding into a float Pad node before it (pads -> 0); returns how many.

    rten 0.27's ConvInteger pads its uint8 input with the wrong value when the input's zero point
    is not 128 (e.g. after a ReLU, where it is 0): the border outputs are wrong by up to the
    output's own magnitude, and the error compounds through the network (embedding cosine 0.12 on
    models/small-sam). Padding in float before DynamicQuantizeLinear is exact on every engine."""
    model = onnx.load(str(path))
    graph = model.graph
    nodes, moved = [], 0
    for node in graph.node:
        pads = next((a for a in node.attribute if a.name == "pads"), None)
        if node.op_type != "Conv" or pads is None or not any(pads.ints):
            nodes.append(node)
            continue
        n = len(pads.ints) // 2
        # ONNX Conv pads are [x1_begin, x2_begin, ..., x1_end, x2_end]; Pad wants all N+2 axes.
        full = [0, 0, *pads.ints[:n], 0, 0, *pads.ints[n:]]
        name = f"{node.name or node.output[0]}_explicit_pads"
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(full, np.int64), name))
        padded = f"{node.input[0]}_padded_for_{node.name or node.output[0]}"
        nodes.append(onnx.helper.make_node("Pad", [node.input[0], name], [padded], name=f"{name}_Pad"))
        node.input[0] = padded
        del pads.ints[:]
        pads.ints.extend([0] * (2 * n))
        nodes.append(node)
        moved += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return moved


def quantize_dynamic_int8(src: Path, dst: Path, op_types: list[str], per_channel: bool = True) -> None:
    """Dynamic int8: weights int8 per channel, activations quantised at run time."""
    with tempfile.TemporaryDirectory() as tmp:
        slim = slim_copy(src, Path(tmp) / "slim.onnx")
        if "Conv" in op_types:
            print(f"  {explicit_padding(slim)} Conv paddings made explicit (rten's ConvInteger pads wrongly)")
        quantize_dynamic(
            str(slim),
            str(dst),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=op_types,
        )
    model = onnx.load(str(dst))
    del model.graph.value_info[:]
    onnx.save(model, str(dst))


def quantize_qdq_int8(
    src: Path, dst: Path, reader: CalibrationDataReader, quantize_softmax: bool, per_channel_weights: bool
) -> int:
    """Static int8 QDQ, per-tensor ranges from the calibration images; returns how many Softmax
    nodes were kept float."""
    with tempfile.TemporaryDirectory() as tmp:
        slim = slim_copy(src, Path(tmp) / "slim.onnx")
        # Names after onnxslim: it renames nodes, so names taken from the source would miss.
        exclude = [] if quantize_softmax else softmax_nodes(slim)
        quantize_static(
            str(slim),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel_weights,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return len(exclude)


def record_variants(bundle: Path, written: dict[tuple[str, str], Path]) -> None:
    """Names the variant files in bundle.toml: ([models.ROLE.variants.NAME] file, sha256). An
    existing entry of the same name is replaced; the rest of the file is kept as it is."""
    import hashlib

    manifest_path = bundle / "bundle.toml"
    lines = manifest_path.read_text().splitlines()
    # A precision's entries are all rewritten: a model it no longer quantises falls back to fp32.
    headers = {f"[models.{role}.variants.{name}]" for role in ("encoder", "decoder") for _, name in written}
    kept, skipping = [], False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            skipping = stripped in headers
        if not skipping:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    for (role, name), path in sorted(written.items()):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        kept += ["", f"[models.{role}.variants.{name}]", f'file = "{path.relative_to(bundle)}"', f'sha256 = "{sha}"']
    text = "\n".join(kept) + "\n"
    tomllib.loads(text)  # still valid TOML
    manifest_path.write_text(text)
    print(f"named {len(written)} variant files in {manifest_path}")


def softmax_nodes(model_path: Path) -> list[str]:
    """Softmax nodes and their direct neighbours (the MatMul before and after, in attention).

    Excluding Softmax alone is not enough: its neighbours, quantised, still put a
    DequantizeLinear before it and a QuantizeLinear after it, which is the pattern tract 0.23.9
    folds into a wrong lookup table (and which alignsam refuses to run on tract)."""
    model = onnx.load(str(model_path), load_external_data=False)
    nodes = model.graph.node
    names = set()
    for n in nodes:
        if n.op_type != "Softmax":
            continue
        names.add(n.name)
        names.update(p.name for p in nodes if set(p.output) & set(n.input))
        names.update(c.name for c in nodes if set(c.input) & set(n.output))
    return sorted(names)


def compare(fp32: Path, int8: Path, paths: list[Path], size: int, mean, std, threads: int) -> None:
    """Prints how closely the int8 encoder follows the float one on `paths`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    a = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    name = a.get_inputs()[0].name
    print(f"  {int8.name} against {fp32.name}, ONNX Runtime, held-out images:")
    for path in paths:
        x = preprocess(path, size, mean, std)
        ref = a.run(None, {name: x})[0].ravel()
        got = b.run(None, {name: x})[0].ravel()
        rel = np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)
        cos = float(ref @ got / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-12))
        signs = float(np.mean(np.sign(ref) == np.sign(got)))
        print(f"    {path.name}: max relative error {rel:.3e}, cosine {cos:.5f}, sign agreement {signs:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory (its encoder is quantised)")
    p.add_argument("--data", type=Path, required=True, help="dataset folder with images/ and splits/")
    p.add_argument("--split", default="train")
    p.add_argument("--images", type=int, default=32, help="calibration images (the split's first N)")
    p.add_argument("--check", type=int, default=3, help="held-out images to compare float and int8 on")
    p.add_argument("--out", type=Path, help="int8 QDQ encoder to write")
    p.add_argument(
        "--variants",
        help="comma-separated precision variants to write into the bundle and name in its bundle.toml: "
        "int8 (dynamic, encoder and decoder; --dynamic-ops chooses the operators), "
        "int8-qdq (static QDQ per-tensor, encoder, calibrated on the images)",
    )
    p.add_argument(
        "--int8-models",
        default="encoder",
        help="models the int8 variant quantises: encoder (default) or encoder,decoder. The decoder runs 16 "
        "times a frame with its own logits fed back, so its int8 errors compound (models/small-sam: accuracy "
        "gate mask IoU 0.967 with the encoder alone, 0.932 with both)",
    )
    p.add_argument(
        "--qdq-per-tensor-weights",
        action="store_true",
        help="int8-qdq: one scale per weight tensor instead of one per output channel (activations are "
        "per-tensor either way; models/small-sam: gate mask IoU 0.945 per-tensor, 0.979 per-channel)",
    )
    p.add_argument(
        "--dynamic-ops",
        default="MatMul",
        help="operators the int8 variant quantises: MatMul (every engine) or MatMul,Conv (ConvInteger: rten and ONNX Runtime, not tract)",
    )
    p.add_argument("--trt-table", type=Path, help="directory for a TensorRT INT8 calibration table")
    p.add_argument("--quantize-softmax", action="store_true", help="also quantise Softmax (wrong in tract 0.23)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.out is None and args.trt_table is None and args.variants is None:
        p.error("nothing to do: give --variants, --out and/or --trt-table")

    encoder, size, mean, std = read_bundle(args.bundle)
    paths = dataset_images(args.data, args.split)
    calib, held_out = paths[: args.images], paths[args.images : args.images + args.check]
    input_name = onnx.load(str(encoder), load_external_data=False).graph.input[0].name
    print(f"calibrating {encoder} on {len(calib)} images of {args.data} ({args.split})")

    if args.variants is not None:
        names = [v for v in args.variants.split(",") if v]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            p.error(f"unknown variant(s) {unknown}: known {list(VARIANTS)}")
        manifest = tomllib.loads((args.bundle / "bundle.toml").read_text())["models"]
        decoder = args.bundle / manifest["decoder"]["file"]
        written: dict[tuple[str, str], Path] = {}
        if "int8" in names:
            ops = [o for o in args.dynamic_ops.split(",") if o]
            models = [m for m in args.int8_models.split(",") if m]
            for role, src in (("encoder", encoder), ("decoder", decoder)):
                if role not in models:
                    continue
                dst = args.bundle / f"{src.stem}.int8.onnx"
                quantize_dynamic_int8(src, dst, ops)
                print(f"wrote {dst} (dynamic int8: {', '.join(ops)})")
                written[(role, "int8")] = dst
        if "int8-qdq" in names:
            dst = args.bundle / f"{encoder.stem}.int8-qdq.onnx"
            kept = quantize_qdq_int8(
                encoder, dst, Images(calib, size, mean, std, input_name), args.quantize_softmax, not args.qdq_per_tensor_weights
            )
            print(f"wrote {dst} (static QDQ int8, per-tensor activations, {'per-tensor' if args.qdq_per_tensor_weights else 'per-channel'} weights, {len(calib)} calibration images, {kept} Softmax nodes and neighbours kept float)")
            written[("encoder", "int8-qdq")] = dst
        for (role, _), dst in written.items():
            if role == "encoder" and held_out:
                compare(encoder, dst, held_out, size, mean, std, args.threads)
        record_variants(args.bundle, written)

    if args.out is not None:
        exclude = [] if args.quantize_softmax else softmax_nodes(encoder)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        quantize_static(
            str(encoder),
            str(args.out),
            Images(calib, size, mean, std, input_name),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
        )
        print(f"wrote {args.out} ({len(exclude)} Softmax nodes kept in float)")
        if held_out:
            compare(encoder, args.out, held_out, size, mean, std, args.threads)

    if args.trt_table is not None:
        args.trt_table.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(
                str(encoder), [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.MinMax,
            )
            calibrator.collect_data(Images(calib, size, mean, std, input_name))
            cwd = Path.cwd()
            try:
                # write_calibration_table writes into the working directory.
                os.chdir(args.trt_table)
                write_calibration_table(calibrator.compute_data())
            finally:
                os.chdir(cwd)
        print(f"wrote a TensorRT calibration table into {args.trt_table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
