#!/usr/bin/env python3
"""Generate the tiny test bundle (models/tiny/) and the numerical-parity fixtures (tests/fixtures/parity/).

Run from anywhere: `/work/venv/bin/python tests/parity/make_fixtures.py` (requirements: models/requirements.txt).

What it writes, and why:

* models/tiny/: a SAM-interface bundle small enough to commit. The encoder is a toy convolution
  stack (the ViT would be 90 MB even at random), but the decoder is the REAL segment_anything
  PromptEncoder + MaskDecoder + TwoWayTransformer at width 32, exported exactly like the full-size
  models by models/export.py (standard and low-res decoder forms), plus random policy/SRM networks.
* tests/fixtures/parity/images/: four synthetic RGB PNGs (smooth shapes and gradients), one larger
  than 1024 so that downscaling is exercised.
* tests/fixtures/parity/tiny/<stem>.safetensors: the reference pipeline with `SamPredictor`
  semantics, evaluated in torch with the tiny model, for every image.
* tests/fixtures/parity/mobilesam/<stem>.safetensors: the same pipeline for two of the images,
  evaluated with ONNX Runtime on ../shared/models/mobilesam-random (those ONNX files ARE the
  reference model; only the transforms come from segment_anything), and models.json with their
  sha256 so that the Rust test can refuse to compare against a different model.

Determinism: fixed seeds, one torch thread and one ONNX Runtime thread (a different thread count
can change summation order and therefore the last bits), PNGs written with fixed settings.
Rerunning reproduces every file byte for byte on the same package versions.

Before anything is written as a fixture, the exported tiny ONNX models are run with ONNX Runtime
and must reproduce the torch reference to 1e-5 of the output's max abs, so that a broken export
cannot become a fixture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from torch import nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "models"))

import export as E  # noqa: E402  (models/export.py: exporters, validation, manifest writer)
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402
from segment_anything.utils.onnx import SamOnnxModel  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

TINY_DIR = REPO / "models" / "tiny"
FIXTURES = REPO / "tests" / "fixtures" / "parity"
IMAGES_DIR = FIXTURES / "images"
MOBILESAM_DIR_DEFAULT = REPO.parent / "shared" / "models" / "mobilesam-random"

IMAGE_SIZE = 1024
TINY_EMBED_DIM = 32
TINY_SEED = 0  # torch seed for the tiny encoder + decoder
AGENT_SEED = 0  # policy: seed, SRM: seed + 1
GRID = 10
MAX_STEPS = 15
STRICT_REL_TOL = 1e-5  # ONNX Runtime vs torch for the tiny models before anything becomes a fixture
MOBILESAM_EMBEDDING_STRIDE = 4  # embedding_strided = flat[::4] keeps the committed files small
MOBILESAM_IMAGES = ("wide_300x200", "large_1100x700")
# Full-size masks as uint8 0/1 would take 3.6 MB of the 10 MB budget (the two 1100x700 images alone
# 3.1 MB), so they are stored bit-packed: `prompt{k}.mask_packed` = np.packbits(mask, axis=1), uint8
# [H, ceil(W/8)], the first pixel of each row in the most significant bit, rows padded with zero
# bits. Set to False to write `prompt{k}.mask` uint8 [H,W] instead (about 12.5 MB in all).
PACK_MASKS = True

# (stem, width, height, seed): sizes as the brief fixes them; stems say what they are.
IMAGES = (
    ("wide_300x200", 300, 200, 1),
    ("tall_180x240", 180, 240, 2),
    ("square_256x256", 256, 256, 3),
    ("large_1100x700", 1100, 700, 4),
)


# --------------------------------------------------------------------------------------------------
# Tiny model


class TinyImageEncoder(nn.Module):
    """[1,3,1024,1024] -> [1,32,64,64]: patchify (16x16 stride 16), a 3x3 mixing layer, a 1x1 projection.

    `img_size` is what `Sam.preprocess`, `Sam.postprocess_masks` and `SamOnnxModel` read from the
    image encoder.
    """

    def __init__(self, embed_dim: int = TINY_EMBED_DIM, img_size: int = IMAGE_SIZE, patch: int = 16, hidden: int = 16):
        super().__init__()
        self.img_size = img_size
        self.patch = nn.Conv2d(3, hidden, kernel_size=patch, stride=patch)
        self.mix = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1)
        self.proj = nn.Conv2d(hidden, embed_dim, kernel_size=1)
        # PyTorch's default (kaiming-uniform with a=sqrt(5)) shrinks activations ~3x per layer; with
        # N(0, 2/fan_in) weights the embeddings come out with values of order 1, like SAM's.
        for conv in (self.patch, self.mix, self.proj):
            fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
            nn.init.normal_(conv.weight, std=(2.0 / fan_in) ** 0.5)
            nn.init.normal_(conv.bias, std=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.mix(F.gelu(self.patch(x)))))


def build_tiny_sam(seed: int = TINY_SEED) -> Sam:
    """The real SAM prompt encoder / mask decoder at width 32 around the toy encoder."""
    torch.manual_seed(seed)
    side = IMAGE_SIZE // 16
    sam = Sam(
        image_encoder=TinyImageEncoder(),
        prompt_encoder=PromptEncoder(
            embed_dim=TINY_EMBED_DIM,
            image_embedding_size=(side, side),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=TINY_EMBED_DIM, mlp_dim=128, num_heads=4),
            transformer_dim=TINY_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
        ),
        pixel_mean=list(E.SAM_PIXEL_MEAN),
        pixel_std=list(E.SAM_PIXEL_STD),
    )
    return sam.eval()


def export_tiny_bundle(sam: Sam) -> None:
    TINY_DIR.mkdir(parents=True, exist_ok=True)
    # Exported with the usual checks (1e-3: the full-size `masks` output goes through two Resizes);
    # tiny_fixtures() then holds the embedding and low-res logits to STRICT_REL_TOL on real inputs.
    kw = dict(seed=TINY_SEED, threads=1)
    E.export_encoder(sam, TINY_DIR / "encoder.onnx", **kw)
    E.export_decoder(sam, TINY_DIR / "decoder.onnx", **kw)
    E.export_decoder_lowres(sam, TINY_DIR / "decoder_lowres.onnx", **kw)
    E.check_decoder_forms_agree(TINY_DIR / "decoder.onnx", TINY_DIR / "decoder_lowres.onnx")
    E.export_agent_random(TINY_DIR, TINY_EMBED_DIM, GRID, AGENT_SEED, side=IMAGE_SIZE // 16, map_size=GRID, threads=1)
    E.write_bundle(
        TINY_DIR,
        name="tiny-random",
        description=(
            "Test/demo bundle with random weights (meaningless masks): toy conv encoder, real SAM prompt "
            "encoder + mask decoder at width 32, random policy and SRM; made by tests/parity/make_fixtures.py"
        ),
        grid=GRID,
        max_steps=MAX_STEPS,
    )


# --------------------------------------------------------------------------------------------------
# Synthetic images


def _smoothstep(edge: float, x: np.ndarray) -> np.ndarray:
    """1 inside (x < -edge), 0 outside (x > edge), a smooth ramp across the boundary."""
    t = np.clip(0.5 - x / (2 * edge), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def synth_image(w: int, h: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """An RGB uint8 image of smooth shapes on a gradient, and the shapes (centres, radii).

    No noise: PNG keeps it small, and bilinear resizing of smooth content is where implementations
    agree best, so a parity failure points at a real bug rather than at aliasing.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = xx / w, yy / h
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, np.pi)
    t = np.clip(0.5 + (u - 0.5) * np.cos(angle) + (v - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    img += 12 * np.sin(2 * np.pi * (2 * u + 1.5 * v))[..., None]  # a low-frequency ripple

    shapes = []
    s = min(w, h)
    for i in range(4):
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = rng.uniform(0.12, 0.25) * s, rng.uniform(0.12, 0.25) * s
        if i % 2 == 0:  # ellipse: signed distance approximated in normalised radius units
            d = (np.hypot((xx - cx) / rx, (yy - cy) / ry) - 1) * min(rx, ry)
        else:  # axis-aligned rectangle
            d = np.maximum(np.abs(xx - cx) - rx, np.abs(yy - cy) - ry)
        alpha = _smoothstep(1.5, d)[..., None]
        top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        shade = np.clip((yy - (cy - ry)) / (2 * ry), 0, 1)[..., None]
        img = img * (1 - alpha) + (top * (1 - shade) + bottom * shade) * alpha
        shapes.append({"cx": cx, "cy": cy, "rx": rx, "ry": ry})
    return np.clip(np.round(img), 0, 255).astype(np.uint8), shapes


def prompts_for(shapes: list[dict], w: int, h: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """prompt0: one positive point (centre of the last-drawn shape, which nothing covers);
    prompt1: two positives inside it and one negative in another shape. Integer pixel positions,
    like clicks, clamped inside the image."""
    obj, other = shapes[-1], shapes[0]

    def pt(x: float, y: float) -> list[float]:
        return [float(np.clip(np.round(x), 0, w - 1)), float(np.clip(np.round(y), 0, h - 1))]

    p0 = np.array([pt(obj["cx"], obj["cy"])], dtype=np.float32)
    p1 = np.array(
        [
            pt(obj["cx"], obj["cy"]),
            pt(obj["cx"] + 0.4 * obj["rx"], obj["cy"] - 0.3 * obj["ry"]),
            pt(other["cx"], other["cy"]),
        ],
        dtype=np.float32,
    )
    return [(p0, np.array([1], dtype=np.float32)), (p1, np.array([1, 1, 0], dtype=np.float32))]


def write_images() -> dict[str, list]:
    IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    prompts = {}
    for stem, w, h, seed in IMAGES:
        img, shapes = synth_image(w, h, seed)
        path = IMAGES_DIR / f"{stem}.png"
        Image.fromarray(img, "RGB").save(path, format="PNG", optimize=False, compress_level=9)
        prompts[stem] = prompts_for(shapes, w, h)
    return prompts


def load_rgb(path: Path) -> np.ndarray:
    # Read the PNG back, so the reference sees exactly the pixels the Rust side will decode.
    return np.array(Image.open(path).convert("RGB"))


# --------------------------------------------------------------------------------------------------
# The reference pipeline (SamPredictor semantics)


class Reference:
    """SamPredictor's transforms around an embedding function and a decoder function.

    `sam` supplies `preprocess` and `postprocess_masks` (they read only the pixel statistics and
    `image_encoder.img_size`, identical for every model here).
    """

    def __init__(self, sam: Sam, encode, decode) -> None:
        self.sam = sam
        self.transform = ResizeLongestSide(IMAGE_SIZE)
        self.encode = encode  # preprocessed [1,3,1024,1024] tensor -> embedding ndarray
        self.decode = decode  # feeds dict (with orig_im_size) -> (iou, low_res) ndarrays

    def run(self, image: np.ndarray, prompts) -> tuple[dict[str, np.ndarray], dict]:
        original_size = image.shape[:2]
        input_image = self.transform.apply_image(image)
        x = torch.as_tensor(input_image).permute(2, 0, 1).contiguous()[None, :, :, :]
        input_size = tuple(x.shape[-2:])
        with torch.no_grad():
            pre = self.sam.preprocess(x)
        embedding = self.encode(pre)
        out = {
            "embedding": embedding,
            "original_size": np.array(original_size, dtype=np.float32),
            "preprocessed_sum": np.array([pre.double().sum().item()], dtype=np.float32),
            "preprocessed_abs_sum": np.array([pre.double().abs().sum().item()], dtype=np.float32),
        }
        side = 4 * embedding.shape[-1]
        mask_input = np.zeros((1, 1, side, side), dtype=np.float32)
        has_mask = np.zeros(1, dtype=np.float32)
        extra = {"pre": pre, "input_size": input_size, "feeds": []}
        for k, (points, labels) in enumerate(prompts):
            # The padding point (0,0) with label -1 stands in for the absent box, as SamPredictor's
            # ONNX example does; apply_coords maps it to (0,0).
            coords = np.concatenate([points, np.zeros((1, 2), dtype=np.float32)], axis=0)
            frame = self.transform.apply_coords(coords, original_size).astype(np.float32)
            feeds = {
                "image_embeddings": embedding,
                "point_coords": frame[None],
                "point_labels": np.concatenate([labels, [-1.0]]).astype(np.float32)[None],
                "mask_input": mask_input,
                "has_mask_input": has_mask,
                "orig_im_size": np.array(original_size, dtype=np.float32),
            }
            iou, low_res = self.decode(feeds)
            with torch.no_grad():
                upscaled = self.sam.postprocess_masks(torch.from_numpy(low_res), input_size, original_size)
            mask = (upscaled > self.sam.mask_threshold)[0, 0].numpy().astype(np.uint8)
            if PACK_MASKS:
                out[f"prompt{k}.mask_packed"] = np.packbits(mask, axis=1)
            else:
                out[f"prompt{k}.mask"] = mask
            out.update(
                {
                    f"prompt{k}.points": points,
                    f"prompt{k}.labels": labels,
                    f"prompt{k}.frame_coords": frame,
                    f"prompt{k}.has_mask_input": has_mask.copy(),
                    f"prompt{k}.iou": iou,
                    f"prompt{k}.low_res_logits": low_res,
                }
            )
            extra["feeds"].append(feeds)
            extra[f"mask{k}"] = mask
            extra[f"upscaled{k}"] = upscaled[0, 0].numpy()
            # The next prompt refines this one: its low-res logits become the mask input.
            mask_input, has_mask = low_res, np.ones(1, dtype=np.float32)
        return out, extra


def describe(stem: str, tensors: dict[str, np.ndarray], extra: dict) -> None:
    parts = [f"sum {tensors['preprocessed_sum'][0]:.6g}"]
    for k in (0, 1):
        m = extra[f"mask{k}"]
        near = int(np.sum(np.abs(extra[f"upscaled{k}"]) < 1e-4))
        parts.append(
            f"p{k}: iou {tensors[f'prompt{k}.iou'].item():+.4f}, fg {m.mean():.1%}, |logit|<1e-4 at {near} px"
        )
    print(f"  {stem}: " + "; ".join(parts))


def save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors keeps metadata in a hash map, and several keys could be
    # written in a different order from one run to the next.
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata={"generator": "tests/parity/make_fixtures.py"})
    path.chmod(0o644)  # safetensors creates files readable by the owner only


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# Fixture sets


def tiny_fixtures(sam: Sam, prompts: dict) -> None:
    print("tiny fixtures (torch reference, checked against the exported ONNX files):")
    single = SamOnnxModel(sam, return_single_mask=True)

    def encode(pre: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return sam.image_encoder(pre).numpy()

    def decode(feeds: dict) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            _, iou, low_res = single(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        return iou.numpy(), low_res.numpy()

    ref = Reference(sam, encode, decode)
    enc = E.ort_session(TINY_DIR / "encoder.onnx")
    low = E.ort_session(TINY_DIR / "decoder_lowres.onnx")
    std = E.ort_session(TINY_DIR / "decoder.onnx")
    out_dir = FIXTURES / "tiny"
    for stem, *_ in IMAGES:
        image = load_rgb(IMAGES_DIR / f"{stem}.png")
        tensors, extra = ref.run(image, prompts[stem])
        (emb,) = enc.run(None, {"image": extra["pre"].numpy()})
        E.compare(f"{stem} encoder", tensors["embedding"], emb, STRICT_REL_TOL)
        for k, feeds in enumerate(extra["feeds"]):
            iou, low_res = low.run(E.LOWRES_OUTPUTS, {n: feeds[n] for n in E.LOWRES_INPUTS})
            E.compare(f"{stem} prompt{k} low-res decoder iou", tensors[f"prompt{k}.iou"], iou, STRICT_REL_TOL)
            E.compare(f"{stem} prompt{k} low-res decoder logits", tensors[f"prompt{k}.low_res_logits"], low_res,
                      STRICT_REL_TOL)
            masks, iou, low_res = std.run(E.DECODER_OUTPUTS, feeds)
            E.compare(f"{stem} prompt{k} standard decoder logits", tensors[f"prompt{k}.low_res_logits"], low_res,
                      STRICT_REL_TOL)
            flips = int(np.sum((masks[0, 0] > 0) != extra[f"mask{k}"].astype(bool)))
            print(f"  {stem} prompt{k}: standard decoder `masks` > 0 differs from the reference mask at {flips} px")
        describe(stem, tensors, extra)
        save(out_dir / f"{stem}.safetensors", tensors)
    # {file name: sha256}, the same layout as mobilesam/models.json.
    write_json(out_dir / "models.json", {
        "models_dir": "models/tiny",
        **{f.name: E.sha256_file(f) for f in sorted(TINY_DIR.glob("*.onnx"))},
    })


def mobilesam_fixtures(sam: Sam, prompts: dict, models_dir: Path) -> None:
    print(f"mobilesam fixtures (ONNX Runtime on {models_dir}):")
    sums = dict(line.split()[::-1] for line in (models_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    shas = {}
    for f in ("encoder.onnx", "decoder.onnx"):
        shas[f] = E.sha256_file(models_dir / f)
        if sums.get(f) != shas[f]:
            raise SystemExit(f"{models_dir / f}: sha256 {shas[f]} does not match SHA256SUMS ({sums.get(f)})")
    enc = E.ort_session(models_dir / "encoder.onnx")
    dec = E.ort_session(models_dir / "decoder.onnx")

    def encode(pre: torch.Tensor) -> np.ndarray:
        return enc.run(None, {"image": pre.numpy()})[0]

    def decode(feeds: dict) -> tuple[np.ndarray, np.ndarray]:
        iou, low_res = dec.run(E.LOWRES_OUTPUTS, feeds)
        return iou, low_res

    ref = Reference(sam, encode, decode)  # `sam` only lends preprocess/postprocess_masks (1024, SAM stats)
    out_dir = FIXTURES / "mobilesam"
    for stem in MOBILESAM_IMAGES:
        image = load_rgb(IMAGES_DIR / f"{stem}.png")
        tensors, extra = ref.run(image, prompts[stem])
        for k, feeds in enumerate(extra["feeds"]):
            (masks,) = dec.run(["masks"], feeds)
            flips = int(np.sum((masks[0, 0] > 0) != extra[f"mask{k}"].astype(bool)))
            print(f"  {stem} prompt{k}: the file's own `masks` > 0 differs from postprocess_masks at {flips} px")
        describe(stem, tensors, extra)
        tensors["embedding_strided"] = tensors.pop("embedding").reshape(-1)[::MOBILESAM_EMBEDDING_STRIDE].copy()
        save(out_dir / f"{stem}.safetensors", tensors)
    # tests/parity.rs reads the checksums as top-level "<file name>": "<sha256>" entries.
    write_json(out_dir / "models.json", {
        "models_dir": "../shared/models/mobilesam-random",
        **shas,
        "embedding_stride": MOBILESAM_EMBEDDING_STRIDE,
        "images": list(MOBILESAM_IMAGES),
    })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mobilesam-dir", type=Path, default=MOBILESAM_DIR_DEFAULT,
                        help="the shared random MobileSAM models (default ../shared/models/mobilesam-random)")
    parser.add_argument("--skip-mobilesam", action="store_true", help="leave the mobilesam fixtures as they are")
    args = parser.parse_args()
    torch.set_num_threads(1)

    sam = build_tiny_sam()
    export_tiny_bundle(sam)
    prompts = write_images()
    tiny_fixtures(sam, prompts)
    if not args.skip_mobilesam:
        if not (args.mobilesam_dir / "encoder.onnx").exists():
            raise SystemExit(f"{args.mobilesam_dir}: not found (pass --mobilesam-dir or --skip-mobilesam)")
        mobilesam_fixtures(sam, prompts, args.mobilesam_dir)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except E.ValidationError as e:
        print(f"VALIDATION FAILED: {e}", file=sys.stderr)
        sys.exit(1)
