"""NeO 360 (Irshad et al., ICCV 2023): novel views of unbounded 360-degree outdoor scenes from
1-5 posed photos, generalising across scenes.

- :mod:`.model`: encoder (ResNet features, voxel volume projected into the views, softmax
  pooling to triplanes, conv refinement) and coarse/fine foreground/background decoders;
- :mod:`.data`: outdoor procedural scenes (360-degree rigs) in the model's field frame;
- :mod:`.nerds360`: the NeRDS360 reader (Parallel Domain poses -> OpenCV, once);
- :mod:`.train`: training across scenes (``recon neo360 train``), held-out evaluation,
  fine-tuning on the source views;
- :mod:`.fit`: few-view inference (``recon fit --method neo360``), a field scene model;
- :mod:`.cli`: the ``recon neo360`` commands.
"""

from __future__ import annotations

from reconstruction.method import Method
from reconstruction.neo360.config import NeO360Options


def _fit(config, cameras, callbacks):
    from reconstruction.neo360.fit import fit

    return fit(config, cameras, callbacks)


def _load(folder, device="cpu"):
    from reconstruction.neo360.fit import load

    return load(folder, device)


def _check_inputs(options, images):
    from reconstruction.neo360.fit import check_inputs

    check_inputs(options, images)


METHOD = Method(
    name="neo360",
    summary="NeO 360: novel views of a 360-degree scene from a few posed photos and a "
            "trained model; needs --poses and --neo360.checkpoint.",
    fit=_fit, load=_load, options=NeO360Options, check_inputs=_check_inputs,
    min_images=1)
