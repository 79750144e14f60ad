"""Training NeO 360 across scenes (``recon neo360 train``) and scoring it on held-out ones.

Each step draws a scene, ``num_sources`` source views spread around its rig and
``num_rays`` random pixels of its other views; the loss is the MSE of the coarse and fine
renders plus ``distortion_weight`` times mip-NeRF 360's distortion loss of the fine pass.
With LPIPS weights (``lpips_weights``, a local file) a second stage starts at step
``lpips_start``: the targets become whole ``patch_size`` patches and ``lpips_weight`` times
the LPIPS of the rendered patches joins the loss.
Training runs through :func:`geometry.training.train_loop` (checkpoints, ``--resume``,
``--max-minutes``, DDP under ``torchrun``: each rank draws its own batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from reconstruction.field.render import distortion_loss
from reconstruction.neo360.config import NeO360Config
from reconstruction.neo360.data import (
    REGIONS,
    Batch,
    SceneViews,
    make_batch,
    make_patch_batch,
    pixel_rays,
    pixel_regions,
)
from reconstruction.neo360.model import NeO360

if TYPE_CHECKING:
    from reconstruction.eval.lpips import LPIPS

KIND = "neo360"
COMMAND = "recon neo360 train"


@dataclass
class TrainOptions:
    """Optimisation of NeO 360 across scenes."""

    steps: int = 20000
    """Optimiser steps (the run also stops at --max-minutes)."""
    lr: float = 1e-3
    """Peak learning rate (Adam; warm-up then cosine decay)."""
    num_sources: int = 3
    """Source views per scene and step."""
    num_rays: int = 512
    """Target rays per step."""
    distortion_weight: float = 1e-3
    """Weight of the distortion loss of the fine pass."""
    coarse_weight: float = 1.0
    """Weight of the coarse pass's MSE."""
    seed: int = 0
    """Seed of the batches and the initial weights."""
    warmup_steps: int = 20
    """Linear warm-up of the learning rate."""
    triplane_lr_scale: float = 1.0
    """Learning rate of the triplane encoder (voxel projection, plane pooling and
    refinement) relative to ``lr``."""
    lpips_weights: Path | None = None
    """Local LPIPS weights (a full LPIPS state dict, or the official alex.pth / vgg.pth
    heads with --train.lpips-backbone): turns on the second stage (LPIPS of rendered
    patches from step --train.lpips-start). Without it there is no second stage; nothing
    is downloaded."""
    lpips_backbone: Path | None = None
    """torchvision's ImageNet AlexNet / VGG-16 weights, when --train.lpips-weights holds
    only the linear heads."""
    lpips_weight: float = 0.1
    """Weight of the LPIPS term in the second stage."""
    lpips_start: int = 10000
    """First step of the second stage (with --max-minutes, pick a step the run reaches)."""
    patch_size: int = 32
    """Side (pixels) of the target patches of the second stage (AlexNet LPIPS needs at
    least 31, VGG-16 16); ``num_rays // patch_size^2`` patches per step, at least one."""
    augment: bool = False
    """Each step's scene in a random field frame: a random yaw about the up axis and, half
    the time, mirrored left-right (data.augment_scene)."""
    log_every: int = 20
    checkpoint_every_s: float = 300.0


#: The smallest patch each LPIPS trunk reads (AlexNet: its stride-4 stem and two 3/2 pools).
MIN_LPIPS_PATCH = {"alex": 31, "vgg": 16}


def load_stage_lpips(options: TrainOptions, image_size: tuple[int, int] | None = None,
                     device: str | torch.device = "cpu") -> LPIPS | None:
    """The LPIPS network of the second stage (None without ``lpips_weights``), its options
    checked against the images ``(H, W)``; UserError on a bad file or option."""
    from geometry.errors import UserError
    from reconstruction.eval.lpips import load_lpips

    if options.lpips_weights is None:
        return None
    if options.lpips_weight < 0 or options.lpips_start < 0:
        raise UserError("--train.lpips-weight and --train.lpips-start must not be negative.")
    lpips = load_lpips(options.lpips_weights, options.lpips_backbone, device,
                       ("--train.lpips-weights", "--train.lpips-backbone"))
    low = MIN_LPIPS_PATCH[lpips.net_name]
    if options.patch_size < low:
        raise UserError(f"--train.patch-size {options.patch_size} is too small for the "
                        f"{lpips.net_name} LPIPS network; give at least {low}.")
    if image_size is not None and options.patch_size > min(image_size):
        raise UserError(f"--train.patch-size {options.patch_size} does not fit the "
                        f"{image_size[1]}x{image_size[0]} training images; give at most "
                        f"{min(image_size)}.")
    return lpips


