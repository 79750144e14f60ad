"""SpaRP's 3D stage: Gaussian splats fitted to the six generated views at their known poses
plus the input photos at their solved poses (the engine's fit with given cameras,
:func:`reconstruction.engine.fit.fit`).

The photos and views are the model's tiles (a few dozen pixels: too small for SIFT), so the
initial cloud does not come from SfM but from the NOCS maps themselves: every object pixel
of an input's map IS an object point (``nocs - 0.5`` in the object frame, NOCS units),
coloured by its photo. The initialiser that returns it is registered at run time
(:data:`reconstruction.init.registry.INITIALISERS`, as
:func:`pose.camera.initialiser.register_camera_estimator` does). Backgrounds are masked
(the inputs by their predicted object masks, the generated views by theirs) and composited
on black, the engine's background.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pose.camera.sparp.solver import NocsView

__all__ = ["INITIALISER", "fit_object_splats"]

#: The name of the NOCS-map initialiser while a fit runs.
INITIALISER = "sparp-nocs"


def _nocs_initialiser(points: np.ndarray, colors: np.ndarray):
    """An :data:`~reconstruction.init.registry.Initialiser` returning the given cameras and
    the NOCS points."""

    def initialise(images, work_dir, config, seed, cameras=None):
        from reconstruction.init.base import InitResult, SparseModel

        assert cameras is not None, "the NOCS initialiser needs the cameras"
        Ks, T_cam_world = cameras
        n = len(images)
        model = SparseModel(
            names=[im.path.name for im in images],
            sizes=np.array([(im.width, im.height) for im in images]), Ks=np.asarray(Ks),
            T_cam_world=np.asarray(T_cam_world), registered=np.ones(n, dtype=bool),
            points_world=points, colors=colors, obs_point=np.zeros(0, np.int64),
            obs_view=np.zeros(0, np.int64), obs_xy=np.zeros((0, 2)), mapper="nocs")
        return InitResult(model=model, points_world=points, colors=colors,
                          stats={"nocs_points": len(points)})

    return initialise


def fit_object_splats(out: Path, inputs: Sequence[NocsView], T_world_inputs: np.ndarray,
                      T_world_obj: np.ndarray, generated: np.ndarray | None,
                      generated_masks: np.ndarray | None, T_world_generated: np.ndarray | None,
                      K_generated: np.ndarray | None, iterations: int = 300,
                      quiet: bool = True, seed: int = 0, device: str = "cpu") -> dict:
    """Fit splats; writes ``out`` (``recon fit``'s outputs: ``splats.ply`` ...), returns the
    fit's metrics.

    Args:
        inputs: the input views (tile colours ``rgb``, predicted maps and masks, tile ``K``).
        T_world_inputs: ``[k, 4, 4]`` their solved cameras in the output's world frame.
        T_world_obj: ``[4, 4]`` the object (NOCS - 0.5) frame in that world (NOCS units).
        generated, generated_masks: ``[6, t, t, 3]`` / ``[6, t, t]`` novel views (or None).
        T_world_generated: ``[6, 4, 4]``; K_generated: ``[3, 3]``.
        device: where the fit runs (``cpu``, ``cuda``, ``cuda:N``; the engine's
            ``--device``).
    """
    from geometry.cameras import Cameras
    from geometry.io.images import write_png
    from reconstruction.engine.config import FitConfig
    from reconstruction.engine.fit import fit
    from reconstruction.init.registry import INITIALISERS

    pts, cols = [], []
    rgbs, masks, Ks, Ts = [], [], [], []
    for view, T in zip(inputs, T_world_inputs, strict=True):
        p_obj = view.nocs[view.mask] - 0.5
        pts.append(p_obj @ T_world_obj[:3, :3].T + T_world_obj[:3, 3])
        cols.append(view.rgb[view.mask])
        rgbs.append(view.rgb)
        masks.append(view.mask)
        Ks.append(view.K)
        Ts.append(T)
    if generated is not None:
        for rgb, mask, T in zip(generated, generated_masks, T_world_generated, strict=True):
            rgbs.append(rgb)
            masks.append(mask)
            Ks.append(K_generated)
            Ts.append(T)
    points = np.concatenate(pts).astype(np.float64)
    colors = np.concatenate(cols).astype(np.float64)
    with tempfile.TemporaryDirectory(prefix="sparp-splats-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        names = []
        for k, (rgb, mask) in enumerate(zip(rgbs, masks, strict=True)):
            kind = "a_input" if k < len(inputs) else "b_generated"
            name = f"{kind}_{k:02d}.png"
            rgba = np.concatenate((rgb, mask[..., None].astype(np.float64)), -1)
            write_png(folder / name, torch.from_numpy(rgba.astype(np.float32)))
            names.append(name)
        h, w = rgbs[0].shape[:2]
        cams = Cameras(K=torch.from_numpy(np.stack(Ks)).double(),
                       T_world_cam=torch.from_numpy(np.stack(Ts)).double(),
                       width=torch.tensor([r.shape[1] for r in rgbs]),
                       height=torch.tensor([r.shape[0] for r in rgbs]), names=names)
        cfg = FitConfig(images=folder, out=Path(out), iterations=iterations, max_size=None,
                        init=INITIALISER, threads=None, overwrite=True, quiet=quiet, seed=seed,
                        device=device)
        cfg.init_options.fill_coverage = False
        previous = INITIALISERS.get(INITIALISER)
        INITIALISERS[INITIALISER] = _nocs_initialiser(points, colors)
        try:
            return fit(cfg, cameras=cams)
        finally:
            if previous is None:
                INITIALISERS.pop(INITIALISER, None)
            else:
                INITIALISERS[INITIALISER] = previous
