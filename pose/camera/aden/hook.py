"""ADen as a ``recon fit`` initialiser: :func:`register_aden` adds
``INITIALISERS["aden"]`` (cameras from ADen, cloud from the base initialiser triangulated
with them; :func:`pose.camera.initialiser.camera_estimator_initialiser`). The checkpoint is
loaded on first use only."""

from __future__ import annotations

from pathlib import Path

__all__ = ["register_aden"]


def register_aden(checkpoint: str | Path, base: str = "sfm", name: str = "aden",
                  seed: int = 0, select: str = "argmax", mirror_views: bool = False) -> str:
    """Register ADen with ``checkpoint`` as ``INITIALISERS[name]`` and return ``name`` (pass
    it as ``FitConfig.init``); ``seed``, ``select`` and ``mirror_views`` as
    :class:`~pose.camera.aden.predict.AdenEstimator`'s.

    Raises:
        UserError: ``checkpoint`` is not an ADen checkpoint folder (checked now, so that
            ``recon fit`` fails before any work).
    """
    from geometry.training import read_checkpoint_config
    from pose.camera.aden.config import check_selection
    from pose.camera.aden.predict import AdenEstimator
    from pose.camera.aden.train import KIND
    from pose.camera.initialiser import register_camera_estimator

    check_selection(select, "the ADen selection")
    read_checkpoint_config(Path(checkpoint), kind=KIND, command="pose aden train")

    def build() -> AdenEstimator:
        from geometry.progress import log_stage

        log_stage(f"camera initialiser: ADen ({checkpoint}), cloud by {base}")
        return AdenEstimator(checkpoint, seed=seed, select=select, mirror_views=mirror_views)

    register_camera_estimator(name, build, base=base)
    return name
