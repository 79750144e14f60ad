"""UpFusion on the Gaussian engine (``recon fit --method upfusion``).

The paper distils a NeRF; we distil the engine's Gaussian splats (a documented deviation:
the viewer, the PLY export and CPU speed come for free). Stages:

1. **Initialisation without SfM** (:func:`upsrt_initialiser`, registered at run time as
   ``--init upfusion-upsrt``): the world is UpFusion's reference frame (:mod:`.rays`): the
   first photo's camera one unit from the object centre, at the origin. The other photos are
   unposed: each is placed by a render-and-compare search of UpSRT's renders (all photos as
   inputs) over a grid of viewpoints on the unit sphere; the engine refines the poses.
   The initial cloud is the visual hull of the photos' foregrounds (the photos are masked
   on a white background, as UpFusion's) in those cameras.
2. **Distillation** (:class:`UpFusionDistillationLoss`, a loss term of the engine's trainer):
   novel cameras around the object (the generative core's sampler), the render regressed
   onto a target from a denoiser, weighted as the official ``run_distillation.py``: the
   first ``bootstrap_fraction`` of the iterations at high noise (DDIM steps 25-29 of 30)
   with weight 1, then a uniform step in 1-29 with weight ``1 - alpha_bar``; plus LPIPS and
   the opacity term ``sqrt(alpha^2 + 0.01)``.
   - without diffusion weights the target is UpSRT's own render at the camera
     (:class:`UpSRTDenoiser`; the log says so) — what runs on a CPU;
   - with ``--upfusion.diffusion`` it is a few guided DDIM steps of the DF+SLT ControlNet
     (:mod:`.controlnet`) from the noised render.

   Deviation: the engine's photometric loss on the input photos stays on (the official
   distillation uses the fusion loss alone, the first input's camera being one of its
   sampled cameras).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.errors import UserError
from reconstruction.upfusion.config import UpFusionOptions

INIT_NAME = "upfusion-upsrt"
#: UpFusion's assumed focal length of unposed photos, in NDC (``ITWDataset``: 4.5).
OFFICIAL_FOCAL_NDC = 4.5
#: Colour the photos are composited on (UpFusion's masked inputs; the prompt says white).
BACKGROUND = (1.0, 1.0, 1.0)
#: First camera of the reference frame, OpenCV camera-to-world: at (0, 0, -1) looking at the
#: origin, image x along -x and image y along -y (the frame's axes are PyTorch3D's).
T_WORLD_FIRST = torch.tensor([[-1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 1.0, -1.0], [0, 0, 0, 1]],
                             dtype=torch.float64)


# ---------------------------------------------------------------------- loading UpSRT


def load_upsrt_model(options: UpFusionOptions, device: str = "cpu"):
    """UpSRT from ``--upfusion.upsrt`` (a training checkpoint folder or the official file)."""
    if options.upsrt is None:
        raise UserError("--method upfusion needs an UpSRT: give --upfusion.upsrt CKPT (a folder "
                        "written by 'recon upsrt train', or UpFusion's upsrt.pt with "
                        "--upfusion.dino).")
    path = Path(options.upsrt)
    if path.is_dir():
        from reconstruction.upfusion.train import load_upsrt

        return load_upsrt(path, device)
    if options.dino is None:
        raise UserError(f"{path} is a file: the official upsrt.pt needs the DINOv2 ViT-B/14 "
                        "weights too; give --upfusion.dino dinov2_vitb14_pretrain.pth.")
    from reconstruction.upfusion.official import load_official_upsrt

    return load_official_upsrt(path, Path(options.dino), device)


# ---------------------------------------------------------------------- initialisation


def photo_intrinsics(images: Sequence, fov_deg: float | None) -> Tensor:
    """``[V, 3, 3]`` intrinsics: EXIF focal, else ``fov_deg``, else UpFusion's 4.5 NDC."""
    Ks = []
    for im in images:
        w, h = im.width, im.height
        if im.focal_px is not None:
            f = float(im.focal_px)
        elif fov_deg is not None:
            f = 0.5 * w / math.tan(0.5 * math.radians(fov_deg))
        else:
            f = OFFICIAL_FOCAL_NDC * 0.5 * min(w, h)
        Ks.append(torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=torch.float64))
    return torch.stack(Ks)


