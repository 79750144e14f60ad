"""Any camera-pose estimator as a ``recon fit`` initialiser.

An :data:`~reconstruction.init.registry.Initialiser` given cameras triangulates its cloud
with them. :func:`camera_estimator_initialiser` wraps a
:class:`~pose.camera.CameraPoseEstimator` into one: it runs the estimator on the photos,
then a base initialiser (``sfm``: SfM tracks re-triangulated with the estimated cameras,
plus the stereo cloud) with ``cameras=`` the estimate. ``reconstruction`` never imports
``pose``: :func:`register_camera_estimator` adds the wrapped estimator to
:data:`reconstruction.init.registry.INITIALISERS` at run time (the command line does it for
the estimators it offers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from pose.camera import CameraPoseEstimator
    from reconstruction.images import LoadedImage
    from reconstruction.init.base import InitResult
    from reconstruction.init.config import InitConfig
    from reconstruction.init.registry import Initialiser

__all__ = ["camera_estimator_initialiser", "register_camera_estimator"]


def camera_estimator_initialiser(estimator_factory: Callable[[], CameraPoseEstimator],
                                 base: str = "sfm") -> Initialiser:
    """An initialiser that takes its cameras from the estimator ``estimator_factory()``.

    Args:
        estimator_factory: builds the estimator, on first use only (so that a registered
            estimator loads its weights only when it is chosen); for a built estimator
            pass ``lambda: estimator``.
        base: the registered initialiser that builds the cloud with the estimated cameras
            (``sfm`` or ``sfm-sparse``).

    Returns:
        An :data:`~reconstruction.init.registry.Initialiser`. Given known cameras
        (``recon fit --poses``) it passes them to the estimator as ``initial`` (a refiner
        refines them; an estimator from scratch may ignore them). Cameras the photos' matches
        do not fit (too coarse an estimate) are dropped with a warning: ``base`` then
        registers the photos itself, and the stats record ``camera_estimator_rejected``
        (how many matched points fit). Its result's stats gain ``camera_estimator`` (the
        estimator's class) and ``camera_confidence_mean``.
    """
    built: list[CameraPoseEstimator] = []

    def get() -> CameraPoseEstimator:
        if not built:
            built.append(estimator_factory())
        return built[0]

    def initialise(images: Sequence[LoadedImage], work_dir: Path, config: InitConfig,
                   seed: int, cameras: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> InitResult:
        import numpy as np
        import torch

        from geometry.cameras import Cameras
        from geometry.errors import UserError
        from geometry.se3 import invert_T
        from reconstruction.images import warn
        from reconstruction.init.cgi import CamerasDoNotFit
        from reconstruction.init.registry import INITIALISERS

        initial = None
        if cameras is not None:
            Ks, T_cam_world = (torch.as_tensor(np.asarray(a, dtype=np.float64))
                               for a in cameras)
            initial = Cameras(K=Ks, T_world_cam=invert_T(T_cam_world),
                              width=torch.tensor([im.width for im in images]),
                              height=torch.tensor([im.height for im in images]))
        chosen = get()
        result = chosen.estimate([im.rgb for im in images], initial=initial)
        estimated = result.cameras
        if len(estimated) != len(images):
            raise UserError(f"the camera estimator returned {len(estimated)} cameras for "
                            f"{len(images)} photos; check the estimator.")
        for k, im in enumerate(images):
            size = (int(estimated.width[k]), int(estimated.height[k]))
            if size != (im.width, im.height):
                raise UserError(f"the camera estimator's camera {k} is {size[0]}x{size[1]} but "
                                f"photo {im.path.name} is {im.width}x{im.height}.")
        given = (estimated.K.detach().double().cpu().numpy(),
                 invert_T(estimated.T_world_cam.detach().double()).cpu().numpy())
        name = type(chosen).__name__
        try:
            out = INITIALISERS[base](images, work_dir, config, seed, cameras=given)
        except CamerasDoNotFit as rejected:
            # an estimate too coarse for the matches (a learned estimator's 10-20 degrees):
            # the base initialiser registers the photos itself (from the user's cameras,
            # if any), rather than the whole fit failing on a message about conventions
            warn(f"{name}'s cameras do not fit the photos ({rejected.detail}); "
                 f"{base} registers the photos without them")
            try:
                out = INITIALISERS[base](images, work_dir / "without_estimate", config, seed,
                                         cameras=cameras)
            except UserError as again:
                raise UserError(f"{name}'s cameras do not fit the photos ({rejected.detail}) "
                                f"and without them {again}") from None
            out.stats["camera_estimator_rejected"] = rejected.detail
        out.stats["camera_estimator"] = name
        out.stats["camera_confidence_mean"] = float(torch.as_tensor(result.confidence)
                                                    .double().mean())
        return out

    return initialise


def register_camera_estimator(name: str,
                              estimator_factory: Callable[[], CameraPoseEstimator],
                              base: str = "sfm") -> None:
    """Make ``estimator_factory()``'s estimator available as ``INITIALISERS[name]``.

    The factory runs on first use only. Registering a name twice replaces the entry;
    the built-in initialisers (``sfm``, ``sfm-sparse``) cannot be replaced.

    Raises:
        ValueError: ``name`` is a built-in initialiser's, or ``base`` is not registered.
    """
    import typing

    from reconstruction.init.config import InitName
    from reconstruction.init.registry import INITIALISERS

    if name in typing.get_args(InitName):
        raise ValueError(f"{name!r} is a built-in initialiser; choose another name")
    if base not in INITIALISERS:
        raise ValueError(f"unknown base initialiser {base!r}; use one of {list(INITIALISERS)}")
    INITIALISERS[name] = camera_estimator_initialiser(estimator_factory, base)
