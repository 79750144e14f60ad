"""InstantSplat (Fan et al., CVPR 2025) on the CPU: coarse geometric initialisation (SfM +
stereo in place of MASt3R), then F-3DGO, the joint optimisation of Gaussians and camera
poses. It is the Gaussian engine with its default trainer (:mod:`reconstruction.engine`):
the photometric loss with the pose regulariser and 3DGS's densification."""

from __future__ import annotations

from reconstruction.engine import gaussian_method

METHOD = gaussian_method(
    "instantsplat",
    "InstantSplat: SfM + stereo initialisation, joint optimisation of splats and poses.",
    min_images=1)  # one photo: its camera and a monocular depth guess (engine.single_view)
