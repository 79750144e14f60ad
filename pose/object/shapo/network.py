"""ShAPO's single-shot network: RGB-D in, per-object centres, classes, poses, sizes and
latent shape and appearance codes out (Irshad et al. 2022, after CenterSnap).

**Architecture** (:class:`ShapoNet`): a small residual backbone (GroupNorm, strides 2-16)
and a feature pyramid merged down to stride 4; on that grid, one small head per output:

- ``heatmap [C]``: a Gaussian object-centre heatmap per category (CenterNet style; the
  peak's channel is the class);
- ``seg [C + 1]``: semantic segmentation (background + categories);
- ``depth [1]``: the auxiliary depth head (the clean depth, from the noisy input);
- ``shape [Ds]``, ``appearance [Da]``: the codes in the priors' latent spaces;
- ``pose [10]`` (ShAPO's "abs pose"): rotation as 6 numbers (the y axis, then a vector
  that fixes x by Gram-Schmidt: Zhou et al. 2019), the object centre's ray offset from the
  cell's ray (2), its depth behind the cell's reference depth (1), and the log of the box
  diagonal (the prior's scale, 1);
- ``vertex [2]``: each object pixel's offset to its object's peak (groups pixels into
  instance masks, ShAPO's "vertex" term).

The input is 7 channels: RGB, depth (normalised), depth validity and the pixel's ray
``(x/z, y/z)`` from the intrinsics, so the translation comes out in metres for any
camera. Translation: ``t = z (r + delta)``, with ``r`` the peak cell's ray and ``z`` the
cell's reference depth (mean valid input depth in the cell, holes filled from the depth
head) plus the predicted offset.

**Training targets** come from generated scenes built of the priors' training instances
(:func:`~pose.object.shapo.priors.prior_shapes`), whose codes the priors hold. Each
object's peak is its visible pixel nearest the projection of its box centre; every cell
of the object's mask is supervised (codes, pose, vertex); symmetric objects (bottle, bowl,
can, mug with the handle unseen) are supervised on their y axis only. Loss weights are
ShAPO's (``configs/net_config.txt``): heatmap 100 (MSE), segmentation 1, depth 1, shape
and appearance codes 0.1, abs pose 0.1, z 0.1, vertex 0.1; by default the heatmap uses
CenterNet's focal loss instead (weight 1), because MSE peaks rise too slowly for a
CPU-minute budget (``--heatmap-loss mse`` restores ShAPO's).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pose.object.shapo.metrics import is_symmetric
from pose.object.shapo.shapes import CATEGORIES

KIND = "shapo_net"
STRIDE = 4
"""Output grid stride (pixels per cell)."""
DEPTH_MEAN, DEPTH_STD = 0.7, 0.3
"""Normalisation of the depth input (metres)."""
LOG_DIAG_MEAN = -1.6
"""Offset of the log box diagonal (metres; ~0.2 m)."""
RAY_SCALE, Z_SCALE = 10.0, 10.0
"""The ray offset and the depth offset (metres) are regressed times these."""

__all__ = ["KIND", "STRIDE", "Detection", "NetConfig", "NetTrainConfig", "ShapoNet",
           "decode_peaks", "make_inputs", "rotation_from_6d", "scene_targets"]


@dataclass
class NetConfig:
    """Architecture of the single-shot network."""

    width: int = 32
    """Channels of the first backbone stage (doubling to 4x)."""
    fpn: int = 64
    """Channels of the feature pyramid and the heads."""
    image_size: int = 96
    """Width and height of the training images (pixels); predict resizes frames so that
    their focal length matches the one of these images."""
    fov_x_deg: float = 50.0
    """Horizontal field of view of the training images (degrees)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def focal_px(self) -> float:
        """Focal length (pixels) the network was trained at."""
        return 0.5 * self.image_size / math.tan(0.5 * math.radians(self.fov_x_deg))


