"""The UpSRT / UpFusion rows of ``tests/benchmarks/generative_bench.py``.

On unseen generated object sequences (:mod:`.data`, seeds from ``seed``), with the inputs
and held-out views of :func:`~.train.input_indices` / :func:`~.train.heldout_indices`:

- :func:`upsrt_rows`: held-out PSNR/LPIPS of UpSRT's renders from 1, 3 and 6 input views
  (and :func:`nearest_view_rows`: copying the nearest input photo, for reference);
- :func:`upfusion_rows`: Gaussian splats fitted to the inputs (their true cameras, in the
  reference frame; poses fixed) photometrically only, and with UpFusion's distillation
  whose denoiser is UpSRT (:class:`~.method.UpSRTDenoiser`), both from the inputs' visual
  hull: held-out PSNR of each at 1, 3, 6 views.

- :func:`instantsplat_single_view_rows`: InstantSplat from the same single input view (the
  engine's one-photo initialisation, :mod:`reconstruction.engine.single_view`, then its
  photometric fit; the input camera's true intrinsics, as UpSRT's) rendered at the same
  held-out cameras and scored the same way.

They return plain dicts (``upsrt_psnr_1``, ..., ``upfusion_psnr_3``,
``photometric_psnr_3``, ``instantsplat_psnr_1``); the bench prints them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from reconstruction.upfusion.data import ObjectSequence, synthetic_sequences, view_set
from reconstruction.upfusion.train import heldout_indices, input_indices, psnr

VIEW_COUNTS = (1, 3, 6)


def bench_sequences(seed: int, count: int, size: int = 64, frames: int = 24
                    ) -> list[ObjectSequence]:
    """Unseen generated sequences (training uses seeds ``0 .. scenes - 1``)."""
    return synthetic_sequences(range(100_000 + seed, 100_000 + seed + count), frames, size,
                               supersample=1)


@torch.no_grad()
def upsrt_rows(model, sequences: list[ObjectSequence], lpips=None,
               view_counts: tuple[int, ...] = VIEW_COUNTS) -> dict[str, float]:
    """Mean held-out PSNR (and LPIPS with a network) of UpSRT's renders per view count; also
    on the object alone (``upsrt_object_psnr_V``: the pixels of the held-out masks, where
    sequences have masks; the white background is most of each photo)."""
    out: dict[str, float] = {}
    for n in view_counts:
        ps, po, lp = [], [], []
        for seq in sequences:
            held = torch.as_tensor(heldout_indices(len(seq)))
            pred = model.render(view_set(seq, input_indices(len(seq), n)), seq.cameras[held])
            ps.append(psnr(pred.cpu(), seq.images[held]))
            if seq.masks is not None and bool(seq.masks[held].any()):
                mask = seq.masks[held]
                po.append(psnr(pred.cpu()[mask], seq.images[held][mask]))
            if lpips is not None:
                lp.append(float(lpips(pred.cpu(), seq.images[held]).mean()))
        out[f"upsrt_psnr_{n}"] = sum(ps) / len(ps)
        if po:
            out[f"upsrt_object_psnr_{n}"] = sum(po) / len(po)
        if lp:
            out[f"upsrt_lpips_{n}"] = sum(lp) / len(lp)
    return out


def nearest_view_rows(sequences: list[ObjectSequence],
                      view_counts: tuple[int, ...] = VIEW_COUNTS) -> dict[str, float]:
    """``copy_psnr_V``: the held-out PSNR of copying, for each held-out view, the input photo
    nearest to it on the ring (a model-free reference: what view interpolation without any
    3D reasoning gets), scored like :func:`upsrt_rows`."""
    out: dict[str, float] = {}
    for n in view_counts:
        values = []
        for seq in sequences:
            count, inputs, held = len(seq), input_indices(len(seq), n), heldout_indices(len(seq))
            nearest = [min(inputs, key=lambda i, h=h: min((h - i) % count, (i - h) % count))
                       for h in held]
            values.append(psnr(seq.images[torch.as_tensor(nearest)],
                               seq.images[torch.as_tensor(held)]))
        out[f"copy_psnr_{n}"] = sum(values) / len(values)
    return out


@dataclass
class DistillBench:
    """Settings of :func:`upfusion_rows`."""

    iterations: int = 300
    render_size: int = 64
    distill_weight: float = 1.0
    seed: int = 0


def _reference_cameras(seq: ObjectSequence, index: list[int], T_ref_world: Tensor
                       ) -> tuple[Tensor, Tensor]:
    """``(T_cam_world [k, 4, 4], K [k, 3, 3])`` float32 in the reference frame (rigid: the
    scale of ``T_ref_world`` is applied to the centres only)."""
    cams = seq.cameras[torch.as_tensor(index)]
    scale = float(torch.linalg.det(T_ref_world[:3, :3]).abs() ** (1 / 3))
    T = T_ref_world @ cams.T_world_cam.double()
    T[:, :3, :3] /= scale
    return torch.linalg.inv(T).float(), cams.K.float()


def _fit(images: Tensor, T_cam_world: Tensor, K: Tensor, scene, iterations: int, terms: list,
         seed: int):
    from reconstruction.engine.config import TrainConfig
    from reconstruction.engine.losses import default_loss_terms
    from reconstruction.engine.trainer import GaussianTrainer, TrainData

    config = TrainConfig(iterations=iterations, sh_degree=1, optimise_poses=False,
                         coarse_fraction=0.0, checkpoint_every=0, max_gaussians=30_000,
                         refine_every=50, background=(1.0, 1.0, 1.0), coverage_densify=False)
    data = TrainData(list(images), K.clone(), T_cam_world, 1.0)
    trainer = GaussianTrainer(data, scene, config, seed=seed,
                              loss_terms=[*default_loss_terms(config), *terms])
    trainer.train()
    return trainer


def upfusion_rows(model, sequences: list[ObjectSequence], bench: DistillBench | None = None,
                  view_counts: tuple[int, ...] = VIEW_COUNTS) -> dict[str, float]:
    """Held-out PSNR of photometric-only splats and of UpFusion-distilled splats (UpSRT as
    the denoiser) per view count (see the module doc)."""
    from reconstruction.gaussians import GaussianScene
    from reconstruction.generative.oracle import held_out_psnr
    from reconstruction.upfusion.config import UpFusionOptions
    from reconstruction.upfusion.method import UpSRTDenoiser, distillation_term, visual_hull

    bench = bench or DistillBench()
    options = UpFusionOptions(render_size=bench.render_size, distill_weight=bench.distill_weight,
                              lpips_weight=0.0)
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    for seq in sequences:
        held = heldout_indices(len(seq))
        for n in view_counts:
            index = input_indices(len(seq), n)
            views = view_set(seq, index)
            T_ref = views.T_ref_world
            T_in, K_in = _reference_cameras(seq, index, T_ref)
            T_held, K_held = _reference_cameras(seq, held, T_ref)
            pts, cols = visual_hull(seq.images[index], K_in.double(),
                                    torch.linalg.inv(T_in.double()), seed=bench.seed)
            scene = GaussianScene.from_points(torch.as_tensor(pts).float(),
                                              torch.as_tensor(cols).float(), sh_degree=1,
                                              initial_opacity=0.5)
            images = seq.images[index]
            plain = _fit(images, T_in, K_in, scene, bench.iterations, [], bench.seed)
            # the trainer's world is the reference frame (made rigid): UpSRT's query rays
            # need no further transform
            eye = torch.eye(4, dtype=torch.float64)
            denoiser = UpSRTDenoiser(model, views, eye)
            term = distillation_term(denoiser, options, bench.iterations)
            distilled = _fit(images, T_in, K_in, scene, bench.iterations, [term], bench.seed)
            heldout_images = seq.images[torch.as_tensor(held)]
            for name, trainer in (("photometric", plain), ("upfusion", distilled)):
                key = f"{name}_psnr_{n}"
                sums[key] = sums.get(key, 0.0) + held_out_psnr(
                    trainer, heldout_images, T_held, K_held[0])
    out = {k: v / len(sequences) for k, v in sums.items()}
    out["upfusion_seconds"] = time.perf_counter() - t0
    return out



@torch.no_grad()
def _render(trainer, T_cam_world: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """``[C, H, W, 3]`` renders of a trainer's Gaussians at cameras ``T_cam_world [C]``."""
    from reconstruction.splatting import rasterization

    p = trainer.params
    out = []
    for k in range(len(T_cam_world)):
        colors, _, _ = rasterization(
            p["means"], p["quats"], torch.exp(p["log_scales"]),
            torch.sigmoid(p["logit_opacities"]), torch.cat([p["sh0"], p["shN"]], 1),
            T_cam_world[k:k + 1], K[k:k + 1], width, height,
            sh_degree=trainer.config.sh_degree, backgrounds=trainer.background[None])
        out.append(colors[0].clamp(0, 1))
    return torch.stack(out)


