#!/usr/bin/env python3
"""Train the small SAM-interface segmenter (models/small_sam.py) from scratch, and export a bundle.

    python models/train_small_sam.py train --data ../shared/data --out out/small-sam --bundle models/small-sam

trains with SAM's interactive recipe on the *train* splits of SOD, Kvasir-SEG, CVC-ClinicDB and
DAVIS 2016 (the sequences of `davis_split`'s train part), then writes the bundle (encoder, both
decoder forms, random policy and SRM, bundle.toml with checksums). Seeded; `--resume` continues
from the last checkpoint in --out; a progress bar shows loss and ETA; `curves.png` is the learning
curve; `log.csv` has one row per logged interval and `val.csv` the held-out validation rows.

The recipe (SAM's, section 3 and appendix A, scaled down to a CPU):
* per image, a first click sampled in the object, then further clicks sampled from the error
  regions of the current prediction (a false-negative region gives a positive click, a false
  positive one a negative click), the previous low-res logits fed back as `mask_input`; a random
  number of these rounds runs without gradient, then two with it (RITM's trick, which keeps an
  iteration's cost bounded while the network sees long click sequences);
* loss: 20 x focal + dice on the 256x256 logits, MSE between the predicted and the true IoU;
  plus (`--objectness`, 0.5) BCE + dice of a 1x1 read-out of the embedding against the object's
  mask with no click, so that the embedding says where the object is, as a real SAM's does (the
  agent's SRM and policy read the embedding before any click);
* augmentation: crops that zoom in (scale/crop), flips, brightness/contrast/saturation jitter.

Validation (`val.csv`, the curve's right panel): a few images held out of each *train* split,
clicked by the oracle protocol of `alignsam eval --methods oracle` (next click at the interior
point farthest from the boundary of the largest error region), mIoU after 1, 3 and 5 clicks, and
the "click effect": the share of low-res pixels that change when the single click moves from the
object to the background. Eval splits are never read.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import small_sam as S  # noqa: E402
from davis_eval import davis_split  # noqa: E402

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
CACHE_SIDE = 512  # images are kept in memory with their longest side at most this


# --------------------------------------------------------------------------------------------------
# Data


@dataclass
class Source:
    """One training dataset and its (image, mask) paths; `Config.weights` says how often it is
    sampled."""

    name: str
    pairs: list[tuple[Path, Path]]


def split_ids(ds: Path, split: str) -> list[str]:
    return [line.strip() for line in (ds / "splits" / f"{split}.txt").read_text().splitlines() if line.strip()]


def find_image(folder: Path, stem: str) -> Path:
    for ext in (".jpg", ".png", ".jpeg", ".bmp", ".tif"):
        p = folder / f"{stem}{ext}"
        if p.exists():
            return p
    raise FileNotFoundError(f"{folder}/{stem}.*: no image")


def training_sources(data: Path) -> list[Source]:
    """The train splits only (eval splits are never read)."""
    out = []
    for name, rel in (
        ("SOD", "saliency/SOD"),
        ("Kvasir-SEG", "polyp/Kvasir-SEG"),
        ("CVC-ClinicDB", "polyp/CVC-ClinicDB"),
    ):
        ds = data / rel
        pairs = [(find_image(ds / "images", i), ds / "masks" / f"{i}.png") for i in split_ids(ds, "train")]
        out.append(Source(name, pairs))
    davis = data / "video/DAVIS2016-train"
    train_seqs, _ = davis_split(data)
    pairs = []
    for seq in train_seqs:
        for img in sorted((davis / "images" / seq).glob("*.jpg")):
            pairs.append((img, davis / "masks" / seq / f"{img.stem}.png"))
    out.append(Source("DAVIS2016", pairs))
    return out


def source_weights(spec: str) -> dict[str, float]:
    """`NAME=w,NAME=w` -> {name: w} (the sampling weight of each training dataset)."""
    out = {}
    for part in spec.split(","):
        name, _, w = part.partition("=")
        out[name.strip()] = float(w)
    return out


def hold_out(sources: list[Source], per_source: int) -> tuple[list[Source], list[tuple[str, Path, Path]]]:
    """Moves `per_source` evenly spaced pairs of each source into a validation list."""
    val = []
    kept = []
    for s in sources:
        step = max(1, len(s.pairs) // per_source)
        idx = set(range(step // 2, len(s.pairs), step)[:per_source])
        val += [(s.name, *p) for i, p in enumerate(s.pairs) if i in idx]
        kept.append(Source(s.name, [p for i, p in enumerate(s.pairs) if i not in idx]))
    return kept, val


def load_pair(image: Path, mask: Path, max_side: int = CACHE_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 [H,W,3] and mask bool [H,W], shrunk together so the longest side <= max_side."""
    img = Image.open(image).convert("RGB")
    m = Image.open(mask).convert("L")
    if img.size != m.size:
        raise ValueError(f"{image}: image {img.size} and mask {m.size} differ in size")
    scale = max_side / max(img.size)
    if scale < 1:
        size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
        img = img.resize(size, Image.BILINEAR)
        m = m.resize(size, Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8), np.asarray(m) > 127


