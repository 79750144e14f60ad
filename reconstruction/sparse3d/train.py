"""Training Sparse3D's controller: ``recon sparse3d train``.

The standard diffusion objective with a frozen backbone: for a target view of a scene and
``views`` other (input) views with their cameras, noise the target's latent to a random
step, predict the noise with the controlled UNet (epipolar features of the inputs at the
target camera) and regress it (MSE). Only the controller (image encoder, aggregator,
ControlNet) trains. Data: generated object scenes (``reconstruction.procedural``, orbit
layout, normalised to the object centre and a unit camera distance), rendered once at the
start. Runs through :func:`geometry.training.train_loop` (resumable, ``--max-minutes``,
data-parallel under ``torchrun``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reconstruction.sparse3d.config import (
    Sparse3DArchitecture,
    Sparse3DTrainOptions,
    SyntheticObjects,
)
from reconstruction.sparse3d.model import KIND, Sparse3DModel

SCENE_CENTRE = np.array([0.0, 0.0, 0.35])


@dataclass
class Scenes:
    """Rendered training scenes, normalised frame."""

    images: Tensor  # [S, N, H, W, 3]
    T_cam_world: Tensor  # [S, N, 4, 4]
    K: Tensor  # [3, 3]


def render_scenes(data: SyntheticObjects) -> Scenes:
    """Render every scene of ``data`` (normalised: centre at the origin, distance 1)."""
    from reconstruction.procedural.scene import (
        SceneConfig,
        camera_poses,
        intrinsics,
        make_world,
        render_view,
    )

    images, poses = [], []
    K = None
    for k in range(data.num_scenes):
        config = SceneConfig(kind="orbit", num_views=data.views, width=data.size,
                             height=data.size, seed=data.seed + k, arc_deg=data.arc_deg,
                             radius=data.radius, elevation_deg=data.elevation_deg,
                             num_objects=data.num_objects, supersample=2).resolved()
        world = make_world(config)
        K = intrinsics(config)
        scene_images, scene_poses = [], []
        for T_world_cam in camera_poses(config):
            scene_images.append(render_view(world, K, T_world_cam, data.size, data.size, 2).rgb)
            T = T_world_cam.copy()
            T[:3, 3] = (T[:3, 3] - SCENE_CENTRE) / data.radius
            scene_poses.append(np.linalg.inv(T))
        images.append(np.stack(scene_images))
        poses.append(np.stack(scene_poses))
    return Scenes(torch.tensor(np.stack(images), dtype=torch.float32),
                  torch.tensor(np.stack(poses), dtype=torch.float32),
                  torch.tensor(K, dtype=torch.float32))


def make_batch(scenes: Scenes, options: Sparse3DTrainOptions, step: int, rank: int = 0,
               world_size: int = 1, num_timesteps: int = 1000) -> dict:
    """One scene's sample: ``inputs`` views and ``targets`` other views, steps and noise
    (seeded by ``(seed, step, rank)``)."""
    g = torch.Generator().manual_seed(options.seed * 1_000_003 + step * world_size + rank)
    s, n = scenes.images.shape[:2]
    scene = int(torch.randint(s, (1,), generator=g))
    order = torch.randperm(n, generator=g)
    inputs = order[:options.inputs]
    targets = order[options.inputs:options.inputs + options.targets]
    b = len(targets)
    size = scenes.images.shape[2]
    return {
        "inputs": scenes.images[scene, inputs], "T_in": scenes.T_cam_world[scene, inputs],
        "targets": scenes.images[scene, targets], "T_tgt": scenes.T_cam_world[scene, targets],
        "K": scenes.K, "t": torch.randint(0, num_timesteps, (b,), generator=g),
        "noise": torch.randn(b, 3, size, size, generator=g),
    }


def denoising_loss(model: Sparse3DModel, batch: dict, prompt: str = "") -> Tensor:
    """MSE between the controlled noise prediction and the injected noise."""
    from reconstruction.generative.schedule import add_noise
    from reconstruction.sparse3d.model import scale_intrinsics

    backbone = model.backbone
    device = backbone.device
    features = model.controller.encoder(batch["inputs"].to(device))
    x0 = backbone.encode(batch["targets"].to(device))
    noise = batch["noise"].to(device)
    if noise.shape != x0.shape:  # a latent backbone: noise of the latent's shape
        g = torch.Generator().manual_seed(int(batch["t"].sum()))
        noise = torch.randn(x0.shape, generator=g).to(device)
    t = batch["t"].to(device)
    noisy = add_noise(x0, noise, t, backbone.alphas_cumprod)
    ds = 1.0 / model.controller.downsample
    v, b = len(batch["inputs"]), len(t)
    K_feat = scale_intrinsics(batch["K"].to(device), ds)
    eps = model.eps(noisy, t, backbone.prompt_embedding(prompt), features,
                    batch["T_in"].to(device), K_feat.expand(v, 3, 3),
                    batch["T_tgt"].to(device), K_feat.expand(b, 3, 3),
                    torch.zeros(3, device=device))
    return ((eps - noise) ** 2).mean()


def train(scenes: Scenes, arch: Sparse3DArchitecture, options: Sparse3DTrainOptions,
          out: Path, max_minutes: float | None = None, resume: bool = False,
          backbone=None, quiet: bool = False, extra: dict | None = None, dist=None):
    """Train the controller into ``out``; returns ``(model, TrainResult)``."""
    from geometry.training import TrainLoop, train_loop

    torch.manual_seed(options.seed)
    model = Sparse3DModel(arch, backbone)
    if dist is not None:
        model = model.to(dist.device)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=options.lr, weight_decay=0.0)
    loop = TrainLoop(out=out, kind=KIND, config={"arch": arch.__dict__,
                                                 "prompt": options.prompt},
                     steps=options.steps, max_minutes=max_minutes, resume=resume,
                     warmup_steps=min(100, options.steps // 10), log_every=options.log_every,
                     desc="Sparse3D controller", quiet=quiet, extra=extra or {})
    n = len(model.backbone.alphas_cumprod)

    def batch_fn(step: int, rank: int, world_size: int) -> dict:
        return make_batch(scenes, options, step, rank, world_size, n)

    def loss_fn(m: Sparse3DModel, batch: dict) -> dict[str, Tensor]:
        return {"loss": denoising_loss(m, batch, options.prompt)}

    result = train_loop(model, optimizer, batch_fn, loss_fn, loop, dist=dist)
    return model, result


@torch.no_grad()
def evaluate(model: Sparse3DModel, scenes: Scenes, options: Sparse3DTrainOptions,
             samples: int = 16) -> float:
    """Mean denoising MSE over ``samples`` fixed samples of ``scenes`` (lower is better)."""
    values = [float(denoising_loss(model, make_batch(scenes, options, 10_000_000 + k),
                                   options.prompt)) for k in range(samples)]
    return float(np.mean(values))