def sphere_candidates(azimuths: int, elevations_deg: Sequence[float]) -> Tensor:
    """``[A*E, 4, 4]`` camera-to-world (OpenCV) on the unit sphere of the reference frame,
    looking at the origin, image-up along +y; azimuth 0 and elevation 0 is the first camera."""
    from geometry.se3 import look_at

    out = []
    for e in elevations_deg:
        for k in range(azimuths):
            a = 2 * math.pi * k / azimuths
            er = math.radians(e)
            eye = np.array([math.cos(er) * math.sin(a), math.sin(er), -math.cos(er) * math.cos(a)])
            out.append(torch.from_numpy(look_at(eye, np.zeros(3), up=(0.0, 1.0, 0.0))))
    return torch.stack(out)


@torch.no_grad()
def search_poses(model, photos: Tensor, Ks: Tensor, options: UpFusionOptions) -> Tensor:
    """``T_world_cam [V, 4, 4]`` of the photos in the reference frame: the first fixed, each
    other the grid viewpoint whose UpSRT render (all photos as inputs; for a posed model,
    ``input_rays="relative"``, the photos placed so far in their placed cameras) is closest
    (MSE at ``search_size``) to it."""
    import torch.nn.functional as F

    from reconstruction.upfusion.upsrt import ViewSet

    v, h, w = photos.shape[:3]
    views = ViewSet(images=photos, cameras=Cameras(K=Ks, T_world_cam=T_WORLD_FIRST.expand(
        v, 4, 4), width=w, height=h), T_ref_world=torch.eye(4, dtype=torch.float64))
    poses = [T_WORLD_FIRST]
    if v == 1:
        return T_WORLD_FIRST[None]
    slt = model.encode_views(views)
    size = options.search_size
    candidates = sphere_candidates(options.search_azimuths, options.search_elevations)
    posed = getattr(getattr(model, "config", None), "input_rays", "identity") == "relative"
    for k in range(1, v):
        if posed:  # the model reads the inputs' cameras: only the views placed so far
            placed = ViewSet(images=photos[:k], cameras=Cameras(
                K=Ks[:k], T_world_cam=torch.stack(poses), width=w, height=h),
                T_ref_world=views.T_ref_world)
            slt = model.encode_views(placed)
        scale = size / max(w, h)
        K = Ks[k].clone()
        K[:2] *= scale
        cams = Cameras(K=K.expand(len(candidates), 3, 3), T_world_cam=candidates, width=size,
                       height=size)
        renders = model.render(views, cams, slt=slt).cpu()  # [C, s, s, 3]
        target = F.interpolate(photos[k].permute(2, 0, 1)[None].float(), size=(size, size),
                               mode="area")[0].permute(1, 2, 0)
        errors = ((renders - target) ** 2).mean(dim=(1, 2, 3))
        poses.append(candidates[int(errors.argmin())])
    return torch.stack(poses)