def to_frame(img: np.ndarray, mask: np.ndarray, side: int = S.TRAIN_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM preprocessing at `side` (longest side resized to `side`, normalised, zero-padded
    bottom/right): image [3,side,side] and mask [side,side] (0/1 float, padding 0). The 1024
    frame averaged 4x4 is what the exported encoder sees; resizing with antialias approximates it."""
    h, w = mask.shape
    scale = side / max(h, w)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().unsqueeze(0)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    x = (x - torch.from_numpy(PIXEL_MEAN).view(3, 1, 1)) / torch.from_numpy(PIXEL_STD).view(3, 1, 1)
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    m = F.interpolate(m, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    frame = torch.zeros(3, side, side)
    frame[:, :nh, :nw] = x
    gt = torch.zeros(side, side)
    gt[:nh, :nw] = (m > 0.5).float()
    return frame, gt


def augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Zoom-in crop that keeps part of the object, flips, colour jitter (uint8 in, uint8 out)."""
    h, w = mask.shape
    if rng.random() < 0.7:
        for _ in range(10):
            s = rng.uniform(0.5, 1.0)
            ch, cw = max(8, int(h * s * rng.uniform(0.85, 1.15))), max(8, int(w * s * rng.uniform(0.85, 1.15)))
            ch, cw = min(ch, h), min(cw, w)
            y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            m = mask[y0 : y0 + ch, x0 : x0 + cw]
            if m.mean() > 0.01 and m.sum() > 0.3 * mask.sum():
                img, mask = img[y0 : y0 + ch, x0 : x0 + cw], m
                break
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.2:
        img, mask = img[::-1], mask[::-1]
    x = img.astype(np.float32)
    x = x * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)  # contrast, brightness
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
    x = x * rng.uniform(0.93, 1.07, size=3)  # white balance
    return np.clip(x, 0, 255).astype(np.uint8), np.ascontiguousarray(mask)


# --------------------------------------------------------------------------------------------------
# Clicks


def interior_distance(region: np.ndarray) -> np.ndarray:
    """Distance to the region's boundary (the frame's edge counts as boundary)."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def largest_component(region: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(region)
    if n <= 1:
        return region
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == sizes.argmax()


def oracle_click(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, int] | None:
    """SAM's evaluation click: the interior point farthest from the boundary of the largest error
    region (false negatives -> positive click, false positives -> negative). (x, y, label) in
    pixel-centre coordinates of the map, or None when there is no error."""
    fn, fp = gt & ~pred, pred & ~gt
    cfn, cfp = largest_component(fn), largest_component(fp)
    if not cfn.any() and not cfp.any():
        return None
    positive = cfn.sum() >= cfp.sum()
    region = cfn if positive else cfp
    d = interior_distance(region)
    y, x = np.unravel_index(np.argmax(d), d.shape)
    return x + 0.5, y + 0.5, 1 if positive else 0


def sampled_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator) -> tuple[float, float, int]:
    """A training click: from the error region (chosen in proportion to its area), weighted
    towards its interior, or uniformly in it; a positive click in the object when there is no
    error left."""
    fn, fp = gt & ~pred, pred & ~gt
    n_fn, n_fp = fn.sum(), fp.sum()
    if n_fn + n_fp == 0:
        region, label = gt, 1
    else:
        positive = rng.random() < n_fn / (n_fn + n_fp)
        region, label = (fn, 1) if positive else (fp, 0)
        if rng.random() < 0.5:
            region = largest_component(region)
    return point_in(region, rng) + (label,)


def point_in(region: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    if rng.random() < 0.6:
        w = interior_distance(region) ** 2
    else:
        w = region.astype(np.float64)
    flat = w.ravel()
    total = flat.sum()
    if total <= 0:
        h, wd = region.shape
        return float(rng.uniform(0, wd)), float(rng.uniform(0, h))
    i = rng.choice(flat.size, p=flat / total)
    y, x = divmod(int(i), region.shape[1])
    return x + rng.random(), y + rng.random()


def frame_coords(points: list[list[tuple[float, float, int]]], side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch of equally long click lists in `side` map coordinates -> (coords in the 1024 frame,
    labels) tensors."""
    k = S.IMG_SIZE / side
    coords = torch.tensor([[(x * k, y * k) for x, y, _ in p] for p in points], dtype=torch.float32)
    labels = torch.tensor([[lab for _, _, lab in p] for p in points], dtype=torch.float32)
    return coords, labels


