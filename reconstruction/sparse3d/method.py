"""Sparse3D's trainer on the Gaussian engine (the builder of ``recon fit --method sparse3d``).

The engine's F-3DGO trainer with the poses fixed (``--poses``), its photometric loss on
the input views (the paper's reconstruction loss) and densification, plus one
:class:`~reconstruction.generative.distill.ScoreDistillationLoss` whose score model is the
frozen diffusion backbone steered by the Sparse3D controller reading the inputs
(:class:`~reconstruction.sparse3d.model.Sparse3DScore`). Without ``--sparse3d.diffusion``
and ``--sparse3d.controller`` there is no model to distil: the fit uses the inputs alone
and says so.
"""

from __future__ import annotations

from pathlib import Path

import torch

from geometry.errors import UserError
from geometry.progress import log_stage
from reconstruction.sparse3d.config import Sparse3DConfig


def check_poses(config, cameras) -> None:
    """UserError unless the cameras of the photos are known."""
    if cameras is None and config.poses is None:
        raise UserError("--method sparse3d needs the cameras of the photos; give them with "
                        "--poses (a COLMAP model or transforms.json naming the photos).")


def check_inputs(options: Sparse3DConfig, images: list) -> None:
    """Refuse photos of different sizes and model paths that cannot be what they should."""
    from reconstruction.generative.loading import CHECKPOINT_SUFFIXES, is_diffusers_folder

    sizes = sorted({(im.width, im.height) for im in images})
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sizes)
        raise UserError(f"the photos have different sizes ({listed}); Sparse3D needs photos of "
                        "one size, so resize or crop them alike.")
    if options.diffusion is not None:
        path = Path(options.diffusion)
        if not path.exists():
            raise UserError(f"--sparse3d.diffusion {path} does not exist; pass a diffusers "
                            "Stable Diffusion folder or one .safetensors/.ckpt checkpoint.")
        if path.is_dir() and not is_diffusers_folder(path):
            raise UserError(f"--sparse3d.diffusion {path} has no unet/config.json; pass a "
                            "diffusers Stable Diffusion folder or one .safetensors/.ckpt "
                            "checkpoint.")
        if path.is_file() and path.suffix not in CHECKPOINT_SUFFIXES:
            raise UserError(f"--sparse3d.diffusion {path} is not a checkpoint file "
                            f"({', '.join(CHECKPOINT_SUFFIXES)}); pass a diffusers folder or "
                            "an official checkpoint.")
    if options.controller is not None:
        from geometry.training import read_checkpoint_config
        from reconstruction.sparse3d.model import KIND

        read_checkpoint_config(options.controller, KIND, "recon sparse3d train")
    if options.render_size < 16 or options.render_size % 8:
        raise UserError(f"--sparse3d.render-size {options.render_size} must be a multiple of "
                        "8 and at least 16.")


def score_loss(options: Sparse3DConfig, data, iterations: int, device: str | torch.device,
               quiet: bool = False):
    """The distillation term of a run, or None without a model (see the module doc)."""
    from reconstruction.generative.cameras import axes_centre
    from reconstruction.generative.distill import NovelViewConfig, ScoreDistillationLoss
    from reconstruction.generative.schedule import TimestepSampler
    from reconstruction.sparse3d.model import (
        Sparse3DArchitecture,
        Sparse3DModel,
        Sparse3DScore,
        load_controller,
        resize_views,
    )

    if options.diffusion is None and options.controller is None:
        log_stage("sparse3d: no --sparse3d.diffusion or --sparse3d.controller given, so there "
                  "is no model to distil: fitting the input views only", quiet)
        return None
    backbone = None
    if options.diffusion is not None:
        from reconstruction.generative.loading import load_stable_diffusion
        from reconstruction.generative.model import DiffusionBackbone

        backbone = DiffusionBackbone.from_stable_diffusion(load_stable_diffusion(
            options.diffusion, device, trust=options.trust_checkpoint))
    if options.controller is not None:
        model = load_controller(options.controller, backbone, device)
    else:
        log_stage("sparse3d: no --sparse3d.controller: a fresh zero-initialised controller "
                  "(the model does not see the input views)", quiet)
        model = Sparse3DModel(Sparse3DArchitecture(backbone="external"), backbone).to(device)
        model.requires_grad_(False)
    images, Ks = resize_views(data.images, data.Ks, options.render_size)
    T_cam_world = data.T_cam_world_init.float()
    centre = axes_centre(T_cam_world).float()
    score = Sparse3DScore(model, images, T_cam_world, Ks, centre, options.prompt)
    config = NovelViewConfig(
        weight=options.weight, every=options.every, start_fraction=options.start_fraction,
        batch_size=options.batch_size, render_size=options.render_size,
        elevation_margin_deg=options.elevation_margin_deg,
        timesteps=TimestepSampler(options.t_min, options.t_max, options.anneal))
    return ScoreDistillationLoss(score, config, iterations, options.guidance_scale, options.mode,
                                 centre=centre, name="sparse3d")


def build_trainer(job):
    """The Sparse3D trainer of a ``recon fit`` run (see the module doc)."""
    from reconstruction.engine.losses import default_loss_terms
    from reconstruction.engine.trainer import GaussianTrainer

    config, options = job.config, job.options
    terms = default_loss_terms(config.train)
    term = score_loss(options, job.data, config.train.iterations, config.device, config.quiet)
    if term is not None:
        terms.append(term)
    return GaussianTrainer(job.data, job.scene, config.train, seed=config.seed,
                           device=config.device, loss_terms=terms)