def visual_hull(photos: Tensor, Ks: Tensor, T_world_cam: Tensor, count: int = 20000,
                radius: float = 0.6, seed: int = 0, threshold: float = 0.08,
                centre: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points ``[P, 3]`` and colours ``[P, 3]`` of the photos' foreground hull: random points
    in a ball of ``radius`` about ``centre`` (default the origin) kept where every photo that
    sees them shows foreground (not the white background); the whole ball (grey) when fewer
    than 100 survive."""
    g = torch.Generator().manual_seed(seed + 17)
    direction = torch.randn(count, 3, generator=g, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    pts = direction * radius * torch.rand(count, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    if centre is not None:
        pts = pts + centre.double()
    keep = torch.ones(count, dtype=torch.bool)
    colour = torch.zeros(count, 3, dtype=torch.float64)
    seen = torch.zeros(count, dtype=torch.float64)
    for k in range(len(photos)):
        h, w = photos[k].shape[:2]
        T_cam_world = torch.linalg.inv(T_world_cam[k])
        pc = pts @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        uv = pc @ Ks[k].T
        u, v = uv[:, 0] / uv[:, 2], uv[:, 1] / uv[:, 2]
        inside = (pc[:, 2] > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui, vi = u.clamp(0, w - 1).long(), v.clamp(0, h - 1).long()
        rgb = photos[k][vi, ui].double()
        foreground = (1.0 - rgb).abs().amax(-1) > threshold
        keep &= ~inside | foreground
        colour += torch.where(inside[:, None], rgb, 0.0)
        seen += inside.double()
    keep &= seen > 0
    if int(keep.sum()) < 100:
        return pts.numpy(), np.full((count, 3), 0.5)
    return pts[keep].numpy(), (colour[keep] / seen[keep, None]).numpy()


def upsrt_initialiser(model_factory, options: UpFusionOptions, quiet: bool = False):
    """The ``--init upfusion-upsrt`` initialiser (see the module doc)."""

    def initialise(images, work_dir, config, seed, cameras=None):
        import time

        from geometry.progress import log_stage
        from reconstruction.init.base import InitResult, SparseModel

        t0 = time.perf_counter()
        photos = torch.stack([im.rgb for im in images])
        sizes = {(im.width, im.height) for im in images}
        if len(sizes) > 1:
            raise UserError("UpFusion needs photos of one size; these have "
                            f"{', '.join(f'{w}x{h}' for w, h in sorted(sizes))}.")
        if cameras is not None:  # known cameras (recon eval, --poses): their frame
            from reconstruction.generative.cameras import axes_centre

            Ks = torch.from_numpy(np.asarray(cameras[0], dtype=np.float64))
            T_cam_world = torch.from_numpy(np.asarray(cameras[1], dtype=np.float64))
            T_world_cam = torch.linalg.inv(T_cam_world)
            centre = axes_centre(T_cam_world)
            distance = float((T_world_cam[0, :3, 3] - centre).norm())
            pts, cols = visual_hull(photos, Ks, T_world_cam, seed=seed, centre=centre,
                                    radius=0.6 * distance)
            sparse = centre.numpy()[None]
        else:
            Ks = photo_intrinsics(images, options.fov_deg)
            model = model_factory()
            T_world_cam = search_poses(model, photos, Ks, options)
            pts, cols = visual_hull(photos, Ks, T_world_cam, seed=seed)
            sparse = np.zeros((1, 3))  # the object centre: the engine centres on it
        T_cam_world = torch.linalg.inv(T_world_cam).numpy()
        names = [im.path.name for im in images]
        model_out = SparseModel(
            names=names, sizes=np.array([[im.width, im.height] for im in images]),
            Ks=Ks.numpy(), T_cam_world=T_cam_world, registered=np.ones(len(images), bool),
            points_world=sparse, colors=np.full((1, 3), 0.5),
            obs_point=np.zeros(0, np.int64), obs_view=np.zeros(0, np.int64),
            obs_xy=np.zeros((0, 2)), mapper="upsrt-pose-search")
        seconds = time.perf_counter() - t0
        log_stage(f"UpSRT initialisation: {len(images)} photos placed, {len(pts)} hull points",
                  quiet)
        return InitResult(model=model_out, points_world=np.asarray(pts), colors=np.asarray(cols),
                          timings={"upsrt_pose_search": seconds},
                          stats={"initialiser": INIT_NAME})

    return initialise


# ---------------------------------------------------------------------- distillation


class UpSRTDenoiser:
    """The :class:`~reconstruction.generative.distill.ImageDenoiser` without diffusion
    weights: UpSRT's render at the novel camera (the noise level is ignored)."""

    def __init__(self, model, views, T_ref_trainer: Tensor) -> None:
        self.model = model
        self.views = views
        self.T_ref_trainer = T_ref_trainer.double()
        self.slt = None
        self.calls = 0

    @torch.no_grad()
    def __call__(self, images: Tensor, cameras, strength: Tensor,
                 generator: torch.Generator) -> Tensor:
        from dataclasses import replace

        if self.slt is None:
            self.slt = self.model.encode_views(self.views)
        self.calls += 1
        T_world_cam = torch.linalg.inv(cameras.T_cam_world.double().cpu())
        cams = Cameras(K=cameras.K.double().cpu(), T_world_cam=T_world_cam,
                       width=cameras.width, height=cameras.height)
        views = replace(self.views, T_ref_world=self.T_ref_trainer)
        return self.model.render(views, cams, slt=self.slt).to(images)


class UpFusionTimesteps:
    """UpFusion's noise levels: DDIM step ``k`` of ``ddim_steps`` (strength ``k / steps``),
    uniform in ``[steps - 5, steps - 1)`` while bootstrapping (the first
    ``bootstrap_fraction`` of the distillation), then in ``[1, steps - 1)``."""

    def __init__(self, ddim_steps: int = 30, bootstrap_fraction: float = 0.1) -> None:
        self.ddim_steps = ddim_steps
        self.bootstrap_fraction = bootstrap_fraction

    def indices(self, batch: int, progress: float, generator: torch.Generator) -> Tensor:
        n = self.ddim_steps
        lo = n - 5 if progress < self.bootstrap_fraction else 1
        hi = n - 1
        return torch.randint(max(1, lo), max(lo + 1, hi), (batch,), generator=generator)

    def fraction(self, batch: int, progress: float, generator: torch.Generator) -> Tensor:
        return self.indices(batch, progress, generator).double() / self.ddim_steps

    def steps(self, batch: int, progress: float, generator: torch.Generator,
              num_timesteps: int = 1000) -> Tensor:
        return (self.fraction(batch, progress, generator) * num_timesteps).round().long().clamp(
            0, num_timesteps - 1)


def _distill_class():
    from reconstruction.generative.distill import ImageDistillationLoss

    class UpFusionDistillationLoss(ImageDistillationLoss):
        """Image-space distillation with UpFusion's weighting and opacity term."""

        def __init__(self, *args, opacity_weight: float = 1e-3,
                     bootstrap_fraction: float = 0.1, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.opacity_weight = opacity_weight
            self.bootstrap_fraction = bootstrap_fraction
            from reconstruction.generative.schedule import scaled_linear_alphas_cumprod

            self.alphas_cumprod = scaled_linear_alphas_cumprod()

        def novel_loss(self, trainer, rgb, alpha, cameras, generator) -> Tensor:
            progress = self.progress(trainer)
            strength = self.config.timesteps.fraction(len(rgb), progress, generator)
            with torch.no_grad():
                target = self.denoiser(rgb.detach(), cameras, strength, generator).to(rgb)
            if progress < self.bootstrap_fraction:
                weight = torch.ones(len(rgb), dtype=rgb.dtype, device=rgb.device)
            else:
                t = (strength * (len(self.alphas_cumprod) - 1)).round().long()
                weight = (1.0 - self.alphas_cumprod[t]).to(rgb)
            l2 = ((rgb - target) ** 2).mean(dim=(1, 2, 3))
            loss = self.l2_weight * (weight * l2).mean()
            if self.lpips_weight > 0:
                loss = loss + self.lpips_weight * self.lpips.to(rgb.device)(rgb, target).mean()
            if self.opacity_weight > 0:
                loss = loss + self.opacity_weight * torch.sqrt(alpha ** 2 + 0.01).mean()
            return loss

    return UpFusionDistillationLoss


def distillation_term(denoiser, options: UpFusionOptions, iterations: int, lpips=None):
    """The engine loss term of UpFusion's distillation."""
    from reconstruction.generative.distill import NovelViewConfig

    cls = _distill_class()
    config = NovelViewConfig(weight=options.distill_weight, every=options.distill_every,
                             render_size=options.render_size,
                             elevation_margin_deg=options.elevation_margin_deg,
                             timesteps=UpFusionTimesteps(options.ddim_steps,
                                                         options.bootstrap_fraction))
    return cls(denoiser, config, iterations, l2_weight=1.0, lpips_weight=options.lpips_weight,
               lpips=lpips, centre=torch.zeros(3), name="upfusion",
               opacity_weight=options.opacity_weight,
               bootstrap_fraction=options.bootstrap_fraction)


def trainer_views(job, model) -> tuple[object, Tensor]:
    """The UpSRT inputs of a fit (photos, intrinsics) and ``T_ref_trainer``: the reference
    frame of the first camera in the trainer's (normalised) world, object centre at its
    origin (the initialiser centres the engine on it)."""
    from reconstruction.upfusion.rays import reference_frame
    from reconstruction.upfusion.upsrt import ViewSet

    photos = torch.stack([im.rgb for im in job.images])
    T_world_cam = torch.linalg.inv(job.data.T_cam_world_init.double())
    h, w = photos.shape[1:3]
    cams = Cameras(K=job.data.Ks.double(), T_world_cam=T_world_cam, width=w, height=h)
    T_ref_trainer = reference_frame(cams[0:1], torch.zeros(3, dtype=torch.float64))
    return ViewSet(images=photos, cameras=cams, T_ref_world=T_ref_trainer), T_ref_trainer


def build_trainer(job, model_factory):
    """The engine trainer of UpFusion: the default terms plus the distillation term."""
    from geometry.progress import log_stage
    from reconstruction.engine.losses import default_loss_terms
    from reconstruction.engine.trainer import GaussianTrainer

    options: UpFusionOptions = job.options
    model = model_factory()
    views, T_ref = trainer_views(job, model)
    if options.diffusion is None:
        log_stage("no diffusion weights (--upfusion.diffusion): distilling UpSRT's own renders "
                  "into the splats", job.config.quiet)
        denoiser = UpSRTDenoiser(model, views, T_ref)
    else:
        from reconstruction.upfusion.controlnet import load_upfusion_denoiser

        denoiser = load_upfusion_denoiser(options, model, views, T_ref, job.config.device)
    lpips = None
    if options.lpips is not None and options.lpips_weight > 0:
        from reconstruction.eval.lpips import load_lpips

        lpips = load_lpips(options.lpips, device=job.config.device)
    term = distillation_term(denoiser, options, job.config.train.iterations, lpips)
    train = job.config.train
    return GaussianTrainer(job.data, job.scene, train, seed=job.config.seed,
                           device=job.config.device,
                           loss_terms=[*default_loss_terms(train), term])


def check_inputs(options: UpFusionOptions, images: list) -> None:
    """Refuse bad options before any work."""
    if options.upsrt is None:
        load_upsrt_model(options)  # raises the one-sentence error
    if not Path(options.upsrt).exists():
        raise UserError(f"--upfusion.upsrt {options.upsrt} does not exist; give the folder "
                        "written by 'recon upsrt train' or UpFusion's upsrt.pt.")
    if options.diffusion is not None:
        from reconstruction.upfusion.controlnet import check_diffusion_path

        check_diffusion_path(options)
    if len(images) > 6:
        from reconstruction.images import warn

        warn(f"UpFusion was made for 1-6 photos; using all {len(images)}")
    sizes = {(im.width, im.height) for im in images}
    if len(sizes) > 1:
        raise UserError("UpFusion needs photos of one size; these have "
                        f"{', '.join(f'{w}x{h}' for w, h in sorted(sizes))}.")


def fit(config, cameras=None, callbacks=None) -> dict:
    """``recon fit --method upfusion`` (see the module doc)."""
    from reconstruction.engine.fit import fit as engine_fit
    from reconstruction.init.registry import INITIALISERS

    options = config.options if config.options is not None else UpFusionOptions()
    cache: list = []

    def model_factory():
        if not cache:
            cache.append(load_upsrt_model(options, "cpu"))
        return cache[0]

    INITIALISERS[INIT_NAME] = upsrt_initialiser(model_factory, options, config.quiet)
    config.init = INIT_NAME
    config.train.background = BACKGROUND
    config.train.coverage_densify = False  # the hull and the distillation fill the object
    config.init_options.fill_coverage = False
    return engine_fit(config, cameras, callbacks,
                      build=lambda job: build_trainer(job, model_factory),
                      check_inputs=check_inputs, min_images=1)