# --------------------------------------------------------------------------------------------------
# Losses


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    a = alpha * target + (1 - alpha) * (1 - target)
    return (a * ce * (1 - pt) ** gamma).mean(dim=(1, 2, 3))


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def batch_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    p, g = pred.flatten(1), gt.flatten(1) > 0.5
    inter = (p & g).sum(1).float()
    union = (p | g).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


# --------------------------------------------------------------------------------------------------
# Training


@dataclass
class Config:
    seed: int = 0
    iterations: int = 6000  # the committed models/small-sam: 97.2 min of steps on 2 cores (models/README.md)
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    max_free_rounds: int = 6  # click rounds without gradient before the two with it
    embed_dim: int = 64
    val_per_source: int = 16
    val_every: int = 250
    ckpt_every: int = 100
    threads: int = 2
    # bfloat16 autocast: "auto" turns it on where oneDNN has bf16 kernels (AVX-512 and later):
    # there, with channels-last tensors, 2.2x faster steps (measured on an AVX-512 BF16 CPU:
    # 0.73 s vs 1.59 s per batch of 8). On an AVX2 CPU it is emulated and many times slower, so
    # "auto" trains in float32 there. The weights and the exported model are float32 either way.
    bf16: str = "auto"  # auto, on or off
    channels_last: bool = True
    weights: str = "SOD=0.40,Kvasir-SEG=0.20,CVC-ClinicDB=0.15,DAVIS2016=0.25"
    # weight of the objectness loss (BCE + dice of a 1x1 read-out of the embedding against the
    # object's mask, no click); 0 trains without it, as the first committed model was
    objectness: float = 0.5


def use_bf16(setting: str) -> bool:
    """Whether to train under bfloat16 autocast: `on`, `off`, or `auto` (where oneDNN has native
    bf16 kernels; PyTorch's own check, which is false on AVX2 CPUs)."""
    if setting not in ("auto", "on", "off"):
        raise SystemExit(f"--bf16 {setting}: expected auto, on or off")
    if setting == "auto":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return setting == "on"