def loss_terms(model: NeO360, batch: Batch, options: TrainOptions,
               generator: torch.Generator | None = None,
               lpips: LPIPS | None = None) -> dict[str, Tensor]:
    """MSE (fine and coarse) + distortion loss of one batch, plus ``lpips_weight`` times
    the mean LPIPS of the fine render's patches when the batch holds patches and ``lpips``
    is given."""
    enc = model.encode(batch.images, batch.K, batch.T_world_cam)
    out = model.render_rays(enc, batch.rays, perturb=True, generator=generator)
    mse = ((out["rgb"] - batch.rgb) ** 2).mean()
    terms = {"mse": mse}
    loss = mse
    if model.config.num_fine > 0:
        coarse = ((out["coarse_rgb"] - batch.rgb) ** 2).mean()
        terms["mse_coarse"] = coarse
        loss = loss + options.coarse_weight * coarse
    if options.distortion_weight > 0:
        dist = distortion_loss(out["s_edges"], out["weights"]).mean()
        terms["distortion"] = dist
        loss = loss + options.distortion_weight * dist
    if lpips is not None and batch.patch > 0:
        p = batch.patch
        perceptual = lpips(out["rgb"].reshape(-1, p, p, 3),
                           batch.rgb.reshape(-1, p, p, 3)).mean()
        terms["lpips"] = perceptual
        loss = loss + options.lpips_weight * perceptual
    terms["loss"] = loss
    return terms


def train(scenes: list[SceneViews], config: NeO360Config, options: TrainOptions,
          out: Path | None, max_minutes: float | None = None, resume: bool = False,
          backbone: Path | None = None, quiet: bool = False, data_info: dict | None = None,
          model: NeO360 | None = None, device: str | None = "cpu",
          lpips: LPIPS | None = None):
    """Train (or continue training) a NeO 360 model on ``scenes``; returns ``(model,
    TrainResult)``. ``backbone``: a local torchvision ResNet checkpoint for the encoder;
    ``device``: cpu, cuda or cuda:N (None: CUDA when available); ``lpips``: the network
    of the second stage (default: :func:`load_stage_lpips` of ``options``)."""
    from geometry.training import ddp_cleanup, ddp_setup

    if lpips is None:
        lpips = load_stage_lpips(options, tuple(scenes[0].images.shape[1:3]))
    dist = ddp_setup(device)
    try:
        return _train(scenes, config, options, out, max_minutes, resume, backbone, quiet,
                      data_info, model, dist, lpips)
    finally:
        ddp_cleanup()