@dataclass
class NetTrainConfig:
    """Data and optimisation of 'pose shapo train'."""

    scenes: int = 600
    """Generated training scenes (rendered once, at the start; split over ranks)."""
    seed: int = 1
    """Seed of the scenes (scene k uses seed * 100003 + k) and the initial weights."""
    batch_size: int = 16
    """Scenes per step (per rank)."""
    steps: int = 3000
    """Optimiser steps."""
    lr: float = 2e-3
    """Peak learning rate (Adam; ShAPO uses SGD at 6e-4 over 380k steps on GPUs)."""
    weight_decay: float = 1e-4
    """Adam weight decay (ShAPO's 1e-4)."""
    warmup_steps: int = 50
    """Linear warm-up of the learning rate."""
    heatmap_loss: str = "focal"
    """focal (CenterNet's penalty-reduced focal loss: peaks rise within CPU-minute budgets)
    or mse (ShAPO's, which needs far longer training)."""
    heatmap_weight: float = 100.0
    """ShAPO's heatmap loss multiplier (MSE)."""
    focal_weight: float = 1.0
    """Multiplier of the focal heatmap loss."""
    seg_weight: float = 1.0
    """Semantic segmentation (cross-entropy)."""
    depth_weight: float = 1.0
    """Auxiliary depth (L1, metres)."""
    shape_weight: float = 0.1
    """Shape code (L1)."""
    appearance_weight: float = 0.1
    """Appearance code (L1)."""
    pose_weight: float = 0.1
    """Abs pose: rotation, ray offset and log scale (L1)."""
    z_weight: float = 0.1
    """Depth of the object centre (L1, times 10 per metre)."""
    vertex_weight: float = 0.1
    """Offsets of object pixels to their peak (L1, cells / 4)."""
    jitter: float = 0.15
    """Random brightness and contrast change of the colour input (fraction)."""
    log_every: int = 20
    """Log the losses every this many steps."""
    checkpoint_every_s: float = 300.0
    """Checkpoint at least this often (seconds)."""


# ----------------------------------------------------------------------------- model


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class _Block(nn.Module):
    """A residual block (two 3x3 convolutions, GroupNorm), optionally strided."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _gn(cout)
        self.skip = (nn.Identity() if cin == cout and stride == 1 else
                     nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout)))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(h)) + self.skip(x))


def _head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1), nn.ReLU(), nn.Conv2d(cin, cout, 1))


HEADS = ("heatmap", "seg", "depth", "shape", "appearance", "pose", "vertex")


class ShapoNet(nn.Module):
    """Backbone + feature pyramid + heads (see the module docstring)."""

    IN_CHANNELS = 7

    def __init__(self, config: NetConfig, shape_dim: int, appearance_dim: int):
        super().__init__()
        self.config = config
        w, f = config.width, config.fpn
        c = len(CATEGORIES)
        self.stem = nn.Sequential(nn.Conv2d(self.IN_CHANNELS, w, 3, 2, 1, bias=False), _gn(w),
                                  nn.ReLU())  # stride 2
        self.c2 = _Block(w, w * 2, 2)  # stride 4
        self.c3 = _Block(w * 2, w * 4, 2)  # stride 8
        self.c4 = _Block(w * 4, w * 4, 2)  # stride 16
        self.lat2, self.lat3, self.lat4 = (nn.Conv2d(w * 2, f, 1), nn.Conv2d(w * 4, f, 1),
                                           nn.Conv2d(w * 4, f, 1))
        self.smooth = nn.Sequential(nn.Conv2d(f, f, 3, 1, 1), _gn(f), nn.ReLU())
        dims = {"heatmap": c, "seg": c + 1, "depth": 1, "shape": shape_dim,
                "appearance": appearance_dim, "pose": 10, "vertex": 2}
        self.heads = nn.ModuleDict({k: _head(f, d) for k, d in dims.items()})
        # CenterNet's prior on the heatmap: start near 0.01 everywhere
        nn.init.constant_(self.heads["heatmap"][-1].bias, -4.6)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x [B, 7, H, W]`` (:func:`make_inputs`; H, W multiples of 16) -> each head's
        ``[B, D, H / 4, W / 4]`` (heatmap after the sigmoid, depth in metres)."""
        c2 = self.c2(self.stem(x))
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        p4 = self.lat4(c4)
        p3 = self.lat3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        p2 = self.lat2(c2) + F.interpolate(p3, size=c2.shape[-2:], mode="nearest")
        feat = self.smooth(p2)
        out = {k: head(feat) for k, head in self.heads.items()}
        out["heatmap"] = torch.sigmoid(out["heatmap"])
        out["depth"] = DEPTH_MEAN + DEPTH_STD * out["depth"]
        return out


