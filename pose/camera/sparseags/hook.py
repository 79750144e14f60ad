"""``recon fit --refine-poses``: SparseAGS after ``recon fit``'s own initialisation.

``reconstruction`` never imports ``pose``; the command line calls
:func:`register_refine_poses`, which adds ``INITIALISERS["<base>+sparseags"]`` to
:data:`reconstruction.init.registry.INITIALISERS` and returns that name for ``--init``. The
wrapped initialiser runs the base initialiser (its cameras: SfM, or the given ``--poses``),
refines the cameras with SparseAGS on photos shrunk to ``max_size`` (poses do not depend on
the resolution), then runs the base initialiser again with the refined cameras so that its
cloud is triangulated with them. Its stats gain ``sparseags_flagged`` and
``sparseags_rotation_change_deg_mean``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from pose.camera.sparseags.config import SparseAGSConfig
    from reconstruction.images import LoadedImage
    from reconstruction.init.base import InitResult
    from reconstruction.init.config import InitConfig
    from reconstruction.init.registry import Initialiser

__all__ = ["refine_poses_initialiser", "register_refine_poses"]

#: Longest side (pixels) of the photos SparseAGS sees inside ``recon fit``.
MAX_SIZE = 192


def refine_poses_initialiser(base: str, config: SparseAGSConfig | None = None,
                             max_size: int = MAX_SIZE) -> Initialiser:
    """The initialiser ``base`` followed by SparseAGS (see the module doc)."""

    def initialise(images: Sequence[LoadedImage], work_dir: Path, init_config: InitConfig,
                   seed: int, cameras: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> InitResult:
        import numpy as np
        import torch

        from geometry.cameras import Cameras
        from geometry.progress import log_stage
        from geometry.se3 import invert_T
        from pose.camera.sparseags.config import SparseAGSConfig
        from pose.camera.sparseags.pipeline import run_sparseags
        from reconstruction.init.registry import INITIALISERS

        first = INITIALISERS[base](images, work_dir, init_config, seed, cameras=cameras)
        if len(images) < 3:
            return first
        model = first.model
        small, Ks = [], torch.from_numpy(model.Ks).double().clone()
        for k, im in enumerate(images):
            scale = min(1.0, max_size / max(im.width, im.height))
            w, h = max(8, round(im.width * scale)), max(8, round(im.height * scale))
            small.append(torch.nn.functional.interpolate(
                im.rgb.permute(2, 0, 1)[None], size=(h, w), mode="area")[0].permute(1, 2, 0))
            Ks[k, 0] *= w / im.width
            Ks[k, 1] *= h / im.height
        initial = Cameras(K=Ks, T_world_cam=invert_T(torch.from_numpy(model.T_cam_world)),
                          width=torch.tensor([s.shape[1] for s in small]),
                          height=torch.tensor([s.shape[0] for s in small]),
                          names=[im.path.name for im in images])
        options = config or SparseAGSConfig(seed=seed)
        matches = None
        if options.matching.enabled:
            from pose.camera.sparseags.matches import find_matches

            matches = find_matches(images, options.matching, seed, torch.get_num_threads(),
                                   sizes=[(s.shape[1], s.shape[0]) for s in small])
        log_stage("refining the initial cameras with SparseAGS (--refine-poses)…")
        result = run_sparseags(small, initial, options, log=log_stage, matches=matches)
        refined = invert_T(result.cameras.T_world_cam.double()).numpy()
        out = INITIALISERS[base](images, work_dir, init_config, seed,
                                 cameras=(model.Ks.copy(), np.ascontiguousarray(refined)))
        out.timings = {**{f"first_{k}": v for k, v in first.timings.items()},
                       "sparseags": float(result.timings_s.get("total", 0.0)),
                       **out.timings}
        out.stats["sparseags_flagged"] = ",".join(v.name for v in result.views if v.flagged)
        out.stats["sparseags_rotation_change_deg_mean"] = float(np.mean(
            [v.rotation_change_deg for v in result.views]))
        return out

    return initialise


def register_refine_poses(base: str, config: SparseAGSConfig | None = None) -> str:
    """Register ``base`` followed by SparseAGS as ``INITIALISERS["<base>+sparseags"]`` and
    return that name (pass it as ``FitConfig.init``)."""
    from reconstruction.init.registry import INITIALISERS

    if base not in INITIALISERS:
        raise ValueError(f"unknown initialiser {base!r}; use one of {list(INITIALISERS)}")
    name = f"{base}+sparseags"
    INITIALISERS[name] = refine_poses_initialiser(base, config)
    return name