def instantsplat_single_view_rows(sequences: list[ObjectSequence], iterations: int = 300,
                                  seed: int = 0) -> dict[str, float]:
    """``instantsplat_psnr_1``: held-out PSNR of InstantSplat from the first input view alone
    (see the module doc), averaged over the sequences like :func:`upsrt_rows`; also the
    PSNR of its render of that input view (``instantsplat_input_psnr_1``)."""
    from reconstruction.engine.single_view import single_view_init
    from reconstruction.gaussians import GaussianScene
    from reconstruction.images import LoadedImage

    t0 = time.perf_counter()
    values, inputs = [], []
    for seq in sequences:
        index, held = input_indices(len(seq), 1), heldout_indices(len(seq))
        T_ref = view_set(seq, index).T_ref_world
        T_in, K_in = _reference_cameras(seq, index, T_ref)
        T_held, K_held = _reference_cameras(seq, held, T_ref)
        image = seq.images[index[0]]
        photo = LoadedImage(path=Path(f"view{index[0]}.png"), rgb=image,
                            focal_px=float(K_in[0, 0, 0]), camera_key=())
        init = single_view_init([photo], None, None, seed,
                                cameras=(K_in[0].double().numpy(), T_in[0].double().numpy()))
        scene = GaussianScene.from_points(torch.as_tensor(init.points_world).float(),
                                          torch.as_tensor(init.colors).float(), sh_degree=1,
                                          initial_opacity=0.5)
        trainer = _fit(image[None], T_in, K_in, scene, iterations, [], seed)
        h, w = image.shape[:2]
        pred = _render(trainer, T_held, K_held, w, h)
        values.append(psnr(pred.cpu(), seq.images[torch.as_tensor(held)]))
        inputs.append(psnr(_render(trainer, T_in, K_in, w, h).cpu(), image[None]))
    return {"instantsplat_psnr_1": sum(values) / len(values),
            "instantsplat_input_psnr_1": sum(inputs) / len(inputs),
            "instantsplat_seconds": time.perf_counter() - t0}
