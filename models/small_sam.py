"""A small segmenter in SAM's ONNX interface, trained from scratch here (models/train_small_sam.py).

Why it exists: no pretrained SAM can be obtained on the machines this project is built on, and a
random-weight SAM gives meaningless masks, so nothing about the prompting agent's quality could be
measured. This model is a measuring instrument and a demo model, not a replacement for SAM.

Interface (exactly SAM's, so the runtime, the agent and every command use it unchanged):

* encoder: `image` f32 [1,3,1024,1024] (SAM preprocessing: longest side 1024, normalised,
  zero-padded bottom/right) -> `image_embeddings` f32 [1,C,64,64].
* decoder, both forms of `SamOnnxModel(return_single_mask=True)`: `image_embeddings`,
  `point_coords` [1,N,2] (x, y in the 1024 frame), `point_labels` [1,N] (1 fg, 0 bg, -1 padding;
  box corners 2/3 are ignored), `mask_input` [1,1,256,256] (previous low-res logits),
  `has_mask_input` [1] (+ `orig_im_size` [2] in the standard form) -> `iou_predictions` [1,1],
  `low_res_masks` [1,1,256,256] (+ `masks` [1,1,h,w]).

Architecture, and why:

* The encoder works at a reduced resolution: its first operation averages the 1024 frame down to
  256x256 (exactly the 4x4 average pooling of the frame, so training can run on 256x256 inputs),
  then a residual conv net with stages at 128, 64, 32, 16 and 8 and a top-down (FPN) path sums
  them into a 64x64 map of C channels. About 1.8 GMAC, against MobileSAM's 38.8.
* The decoder does not use SAM's late fusion of point tokens: trained from scratch on this
  machine, SAM's prompt encoder + mask decoder learnt a dataset-average blob and ignored the clicks
  for thousands of iterations (../shared/notes/small-sam-probe.md). Instead, as interactive
  segmentation models do (RITM's click maps), the decoder rasterises the clicks into Gaussian maps
  at the embedding's resolution (positive and negative, three widths), concatenates them with the
  embedding and the previous mask (SAM's `mask_input`, as a probability at 64x64), and runs a
  small U-Net (64 -> 8 -> 64) whose 8x8 bottom sees the whole frame, so a click can spread to the
  whole object. A 1x1 conv predicts 4x4 sub-cell logits per cell (pixel shuffle) for the 256x256
  output; the IoU head reads pooled bottleneck features and the predicted mask's area.

Every operator exports to standard ONNX (Conv, Relu, Add, Concat, Resize with constant scales,
AveragePool, Exp, ReduceMax, Equal, Reshape, Transpose, ...) that tract, rten and ONNX Runtime run.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMG_SIZE = 1024  # SAM's frame
TRAIN_SIDE = 256  # the resolution the encoder works at (the 1024 frame averaged 4x4)
EMBED_SIDE = 64  # embedding grid
LOW_RES = 256  # low-res mask side (4x the embedding, as SAM)
CLICK_SIGMAS = (1.0, 3.0, 8.0)  # widths of the click maps, in embedding cells (16 frame pixels)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU; BatchNorm folds into the conv at export."""
    pad = dilation * (k // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut."""

    def __init__(self, ch: int, dilation: int = 1) -> None:
        super().__init__()
        self.a = conv_bn(ch, ch, dilation=dilation)
        self.b = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(ch)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)))


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 (exports as a Resize with constant scales)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class SmallEncoder(nn.Module):
    """SAM frame [B,3,1024,1024] -> embedding [B,C,64,64]; `forward_256` takes the pooled frame."""

    def __init__(self, embed_dim: int = 64, fpn: int = 96) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 32, stride=2), conv_bn(32, 32))  # 128
        self.s64 = nn.Sequential(conv_bn(32, 64, stride=2), Residual(64), Residual(64))
        self.s32 = nn.Sequential(conv_bn(64, 96, stride=2), Residual(96), Residual(96))
        self.s16 = nn.Sequential(conv_bn(96, 128, stride=2), Residual(128), Residual(128, dilation=2))
        self.s8 = nn.Sequential(conv_bn(128, 160, stride=2), Residual(160), Residual(160, dilation=2))
        self.lat128 = nn.Conv2d(32, fpn, 3, stride=2, padding=1)  # sub-cell detail from 128x128
        self.lat64 = nn.Conv2d(64, fpn, 1)
        self.lat32 = nn.Conv2d(96, fpn, 1)
        self.lat16 = nn.Conv2d(128, fpn, 1)
        self.lat8 = nn.Conv2d(160, fpn, 1)
        self.out = nn.Sequential(conv_bn(fpn, fpn), nn.Conv2d(fpn, embed_dim, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_256(F.avg_pool2d(image, 4))

    def forward_256(self, x: torch.Tensor) -> torch.Tensor:
        f128 = self.stem(x)
        f64 = self.s64(f128)
        f32 = self.s32(f64)
        f16 = self.s16(f32)
        f8 = self.s8(f16)
        p = self.lat8(f8)
        p = up2(p) + self.lat16(f16)
        p = up2(p) + self.lat32(f32)
        p = up2(p) + self.lat64(f64) + self.lat128(f128)
        return self.out(p)


def click_maps(coords: torch.Tensor, labels: torch.Tensor, side: int = EMBED_SIDE) -> torch.Tensor:
    """Positive and negative Gaussian click maps [B, 2*len(CLICK_SIGMAS), side, side].

    `coords` [B,N,2] are (x, y) in the 1024 frame, `labels` [B,N]; points with labels other than 0
    and 1 (SAM's padding point -1, box corners) leave no trace. Each map is the maximum over the
    points of its kind, so it does not depend on their order or count.
    """
    scale = side / IMG_SIZE
    grid = torch.arange(side, dtype=coords.dtype) + 0.5  # cell centres, in cells
    px = coords[..., 0] * scale
    py = coords[..., 1] * scale
    dx2 = (grid.view(1, 1, 1, side) - px.unsqueeze(-1).unsqueeze(-1)) ** 2
    dy2 = (grid.view(1, 1, side, 1) - py.unsqueeze(-1).unsqueeze(-1)) ** 2
    d2 = dx2 + dy2  # [B,N,S,S]
    pos = (labels == 1).to(coords.dtype).unsqueeze(-1).unsqueeze(-1)
    neg = (labels == 0).to(coords.dtype).unsqueeze(-1).unsqueeze(-1)
    maps = []
    for s in CLICK_SIGMAS:
        k = torch.exp(d2 * (-0.5 / (s * s)))
        maps.append(torch.amax(k * pos, dim=1))
        maps.append(torch.amax(k * neg, dim=1))
    return torch.stack(maps, dim=1)


def pixel_shuffle4(x: torch.Tensor) -> torch.Tensor:
    """[B,16,H,W] -> [B,1,4H,4W] with reshapes (depth-to-space written out for every engine)."""
    b, _, h, w = x.shape
    x = x.reshape(b, 4, 4, h, w).permute(0, 3, 1, 4, 2)
    return x.reshape(b, 1, 4 * h, 4 * w)


class ClickDecoder(nn.Module):
    """Embedding + clicks + previous mask -> (iou [B,1], low-res logits [B,1,256,256])."""

    def __init__(self, embed_dim: int = 64, widths: tuple[int, int, int, int] = (48, 64, 96, 128)) -> None:
        super().__init__()
        w64, w32, w16, w8 = widths
        extra = 2 * len(CLICK_SIGMAS) + 2  # click maps, previous mask, has-mask flag
        self.fuse = nn.Sequential(conv_bn(embed_dim + extra, w64), conv_bn(w64, w64))
        self.d32 = nn.Sequential(conv_bn(w64, w32, stride=2), Residual(w32))
        self.d16 = nn.Sequential(conv_bn(w32, w16, stride=2), Residual(w16, dilation=2))
        self.d8 = nn.Sequential(conv_bn(w16, w8, stride=2), Residual(w8, dilation=2))
        self.u16 = conv_bn(w8 + w16, w16)
        self.u32 = conv_bn(w16 + w32, w32)
        self.u64 = nn.Sequential(conv_bn(w32 + w64, w64), conv_bn(w64, w64))
        self.to_logits = nn.Conv2d(w64, 16, 1)
        self.iou = nn.Sequential(nn.Linear(w8 + 1, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        clicks = click_maps(point_coords, point_labels)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        prev = F.avg_pool2d(torch.sigmoid(mask_input), 4) * has
        flag = has * torch.ones_like(prev)
        x = torch.cat([image_embeddings, clicks, prev, flag], dim=1)
        f64 = self.fuse(x)
        f32 = self.d32(f64)
        f16 = self.d16(f32)
        f8 = self.d8(f16)
        u = self.u16(torch.cat([up2(f8), f16], dim=1))
        u = self.u32(torch.cat([up2(u), f32], dim=1))
        u = self.u64(torch.cat([up2(u), f64], dim=1))
        logits = pixel_shuffle4(self.to_logits(u))
        area = torch.sigmoid(logits).mean(dim=(2, 3))
        pooled = f8.mean(dim=(2, 3))
        iou = torch.sigmoid(self.iou(torch.cat([pooled, area], dim=1)))
        return iou, logits


class SmallSam(nn.Module):
    """Encoder + decoder, the pair that training optimises together."""

    def __init__(self, embed_dim: int = 64, objectness_head: bool = False) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.encoder = SmallEncoder(embed_dim)
        self.decoder = ClickDecoder(embed_dim)
        # Training only, never exported: a linear read-out of "where is the object" from the
        # embedding, with no click. Its loss makes the embedding carry object information, as a
        # real SAM's does, which a prompting agent needs before its first click; clicks alone
        # teach the encoder boundaries, not which object a dataset is about.
        self.objectness = nn.Conv2d(embed_dim, 1, 1) if objectness_head else None


# --------------------------------------------------------------------------------------------------
# Export forms


class LowResForm(nn.Module):
    """The decoder as `decoder_lowres.onnx`: outputs (iou_predictions, low_res_masks)."""

    def __init__(self, decoder: ClickDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        return self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)


class StandardForm(nn.Module):
    """The decoder as `decoder.onnx` (SamOnnxModel's standard form): also `masks` at the original
    size: bilinear to the 1024 frame, crop the padding, bilinear to `orig_im_size` (h, w); the crop
    is sliced with tensors so that it follows `orig_im_size` (the fix export.py applies to SAM)."""

    def __init__(self, decoder: ClickDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        iou, low = self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        masks = F.interpolate(low, size=(IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
        scale = IMG_SIZE / torch.max(orig_im_size)
        prepadded = torch.floor(scale * orig_im_size + 0.5).to(torch.int64)
        masks = masks[..., : prepadded[0], : prepadded[1]]
        size = orig_im_size.to(torch.int64)
        masks = F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        return masks, iou, low


def encoder_macs(embed_dim: int = 64) -> int:
    """Multiply-accumulates of one encoder run on a 1024 frame (convolutions and the pooling)."""
    enc = SmallEncoder(embed_dim).eval()
    return _conv_macs(enc, torch.zeros(1, 3, IMG_SIZE, IMG_SIZE))


def decoder_macs(embed_dim: int = 64) -> int:
    """Multiply-accumulates of one decoder run (2 points, low-res form)."""
    dec = ClickDecoder(embed_dim).eval()
    args = (
        torch.zeros(1, embed_dim, EMBED_SIDE, EMBED_SIDE),
        torch.zeros(1, 2, 2),
        torch.tensor([[1.0, -1.0]]),
        torch.zeros(1, 1, LOW_RES, LOW_RES),
        torch.ones(1),
    )
    return _conv_macs(dec, *args)


def _conv_macs(module: nn.Module, *args: torch.Tensor) -> int:
    total = 0

    def hook(m: nn.Module, inp, out) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += out.numel() * k
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(*args)
    for h in handles:
        h.remove()
    return total