class Trainer:
    def __init__(self, cfg: Config, sources: list[Source], val: list[tuple[str, Path, Path]], out: Path) -> None:
        self.cfg, self.out = cfg, out
        torch.manual_seed(cfg.seed)
        self.model = S.SmallSam(cfg.embed_dim, objectness_head=cfg.objectness > 0)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.bf16 = use_bf16(cfg.bf16)
        self.it = 0
        self.elapsed = 0.0
        print(f"loading {sum(len(s.pairs) for s in sources)} training and {len(val)} validation pairs", flush=True)
        t = time.time()
        self.sources = [(s, [load_pair(*p) for p in s.pairs]) for s in sources]
        self.val = [(name, *to_frame(*load_pair(i, m))) for name, i, m in val]
        print(f"loaded in {time.time() - t:.0f} s", flush=True)

    # ---- state
    def save(self) -> None:
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(
            {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "it": self.it,
             "elapsed": self.elapsed, "config": asdict(self.cfg)},
            tmp,
        )
        os.replace(tmp, self.out / "checkpoint.pt")

    def load(self, path: Path) -> None:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        if ck["config"] != asdict(self.cfg):
            raise SystemExit(f"{path}: checkpoint was made with another configuration: {ck['config']}")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.it, self.elapsed = ck["it"], ck["elapsed"]
        print(f"resumed from {path} at iteration {self.it}", flush=True)

    def lr_at(self, it: int) -> float:
        c = self.cfg
        if it < c.warmup:
            return c.lr * (it + 1) / c.warmup
        t = (it - c.warmup) / max(1, c.iterations - c.warmup)
        return 1e-5 + (c.lr - 1e-5) * 0.5 * (1 + math.cos(math.pi * t))

    # ---- one iteration
    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        weights = np.array([source_weights(self.cfg.weights)[s.name] for s, _ in self.sources])
        frames, gts = [], []
        for _ in range(self.cfg.batch):
            _, items = self.sources[rng.choice(len(self.sources), p=weights / weights.sum())]
            img, mask = items[rng.integers(len(items))]
            f, g = to_frame(*augment(img, mask, rng))
            if g.sum() == 0:  # the crop kept no object: use the whole image
                f, g = to_frame(img, mask)
            frames.append(f)
            gts.append(g)
        return torch.stack(frames), torch.stack(gts)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.it])  # the batch depends only on (seed, iteration)
        torch.manual_seed(cfg.seed * 1_000_003 + self.it)
        frames, gts = self.batch(rng)
        gt_np = gts.numpy() > 0.5
        self.model.train()
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.it)
        if cfg.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss, ious, rounds = self.clicked_rounds(frames, gts, gt_np, rng)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return {"loss": loss.item(), "iou": float(np.mean(ious)), "clicks": rounds}

    def clicked_rounds(self, frames, gts, gt_np, rng):
        """SAM's interactive recipe on one batch: a first click in the object (sometimes a
        background click too), then clicks from the error regions; a random number of rounds
        without gradient, then two with it. Returns the mean loss of the two, their IoUs and the
        number of rounds."""
        cfg = self.cfg
        emb = self.model.encoder.forward_256(frames)
        aux = self.objectness_loss(emb, gts) if cfg.objectness > 0 else 0.0

        points = [[(*point_in(g, rng), 1)] for g in gt_np]
        for b, g in enumerate(gt_np):  # sometimes a background click too, as the SRM start gives
            if rng.random() < 0.3 and (~g).any():
                points[b].append((*point_in(~g, rng), 0))
        n = max(len(p) for p in points)
        for p in points:  # equal lengths in a batch: repeat the first click (no effect on the maps)
            p += [p[0]] * (n - len(p))
        B = cfg.batch
        mask_in = torch.zeros(B, 1, S.LOW_RES, S.LOW_RES)
        has = torch.zeros(B)
        free = int(rng.integers(0, cfg.max_free_rounds + 1))
        losses = []
        ious = []
        for r in range(free + 2):
            coords, labels = frame_coords(points, S.LOW_RES)
            grad = r >= free
            with torch.set_grad_enabled(grad):
                iou_pred, logits = self.model.decoder(emb if grad else emb.detach(), coords, labels, mask_in, has)
            logits, iou_pred = logits.float(), iou_pred.float()
            pred = (logits.detach() > 0)[:, 0]
            true_iou = batch_iou(pred, gts)
            if grad:
                tgt = gts[:, None]
                loss = 20 * focal_loss(logits, tgt) + dice_loss(logits, tgt) + (iou_pred[:, 0] - true_iou) ** 2
                losses.append(loss.mean())
                ious.append(true_iou.mean().item())
            pn = pred.numpy()
            for b in range(B):
                points[b].append(sampled_click(pn[b], gt_np[b], rng))
            mask_in, has = logits.detach(), torch.ones(B)
        return torch.stack(losses).mean() + cfg.objectness * aux, ious, free + 2

    def objectness_loss(self, emb: torch.Tensor, gts: torch.Tensor) -> torch.Tensor:
        """BCE + dice of the objectness read-out (64x64, upsampled to the masks' 256) against the
        object's mask: no click, so the embedding alone has to say where the object is."""
        logits = objectness_logits(self.model, emb, gts.shape[-1])
        tgt = gts[:, None]
        return (F.binary_cross_entropy_with_logits(logits, tgt, reduction="none").mean(dim=(1, 2, 3))
                + dice_loss(logits, tgt)).mean()

    # ---- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        res = {}
        by_name: dict[str, list[list[float]]] = {}
        effects, objectness = [], []
        for i in range(0, len(self.val), 16):
            chunk = self.val[i : i + 16]
            names = [c[0] for c in chunk]
            frames = torch.stack([c[1] for c in chunk])
            gts = torch.stack([c[2] for c in chunk])
            emb = self.model.encoder.forward_256(frames)
            curves, effect = oracle_curve(self.model, emb, gts, clicks=5)
            for name, c in zip(names, curves):
                by_name.setdefault(name, []).append(c)
            effects += effect
            if self.model.objectness is not None:
                obj = objectness_logits(self.model, emb, gts.shape[-1])
                objectness += batch_iou((obj > 0)[:, 0], gts).tolist()
        for name, cs in by_name.items():
            arr = np.array(cs)
            for k in (1, 3, 5):
                res[f"{name}@{k}"] = float(arr[:, k - 1].mean())
        allc = np.array([c for cs in by_name.values() for c in cs])
        for k in (1, 3, 5):
            res[f"all@{k}"] = float(allc[:, k - 1].mean())
        res["click_effect"] = float(np.mean(effects))
        if objectness:  # mIoU of the objectness read-out alone, no click
            res["objectness@0"] = float(np.mean(objectness))
        return res

    def train(self) -> None:
        cfg = self.cfg
        log_path, val_path = self.out / "log.csv", self.out / "val.csv"
        from tqdm import tqdm

        print(f"training steps in {'bfloat16 autocast' if self.bf16 else 'float32'} "
              f"(--bf16 {cfg.bf16}; PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()})",
              flush=True)
        bar = tqdm(total=cfg.iterations, initial=self.it, unit="it", dynamic_ncols=True, mininterval=5)
        window: list[dict[str, float]] = []
        while self.it < cfg.iterations:
            t = time.time()
            stats = self.step()
            self.elapsed += time.time() - t
            self.it += 1
            window.append(stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", iou=f"{stats['iou']:.3f}")
            if self.it % 50 == 0:
                append_csv(log_path, {"iteration": self.it, "elapsed_s": round(self.elapsed, 1),
                                      "lr": self.lr_at(self.it - 1),
                                      "loss": np.mean([w["loss"] for w in window]),
                                      "train_iou": np.mean([w["iou"] for w in window])})
                window = []
            if self.it % cfg.val_every == 0 or self.it == cfg.iterations:
                v = self.validate()
                append_csv(val_path, {"iteration": self.it, "elapsed_s": round(self.elapsed, 1), **v})
                bar.write(f"it {self.it}: val mIoU@1/3/5 {v['all@1']:.3f}/{v['all@3']:.3f}/{v['all@5']:.3f}, "
                          f"click effect {v['click_effect']:.3f}")
                plot_curves(self.out)
            if self.it % cfg.ckpt_every == 0 or self.it == cfg.iterations:
                self.save()
        bar.close()


def objectness_logits(model: S.SmallSam, emb: torch.Tensor, side: int) -> torch.Tensor:
    """The training-only objectness read-out of the embedding, upsampled to `side` x `side`."""
    return F.interpolate(model.objectness(emb).float(), size=(side, side), mode="bilinear", align_corners=False)


@torch.no_grad()
def oracle_curve(model: S.SmallSam, emb: torch.Tensor, gts: torch.Tensor, clicks: int) -> tuple[list, list]:
    """IoU after 1..clicks oracle clicks for each image (at the 256 frame, from its embedding),
    and the click effect."""
    gt_np = gts.numpy() > 0.5
    B = len(emb)
    points: list[list] = [[] for _ in range(B)]
    empty = np.zeros_like(gt_np[0])
    for b in range(B):
        points[b].append(oracle_click(empty, gt_np[b]))
    mask_in, has = torch.zeros(B, 1, S.LOW_RES, S.LOW_RES), torch.zeros(B)
    curves = [[] for _ in range(B)]
    first = None
    for r in range(clicks):
        coords, labels = frame_coords(points, S.LOW_RES)
        _, logits = model.decoder(emb, coords, labels, mask_in, has)
        pred = (logits > 0)[:, 0]
        if r == 0:
            first = pred.numpy()
        iou = batch_iou(pred, gts)
        for b in range(B):
            curves[b].append(float(iou[b]))
            nxt = oracle_click(pred[b].numpy(), gt_np[b])
            points[b].append(nxt if nxt is not None else points[b][-1])
        mask_in, has = logits, torch.ones(B)
    # click effect: the same single click moved to the background's deepest point
    moved = [[oracle_click(np.ones_like(g), g) or (0.5, 0.5, 0)] for g in gt_np]
    moved = [[(x, y, 1)] for x, y, _ in (m[0] for m in moved)]
    coords, labels = frame_coords(moved, S.LOW_RES)
    _, logits = model.decoder(emb, coords, labels, torch.zeros(B, 1, S.LOW_RES, S.LOW_RES), torch.zeros(B))
    other = (logits > 0)[:, 0].numpy()
    effect = [float((first[b] != other[b]).mean()) for b in range(B)]
    return curves, effect


def append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in row.items()})


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def plot_curves(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, val = read_csv(out / "log.csv"), read_csv(out / "val.csv")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if log:
        its = [int(r["iteration"]) for r in log]
        a.plot(its, [float(r["loss"]) for r in log], label="loss (focal x20 + dice + IoU MSE)")
        a2 = a.twinx()
        a2.plot(its, [float(r["train_iou"]) for r in log], color="tab:orange", label="train IoU (clicked rounds)")
        a2.set_ylim(0, 1)
        a.set_xlabel("iteration")
        a.legend(loc="upper left")
        a2.legend(loc="lower right")
        a.set_title("training")
    if val:
        its = [int(r["iteration"]) for r in val]
        for key in [k for k in val[0] if "@5" in k]:
            b.plot(its, [float(r[key]) for r in val], label=key.replace("@5", " mIoU@5"),
                   linewidth=2.5 if key.startswith("all") else 1)
        b.plot(its, [float(r["all@1"]) for r in val], "k--", label="all mIoU@1")
        b.set_ylim(0, 1)
        b.set_xlabel("iteration")
        b.legend(fontsize=7)
        b.set_title("held-out train images, oracle clicks")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Export


def export(ckpt: Path, bundle: Path, threads: int = 2, seed: int = 0) -> None:
    """Writes encoder.onnx, decoder.onnx, decoder_lowres.onnx, random policy.onnx/srm.onnx (unless
    trained ones are already there) and bundle.toml; each file checked against torch."""
    import export as E  # models/export.py

    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = Config(**{"objectness": 0.0, **ck["config"]})  # checkpoints older than the field had no head
    model = S.SmallSam(cfg.embed_dim, objectness_head=cfg.objectness > 0)
    model.load_state_dict(ck["model"])
    model = model.to(memory_format=torch.contiguous_format).eval()
    bundle.mkdir(parents=True, exist_ok=True)
    c = cfg.embed_dim
    gen = torch.Generator().manual_seed(seed)

    image = torch.randn(1, 3, S.IMG_SIZE, S.IMG_SIZE, generator=gen)
    E.torch_to_onnx(model.encoder, [image], bundle / "encoder.onnx", ["image"], ["image_embeddings"],
                    static_outputs={"image_embeddings": (1, c, S.EMBED_SIDE, S.EMBED_SIDE)})
    with torch.no_grad():
        ref = model.encoder(image).numpy()
    (got,) = E.ort_session(bundle / "encoder.onnx", threads).run(None, {"image": image.numpy()})
    E.compare("encoder image_embeddings", ref, got)

    def dec_inputs(n: int, has_mask: bool) -> dict[str, torch.Tensor]:
        return {
            "image_embeddings": torch.randn(1, c, S.EMBED_SIDE, S.EMBED_SIDE, generator=gen),
            "point_coords": torch.randint(0, S.IMG_SIZE, (1, n, 2), generator=gen).float(),
            "point_labels": torch.randint(-1, 4, (1, n), generator=gen).float(),
            "mask_input": torch.randn(1, 1, S.LOW_RES, S.LOW_RES, generator=gen) * 4,
            "has_mask_input": torch.tensor([1.0 if has_mask else 0.0]),
        }

    shapes = {"iou_predictions": (1, 1), "low_res_masks": (1, 1, S.LOW_RES, S.LOW_RES)}
    low = S.LowResForm(model.decoder).eval()
    std = S.StandardForm(model.decoder).eval()
    E.torch_to_onnx(low, list(dec_inputs(5, True).values()), bundle / "decoder_lowres.onnx",
                    E.LOWRES_INPUTS, E.LOWRES_OUTPUTS, E.POINT_AXES, static_outputs=shapes)
    dummy = {**dec_inputs(5, True), "orig_im_size": torch.tensor([1500.0, 2250.0])}
    E.torch_to_onnx(std, list(dummy.values()), bundle / "decoder.onnx",
                    E.DECODER_INPUTS, E.DECODER_OUTPUTS, E.POINT_AXES, static_outputs=shapes)
    s_low = E.ort_session(bundle / "decoder_lowres.onnx", threads)
    s_std = E.ort_session(bundle / "decoder.onnx", threads)
    for n, has_mask, orig in ((2, False, (700.0, 1100.0)), (5, True, (321.0, 481.0))):
        inputs = dec_inputs(n, has_mask)
        with torch.no_grad():
            ref_iou, ref_low = low(**inputs)
            ref_masks, _, _ = std(**inputs, orig_im_size=torch.tensor(orig))
        feeds = {k: v.numpy() for k, v in inputs.items()}
        got_iou, got_low = s_low.run(E.LOWRES_OUTPUTS, feeds)
        E.compare(f"decoder_lowres N={n} iou_predictions", ref_iou.numpy(), got_iou)
        E.compare(f"decoder_lowres N={n} low_res_masks", ref_low.numpy(), got_low)
        got_masks, _, _ = s_std.run(E.DECODER_OUTPUTS, {**feeds, "orig_im_size": np.array(orig, np.float32)})
        E.compare(f"decoder N={n} masks {orig}", ref_masks.numpy(), got_masks)
    E.check_decoder_forms_agree(bundle / "decoder.onnx", bundle / "decoder_lowres.onnx", threads)

    if not (bundle / "policy.onnx").exists() or not (bundle / "srm.onnx").exists():
        E.export_agent_random(bundle, c, grid=10, seed=seed, threads=threads)
    macs = S.encoder_macs(c)
    desc = (
        f"small SAM-interface segmenter trained from scratch by models/train_small_sam.py "
        f"(seed {cfg.seed}, {ck['it']} iterations) on the train splits of SOD, Kvasir-SEG, CVC-ClinicDB and "
        f"DAVIS 2016 (research use only); encoder {macs / 1e9:.2f} GMAC; a demo and measuring model, not SAM"
    )
    E.write_bundle(bundle, name="small-sam", description=desc, grid=10, max_steps=15)


# --------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or resume) and export the bundle")
    t.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    t.add_argument("--out", type=Path, default=Path("out/small-sam"), help="checkpoints, logs, curves")
    t.add_argument("--bundle", type=Path, default=None, help="export the bundle here when training ends")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    for f in Config.__dataclass_fields__.values():
        kind = type(f.default)
        parse = (lambda v: v.strip().lower() in ("1", "true", "yes", "on")) if kind is bool else kind
        t.add_argument(f"--{f.name.replace('_', '-')}", type=parse, default=f.default)
    e = sub.add_parser("export", help="export a checkpoint to a bundle")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--bundle", type=Path, required=True)
    m = sub.add_parser("macs", help="print the encoder's and decoder's multiply-accumulates")
    m.add_argument("--embed-dim", type=int, default=64)
    args = p.parse_args(argv)

    if args.cmd == "macs":
        print(f"encoder {S.encoder_macs(args.embed_dim) / 1e9:.3f} GMAC per 1024 frame")
        print(f"decoder {S.decoder_macs(args.embed_dim) / 1e9:.3f} GMAC per run")
        return 0
    if args.cmd == "export":
        export(args.checkpoint, args.bundle)
        return 0

    cfg = Config(**{k: getattr(args, k) for k in Config.__dataclass_fields__})
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if not (args.data / "saliency/SOD").is_dir():
        raise SystemExit(f"{args.data}: not the shared data folder (no saliency/SOD)")
    args.out.mkdir(parents=True, exist_ok=True)
    ck = args.out / "checkpoint.pt"
    if ck.exists() and not args.resume:
        raise SystemExit(f"{ck} exists: pass --resume to continue it, or choose another --out")
    sources, val = hold_out(training_sources(args.data), cfg.val_per_source)
    (args.out / "config.json").write_text(json.dumps(
        {**asdict(cfg), "train_pairs": {s.name: len(s.pairs) for s in sources},
         "val_pairs": [str(v[1]) for v in val]}, indent=1))
    trainer = Trainer(cfg, sources, val, args.out)
    if args.resume and ck.exists():
        trainer.load(ck)
    trainer.train()
    print(f"trained {trainer.it} iterations in {trainer.elapsed / 60:.1f} min of training steps", flush=True)
    if args.bundle:
        export(ck, args.bundle, threads=cfg.threads, seed=cfg.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