def _train(scenes: list[SceneViews], config: NeO360Config, options: TrainOptions,
           out: Path | None, max_minutes: float | None, resume: bool, backbone: Path | None,
           quiet: bool, data_info: dict | None, model: NeO360 | None, dist,
           lpips: LPIPS | None):
    """:func:`train` inside the process group."""
    from geometry.training import TrainLoop, train_loop

    torch.manual_seed(options.seed)
    if model is None:
        model = NeO360(config)
        if backbone is not None and not resume:
            load_backbone(model, backbone)
    model.to(dist.device)
    if lpips is not None:
        lpips.to(dist.device)
    patches = max(1, options.num_rays // options.patch_size ** 2)

    def batch_fn(step: int, rank: int, world: int) -> Batch:
        rng = np.random.default_rng([options.seed, step, rank])
        if lpips is not None and step >= options.lpips_start:
            return make_patch_batch(scenes, rng, options.num_sources, patches,
                                    options.patch_size, dist.device, options.augment)
        return make_batch(scenes, rng, options.num_sources, options.num_rays, dist.device,
                          options.augment)

    def loss_fn(m, batch: Batch) -> dict[str, Tensor]:
        return loss_terms(m, batch, options, lpips=lpips)

    optimizer = torch.optim.Adam(param_groups(model, options.lr, options.triplane_lr_scale))
    loop = TrainLoop(out=out, kind=KIND, config=config.to_dict(), steps=options.steps,
                     max_minutes=max_minutes, resume=resume, warmup_steps=options.warmup_steps,
                     log_every=options.log_every,
                     checkpoint_every_s=options.checkpoint_every_s, desc="NeO 360",
                     quiet=quiet, extra={"data": data_info or {}})
    result = train_loop(model, optimizer, batch_fn, loss_fn, loop, dist=dist)
    return model, result


TRIPLANE_MODULES = ("project", "plane_score", "refine")


def param_groups(model: NeO360, lr: float, triplane_lr_scale: float = 1.0) -> list[dict]:
    """Adam parameter groups: the triplane encoder at ``lr * triplane_lr_scale``, the rest
    at ``lr``."""
    tri = [p for name, p in model.named_parameters() if name.split(".")[0] in TRIPLANE_MODULES]
    rest = [p for name, p in model.named_parameters()
            if name.split(".")[0] not in TRIPLANE_MODULES]
    return [{"params": rest, "lr": lr}, {"params": tri, "lr": lr * triplane_lr_scale}]


def load_backbone(model: NeO360, path: Path) -> int:
    """Load an ImageNet ResNet (torchvision state dict; safetensors or a weights-only
    ``.pth``) into the encoder; returns the number of tensors loaded."""
    from geometry.errors import UserError
    from geometry.io.checkpoints import load_safetensors, torch_load_weights_only

    if model.config.backbone == "tiny":
        raise UserError("--backbone-weights needs --model.backbone resnet18 or resnet34 "
                        "(the tiny encoder has no ImageNet weights).")
    if Path(path).suffix == ".safetensors":
        state = load_safetensors(path, "an ImageNet ResNet checkpoint")
    else:
        state = torch_load_weights_only(path, "an ImageNet ResNet checkpoint",
                                        "give a torchvision ResNet state dict")
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a state dict of a torchvision ResNet.")
    loaded = model.encoder.load_backbone(state)
    if not any(name.startswith("layer1.") for name in loaded):
        raise UserError(f"{path} does not fit the {model.config.backbone} encoder (no layer1 "
                        "weights of the right shapes); give a torchvision "
                        f"{model.config.backbone} checkpoint.")
    return len(loaded)


def load_model(checkpoint: Path, device: str | torch.device = "cpu") -> NeO360:
    """A trained NeO 360 from a ``recon neo360 train`` folder."""
    from geometry.training import load_weights, read_checkpoint_config

    record = read_checkpoint_config(checkpoint, KIND, COMMAND)
    model = NeO360(NeO360Config.from_dict(dict(record["config"])))
    load_weights(checkpoint, model, KIND, COMMAND)
    return model.to(device).eval()


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a.detach() - b.detach()) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def evaluation_views(scene: SceneViews, index: int, num_sources: int = 3,
                     seed: int = 0) -> list[int]:
    """The source views of held-out scene number ``index`` (seeded, spread around the rig)."""
    from reconstruction.neo360.data import spread_views

    return spread_views(len(scene.images), num_sources, np.random.default_rng([seed, index]))


