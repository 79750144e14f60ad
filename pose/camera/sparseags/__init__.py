"""SparseAGS (Zhao et al., NeurIPS 2024): sparse-view camera-pose refinement by
analysis-by-synthesis, with outlier detection and correction.

Stages (:func:`~pose.camera.sparseags.pipeline.run_sparseags`):

1. joint reconstruction of 3D Gaussians and camera poses (:mod:`.joint`); each outer round
   rebuilds the Gaussians from scratch and keeps the refined poses;
2. outlier detection (:mod:`.outliers`): every view is scored by how well the 3D built from
   the others explains it; the worst is dropped while that lowers the mean score of the rest
   by more than a threshold;
3. outlier correction (:mod:`.correction`): a discrete search over pose hypotheses around
   the object, refined by render-and-compare; then a rebuild with all the views;
4. optionally a 6-DoF Zero123 generative prior (:mod:`.prior`, ``--prior PATH``).

:class:`~pose.camera.sparseags.pipeline.SparseAGSRefiner` is the
:class:`~pose.camera.CameraPoseEstimator` face; ``pose sparseags`` the command line.
"""

from __future__ import annotations

__all__ = ["SparseAGSConfig", "SparseAGSRefiner", "SparseAGSResult", "run_sparseags"]


def __getattr__(name: str):
    if name == "SparseAGSConfig":
        from pose.camera.sparseags.config import SparseAGSConfig

        return SparseAGSConfig
    if name in ("SparseAGSRefiner", "SparseAGSResult", "run_sparseags"):
        from pose.camera.sparseags import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
