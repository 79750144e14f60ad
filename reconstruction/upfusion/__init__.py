"""UpFusion (Nagoor Kani et al., ECCV 2024): novel views of an object from 1-6 unposed
photos, distilled into Gaussian splats (``recon fit --method upfusion``).

- :mod:`.rays`: reference frame, Plücker rays, harmonic ray/patch/camera-id encodings;
- :mod:`.upsrt`: UpSRT, the unposed scene representation transformer (official names);
- :mod:`.official`: loading the released ``upsrt.pt`` / ``upfusion2d.pt`` (key mapping);
- :mod:`.data`, :mod:`.train`, :mod:`.cli`: training UpSRT (``recon upsrt train``);
- :mod:`.method`: the ``upfusion`` reconstruction method.

Importing this package is light (no torch).
"""

from __future__ import annotations

from pathlib import Path

from reconstruction.method import Method
from reconstruction.upfusion.config import UpFusionOptions


def _fit(config, cameras=None, callbacks=None) -> dict:
    from reconstruction.upfusion.method import fit

    return fit(config, cameras, callbacks)


def _load(folder: Path, device: str = "cpu"):
    from reconstruction.scene_model import GaussianSceneModel

    return GaussianSceneModel.load(folder, device)


def _check_inputs(options: UpFusionOptions, images: list) -> None:
    from reconstruction.upfusion.method import check_inputs

    check_inputs(options, images)


METHOD = Method(
    name="upfusion",
    summary="UpFusion: 1-6 unposed photos; UpSRT (+ its DF+SLT ControlNet) novel views "
            "distilled into splats.",
    fit=_fit, load=_load, options=UpFusionOptions, check_inputs=_check_inputs, min_images=1)