@torch.no_grad()
def evaluate(model: NeO360, scenes: list[SceneViews], num_sources: int = 3,
             num_targets: int = 2, seed: int = 0, chunk: int = 4096,
             first_index: int = 0) -> dict:
    """Mean PSNR of novel views on held-out scenes: per scene, ``num_sources`` spread views
    (:func:`evaluation_views` of ``first_index + k``) and ``num_targets`` other views
    rendered whole.

    Returns ``psnr`` and ``views``; where every scene has depth maps (generated scenes),
    also ``regions``: per :func:`~reconstruction.neo360.data.pixel_regions` label seen
    (sky, foreground, background), its share of the pixels, its share of the squared error
    and its PSNR over all target pixels.
    """
    model.eval()
    device = next(model.parameters()).device
    values = []
    with_regions = all(scene.depth is not None for scene in scenes)
    sse = torch.zeros(len(REGIONS), dtype=torch.float64)
    pixels = torch.zeros(len(REGIONS), dtype=torch.float64)
    for k, scene in enumerate(scenes):
        V = len(scene.images)
        src = evaluation_views(scene, first_index + k, num_sources, seed)
        others = [v for v in range(V) if v not in src]
        targets = [others[int(i)] for i in
                   np.linspace(0, len(others) - 1, min(num_targets, len(others))).round()]
        cams = scene.cameras[src].to(device)
        enc = model.encode(scene.images[src].to(device), cams.K, cams.T_world_cam)
        for t in targets:
            rays = scene.rays(t).reshape(-1).to(device)
            rgb = torch.cat([model.render_rays(enc, rays[i:i + chunk])["rgb"]
                             for i in range(0, len(rays), chunk)])
            rgb = rgb.clamp(0, 1).cpu()
            target = scene.images[t].reshape(-1, 3)
            values.append(psnr(rgb, target))
            if with_regions:
                labels = pixel_regions(scene, t).reshape(-1)
                err = ((rgb.double() - target.double()) ** 2).mean(-1)
                sse.index_add_(0, labels, err)
                pixels += torch.bincount(labels, minlength=len(REGIONS)).double()
    out: dict = {"psnr": float(np.mean(values)), "views": len(values)}
    if with_regions and pixels.sum() > 0:
        out["regions"] = {
            name: {"pixels": float(pixels[r] / pixels.sum()),
                   "error": float(sse[r] / sse.sum()) if sse.sum() > 0 else 0.0,
                   "psnr": float(10 * math.log10(pixels[r] / max(float(sse[r]), 1e-10)))}
            for r, name in enumerate(REGIONS) if pixels[r] > 0}
    return out


def format_regions(regions: dict) -> str:
    """One line of :func:`evaluate`'s ``regions``: each region's share of the pixels and of
    the squared error, and its PSNR."""
    return "; ".join(f"{name} {r['pixels']:.0%} of the pixels, {r['error']:.0%} of the error, "
                     f"{r['psnr']:.2f} dB" for name, r in regions.items())


@dataclass
class FinetuneOptions:
    """Optional per-scene fine-tuning on the source views (the whole network)."""

    steps: int = 0
    """Steps (0: none)."""
    lr: float = 2e-4
    num_rays: int = 512
    seed: int = 0


def finetune(model: NeO360, images: Tensor, K: Tensor, T_world_cam: Tensor,
             options: FinetuneOptions, quiet: bool = True) -> list[dict]:
    """Fine-tune ``model`` on rays of its own source views (field frame); in place."""
    from geometry.cameras import Cameras
    from geometry.training import TrainLoop, train_loop

    V, H, W, _ = images.shape
    cams = Cameras(K=K, T_world_cam=T_world_cam, width=W, height=H)

    def batch_fn(step: int, rank: int, world: int) -> Batch:
        rng = np.random.default_rng([options.seed, step, rank])
        views = torch.from_numpy(rng.integers(0, V, options.num_rays))
        pix = torch.from_numpy(rng.integers(0, H * W, options.num_rays))
        rows, cols = pix // W, pix % W
        return Batch(images, K, T_world_cam, pixel_rays(cams[views], rows, cols),
                     images[views, rows, cols])

    opts = TrainOptions(distortion_weight=1e-3)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    loop = TrainLoop(out=None, kind=KIND, config=model.config.to_dict(), steps=options.steps,
                     schedule="constant", grad_clip=1.0, log_every=max(1, options.steps // 5),
                     desc="NeO 360 fine-tuning", quiet=quiet)
    return train_loop(model, optimizer, batch_fn, lambda m, b: loss_terms(m, b, opts),
                      loop).history