def make_inputs(rgb: Tensor, depth: Tensor, K: Tensor) -> Tensor:
    """The network input ``[B, 7, H, W]`` from ``rgb [B, H, W, 3]`` in [0, 1], ``depth
    [B, H, W]`` (metres, 0: unknown) and ``K [B, 3, 3]`` (pixel centres at +0.5)."""
    B, H, W = depth.shape
    u = torch.arange(W, dtype=torch.float32, device=depth.device) + 0.5
    v = torch.arange(H, dtype=torch.float32, device=depth.device) + 0.5
    rx = (u[None, None, :] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    ry = (v[None, :, None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    valid = (depth > 0).float()
    d = torch.where(depth > 0, (depth - DEPTH_MEAN) / DEPTH_STD, torch.zeros_like(depth))
    return torch.cat([(rgb.permute(0, 3, 1, 2) - 0.5) / 0.25, d[:, None], valid[:, None],
                      rx.expand(B, H, W)[:, None], ry.expand(B, H, W)[:, None]], 1)


def cell_rays(K: Tensor, gh: int, gw: int) -> Tensor:
    """``[B, 2, gh, gw]`` ray ``(x/z, y/z)`` through each output cell's centre pixel."""
    u = STRIDE * torch.arange(gw, dtype=torch.float32, device=K.device) + STRIDE / 2
    v = STRIDE * torch.arange(gh, dtype=torch.float32, device=K.device) + STRIDE / 2
    rx = (u[None, None, :] - K[:, 0, 2, None, None]) / K[:, 0, 0, None, None]
    ry = (v[None, :, None] - K[:, 1, 2, None, None]) / K[:, 1, 1, None, None]
    B = K.shape[0]
    return torch.stack([rx.expand(B, gh, gw), ry.expand(B, gh, gw)], 1)


def reference_depth(depth: Tensor, depth_pred: Tensor) -> Tensor:
    """``[B, gh, gw]``: the mean valid input depth of each cell, the depth head's value
    where a cell has none (no gradient)."""
    valid = (depth > 0).float()[:, None]
    total = F.avg_pool2d(depth[:, None] * valid, STRIDE)
    count = F.avg_pool2d(valid, STRIDE)
    ref = torch.where(count > 0, total / count.clamp_min(1e-6), depth_pred.detach())
    return ref[:, 0]


def rotation_from_6d(r6: Tensor) -> Tensor:
    """``[..., 3, 3]`` rotations from ``[..., 6]``: the first three numbers give the y
    axis, the last three fix x (Gram-Schmidt), ``z = x cross y``."""
    y = F.normalize(r6[..., :3], dim=-1, eps=1e-6)
    b = r6[..., 3:]
    x = F.normalize(b - (b * y).sum(-1, keepdim=True) * y, dim=-1, eps=1e-6)
    z = torch.linalg.cross(x, y, dim=-1)
    return torch.stack([x, y, z], -1)


# ----------------------------------------------------------------------------- targets


@dataclass
class SceneTargets:
    """Targets of one scene on the output grid (numpy, ``G = (H / 4, W / 4)``)."""

    heatmap: np.ndarray  # [C, gh, gw]
    seg: np.ndarray  # [gh, gw] int64 class id (0: background)
    depth: np.ndarray  # [gh, gw] clean depth at the cell centres (0: none)
    owner: np.ndarray  # [gh, gw] int64 object index (-1: none)
    vertex: np.ndarray  # [2, gh, gw] offset to the owner's peak (cells)
    objects: list[dict]
    """Per object: ``peak (row, col)``, ``R [3, 3]``, ``t [3]``, ``log_diag``,
    ``symmetric``, ``code_index`` (into the priors' codes), ``class_id``."""


def scene_targets(scene, sigma_scale: float = 0.12) -> SceneTargets:
    """Targets of a generated :class:`~pose.object.shapo.data.TabletopScene`.

    The peak of an object is its visible pixel nearest the projection of its box centre;
    its heatmap is a Gaussian there with a standard deviation of ``sigma_scale`` times the
    square root of the object's pixel count (in cells, at least 0.8).
    """
    H, W = scene.depth.shape
    gh, gw = H // STRIDE, W // STRIDE
    rows = STRIDE * np.arange(gh) + STRIDE // 2
    cols = STRIDE * np.arange(gw) + STRIDE // 2
    inst = scene.instance[np.ix_(rows, cols)]
    heat = np.zeros((len(CATEGORIES), gh, gw), np.float32)
    owner = inst.astype(np.int64) - 1
    vertex = np.zeros((2, gh, gw), np.float32)
    objects = []
    gy, gx = np.mgrid[0:gh, 0:gw]
    for i, obj in enumerate(scene.objects):
        cells = owner == i
        if not cells.any():
            owner[cells] = -1
            continue
        t = obj.T_cam_obj[:3, 3]
        uc = scene.K[0, 0] * t[0] / t[2] + scene.K[0, 2]
        vc = scene.K[1, 1] * t[1] / t[2] + scene.K[1, 2]
        cy, cx = (vc - STRIDE / 2) / STRIDE, (uc - STRIDE / 2) / STRIDE
        cand = np.argwhere(cells)
        r, c = cand[np.argmin((cand[:, 0] - cy) ** 2 + (cand[:, 1] - cx) ** 2)]
        sigma = max(0.8, sigma_scale * math.sqrt(obj.pixels) / STRIDE)
        g = np.exp(-((gy - r) ** 2 + (gx - c) ** 2) / (2 * sigma * sigma))
        ch = obj.class_id - 1
        heat[ch] = np.maximum(heat[ch], g)
        vertex[0][cells], vertex[1][cells] = r - gy[cells], c - gx[cells]
        objects.append({"index": i, "peak": (int(r), int(c)), "R": obj.T_cam_obj[:3, :3],
                        "t": t.copy(), "log_diag": math.log(obj.shape.diag),
                        "symmetric": is_symmetric(obj.class_name, obj.handle_visible),
                        "code_index": obj.instance_index, "class_id": obj.class_id})
    seg = np.array([0] + [o.class_id for o in scene.objects], np.int64)[inst]
    return SceneTargets(heat, seg, scene.depth_clean[np.ix_(rows, cols)].copy(), owner,
                        vertex, objects)


# ----------------------------------------------------------------------------- decoding


def decode_peaks(heatmap: Tensor, threshold: float = 0.3, max_objects: int = 20,
                 kernel: int = 3) -> list[tuple[int, int, int, float]]:
    """Peaks of a class heatmap ``[C, gh, gw]``: ``(class_index, row, col, score)`` by
    descending score.

    A peak is a cell whose best class score is at least ``threshold`` and the largest in
    its ``kernel x kernel`` neighbourhood (over all classes: one object per place).
    """
    best, cls = heatmap.max(0)
    pooled = F.max_pool2d(best[None, None], kernel, 1, kernel // 2)[0, 0]
    keep = (best >= pooled) & (best >= threshold)
    r, c = torch.nonzero(keep, as_tuple=True)
    scores = best[r, c]
    order = torch.argsort(scores, descending=True, stable=True)[:max_objects]
    return [(int(cls[r[k], c[k]]), int(r[k]), int(c[k]), float(scores[k])) for k in order]


@dataclass
class Detection:
    """One object of the single-shot prediction."""

    class_name: str
    score: float
    R: Tensor  # [3, 3] object-to-camera rotation
    t: Tensor  # [3] metres
    scale: float
    """Box diagonal (metres): the prior's NOCS frame times this is the camera frame."""
    z_shape: Tensor  # [Ds]
    z_app: Tensor  # [Da]
    peak: tuple[int, int]
    """``(row, col)`` on the output grid."""
    mask: Tensor | None = None
    """``[H, W]`` bool instance mask at the input resolution."""
    size: Tensor | None = None
    """``[3]`` box extents (metres), when computed."""


def decode(out: dict[str, Tensor], inputs_depth: Tensor, K: Tensor, threshold: float = 0.3,
           max_objects: int = 20) -> list[list[Detection]]:
    """Detections of a batch from the network's outputs (``out`` of :meth:`ShapoNet.forward`,
    the input ``depth [B, H, W]`` and ``K [B, 3, 3]``), each with its instance mask: the
    foreground pixels (segmentation) whose vertex points nearest to its peak."""
    B, _, gh, gw = out["heatmap"].shape
    H, W = inputs_depth.shape[-2:]
    rays = cell_rays(K, gh, gw)
    ref = reference_depth(inputs_depth, out["depth"])
    seg_up = F.interpolate(out["seg"], size=(H, W), mode="bilinear", align_corners=False)
    vtx_up = F.interpolate(out["vertex"], size=(H, W), mode="bilinear", align_corners=False)
    fg = seg_up.argmax(1) > 0  # [B, H, W]
    device = inputs_depth.device
    py = (torch.arange(H, dtype=torch.float32, device=device) + 0.5) / STRIDE - 0.5
    px = (torch.arange(W, dtype=torch.float32, device=device) + 0.5) / STRIDE - 0.5
    results = []
    for b in range(B):
        dets = []
        for ci, r, c, score in decode_peaks(out["heatmap"][b], threshold, max_objects):
            p = out["pose"][b, :, r, c]
            R = rotation_from_6d(p[:6])
            ray = rays[b, :, r, c] + p[6:8] / RAY_SCALE
            z = ref[b, r, c] + p[8] / Z_SCALE
            t = z * torch.cat([ray, ray.new_ones(1)])
            dets.append(Detection(CATEGORIES[ci], score, R, t,
                                  float(torch.exp(p[9] + LOG_DIAG_MEAN)),
                                  out["shape"][b, :, r, c], out["appearance"][b, :, r, c],
                                  (r, c)))
        if dets:
            peaks = torch.tensor([d.peak for d in dets], dtype=torch.float32,
                                 device=device)  # [N, 2]
            target_y = py[:, None] + vtx_up[b, 0] * 4.0
            target_x = px[None, :] + vtx_up[b, 1] * 4.0
            d2 = ((target_y[None] - peaks[:, 0, None, None]) ** 2
                  + (target_x[None] - peaks[:, 1, None, None]) ** 2)  # [N, H, W]
            nearest = d2.argmin(0)
            for k, det in enumerate(dets):
                det.mask = fg[b] & (nearest == k)
        results.append(dets)
    return results


# ----------------------------------------------------------------------------- losses


def focal_loss(pred: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0
               ) -> Tensor:
    """CenterNet's penalty-reduced focal loss of a heatmap ``pred`` (after the sigmoid)
    against Gaussian targets (1 at the peaks), normalised by the number of peaks."""
    p = pred.clamp(1e-4, 1 - 1e-4)
    peak = target >= 1 - 1e-4
    pos = -(torch.log(p) * (1 - p) ** alpha)[peak].sum()
    neg = -(torch.log(1 - p) * p**alpha * (1 - target) ** beta)[~peak].sum()
    return (pos + neg) / peak.sum().clamp_min(1)


def net_losses(net: ShapoNet, batch: dict, codes_shape: Tensor, codes_app: Tensor,
               cfg: NetTrainConfig) -> dict[str, Tensor]:
    """The weighted training losses of a batch (see :func:`make_batch`)."""
    out = net(batch["inputs"])
    terms: dict[str, Tensor] = {}
    if cfg.heatmap_loss == "focal":
        terms["heatmap"] = focal_loss(out["heatmap"], batch["heatmap"])
    else:
        terms["heatmap"] = F.mse_loss(out["heatmap"], batch["heatmap"])
    terms["seg"] = F.cross_entropy(out["seg"], batch["seg"])
    dmask = batch["depth"] > 0
    terms["depth"] = ((out["depth"][:, 0] - batch["depth"]).abs()[dmask].mean()
                      if bool(dmask.any()) else out["depth"].sum() * 0)
    owner = batch["owner"]  # [B, gh, gw] index into batch["objects"] rows (-1 none)
    sel = owner >= 0
    zero = out["pose"].sum() * 0
    if bool(sel.any()):
        rows = owner[sel]
        obj = batch["objects"]

        def at(name: str) -> Tensor:
            return out[name].permute(0, 2, 3, 1)[sel]  # [M, D]

        code_i = obj["code_index"][rows]
        has_code = code_i >= 0
        if bool(has_code.any()):
            terms["shape"] = (at("shape")[has_code] - codes_shape[code_i[has_code]]).abs().mean()
            terms["appearance"] = (at("appearance")[has_code]
                                   - codes_app[code_i[has_code]]).abs().mean()
        else:
            terms["shape"] = terms["appearance"] = zero
        pose = at("pose")
        R = rotation_from_6d(pose[:, :6])
        R_gt = obj["R"][rows]
        sym = obj["symmetric"][rows]
        rot_err = (R - R_gt).abs()
        rot = torch.where(sym, rot_err[:, :, 1].sum(-1) * 3.0, rot_err.sum((-1, -2))) / 9
        rays = cell_rays(batch["K"], *owner.shape[1:]).permute(0, 2, 3, 1)[sel]
        t = obj["t"][rows]
        ray_gt = t[:, :2] / t[:, 2:3]
        ray_err = (pose[:, 6:8] - RAY_SCALE * (ray_gt - rays)).abs().mean(-1)
        scale_err = (pose[:, 9] - (obj["log_diag"][rows] - LOG_DIAG_MEAN)).abs()
        terms["pose"] = (rot + ray_err + scale_err).mean()
        ref = reference_depth(batch["raw_depth"], out["depth"])[sel]
        terms["z"] = (pose[:, 8] - Z_SCALE * (t[:, 2] - ref)).abs().mean()
        vtx = out["vertex"].permute(0, 2, 3, 1)[sel]
        terms["vertex"] = (vtx - batch["vertex"].permute(0, 2, 3, 1)[sel] / 4.0).abs().mean()
    else:
        for k in ("shape", "appearance", "pose", "z", "vertex"):
            terms[k] = zero
    weights = {"heatmap": (cfg.focal_weight if cfg.heatmap_loss == "focal"
                           else cfg.heatmap_weight), "seg": cfg.seg_weight,
               "depth": cfg.depth_weight, "shape": cfg.shape_weight,
               "appearance": cfg.appearance_weight, "pose": cfg.pose_weight,
               "z": cfg.z_weight, "vertex": cfg.vertex_weight}
    terms["loss"] = sum(weights[k] * terms[k] for k in weights)
    return terms
