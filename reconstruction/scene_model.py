"""The scene-model protocol: what every reconstruction method returns.

``recon eval``, ``recon view``, the render-and-compare pose optimisation
(:mod:`reconstruction.pose_opt`) and the pose estimators of ``pose/`` consume a scene through
this interface only, so a Gaussian scene, a NeRF or a triplane field are interchangeable:

- ``cameras``: the method's training cameras in the scene's frame (:class:`Cameras`);
- ``render(cameras, outputs)``: images of any cameras, as a :class:`RenderOutput`;
- ``save(folder)`` / ``load(folder)``: the method's own files in a folder;
- ``differentiable_cameras``: whether ``render`` carries gradients to
  ``cameras.T_world_cam`` (test-pose optimisation needs it; a method without it is
  evaluated at the aligned poses, and eval says so);
- ``near(cameras)``: an optional cheaper copy valid for renders close to ``cameras``
  (Gaussians: the ones in view, colours baked at those viewpoints), used by pose searches.

:class:`GaussianSceneModel` implements it for :class:`~reconstruction.gaussians.GaussianScene`
(the ``recon fit`` output folder: ``splats.ply`` + ``transforms.json``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from geometry.cameras import Cameras
from geometry.errors import UserError

#: Render outputs a scene model can be asked for.
OUTPUTS = ("rgb", "depth", "alpha")


@dataclass
class RenderOutput:
    """Renders of ``C`` cameras of one image size; None for outputs not asked for."""

    rgb: Tensor | None = None  # [C, H, W, 3] in [0, 1] over the model's background
    depth: Tensor | None = None  # [C, H, W] expected camera z-depth (scene units)
    alpha: Tensor | None = None  # [C, H, W] accumulated opacity in [0, 1]


def check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
    """``outputs`` as a tuple, refusing names outside :data:`OUTPUTS`."""
    outputs = tuple(outputs)
    unknown = [o for o in outputs if o not in OUTPUTS]
    if unknown:
        raise ValueError(f"unknown render outputs {unknown}; choose from {OUTPUTS}")
    return outputs


def camera_size(cameras: Cameras) -> tuple[int, int]:
    """``(width, height)`` shared by every camera of ``cameras`` (one render batch)."""
    widths = torch.as_tensor(cameras.width).reshape(-1)
    heights = torch.as_tensor(cameras.height).reshape(-1)
    if widths.numel() == 0:
        raise ValueError("no cameras to render")
    if bool((widths != widths[0]).any()) or bool((heights != heights[0]).any()):
        raise ValueError("render() takes cameras of one image size; split the batch by size")
    return int(widths[0]), int(heights[0])


class SceneModel(ABC):
    """A reconstructed scene: its training cameras and a renderer (see the module doc)."""

    #: Whether :meth:`render` is differentiable w.r.t. ``cameras.T_world_cam``.
    differentiable_cameras: bool = False

    cameras: Cameras
    """``[k]`` the training cameras as the method ended with them, in the scene's frame."""
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Colour rendered where the scene is empty."""

    @abstractmethod
    def render(self, cameras: Cameras,
               outputs: Sequence[str] = OUTPUTS) -> RenderOutput:
        """Render ``cameras`` (``[C]``, one image size) on the model's device."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the model into ``folder`` (which exists and is empty or owned by it)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> SceneModel:
        """Read a model :meth:`save` wrote (or the method's output folder)."""

    def near(self, cameras: Cameras) -> SceneModel:
        """A model equivalent to this one for renders near ``cameras`` (default: itself)."""
        return self

    def centre(self) -> Tensor:
        """``[3]`` a robust centre of the scene's content (sets pose-search step sizes).

        Default: the point closest, in the least-squares sense, to the training cameras'
        optical axes (where the photos look)."""
        T = self.cameras.T_world_cam.double().cpu()
        centres, axes = T[:, :3, 3], T[:, :3, 2]
        eye = torch.eye(3, dtype=torch.float64)
        P = eye - axes[:, :, None] * axes[:, None, :]  # projectors orthogonal to each axis
        A, b = P.sum(0), (P @ centres[:, :, None]).sum(0)[:, 0]
        if len(T) < 2 or float(torch.linalg.det(A)) < 1e-9:
            return centres.mean(0) + axes.mean(0)
        return torch.linalg.solve(A, b)

    @property
    def device(self) -> torch.device:
        return self.cameras.device

    def info(self) -> dict:
        """A few JSON-able facts for reports (e.g. the number of Gaussians)."""
        return {}


class GaussianSceneModel(SceneModel):
    """A :class:`~reconstruction.gaussians.GaussianScene` as a :class:`SceneModel`.

    Folder layout (that of ``recon fit``): ``splats.ply`` (3DGS PLY) and ``transforms.json``
    (the training cameras; read in file-name order); ``scene_model.json`` holds the
    background when it is not black.
    """

    differentiable_cameras = True

    def __init__(self, scene, cameras: Cameras,
                 background: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        self.scene = scene
        self.cameras = cameras
        self.background = tuple(float(c) for c in background)

    @property
    def device(self) -> torch.device:
        return self.scene.means.device

    def info(self) -> dict:
        return {"num_gaussians": self.scene.num_gaussians}

    def centre(self) -> Tensor:
        """The median Gaussian centre (float64)."""
        return self.scene.means.double().median(0).values

    def render(self, cameras: Cameras,
               outputs: Sequence[str] = OUTPUTS) -> RenderOutput:
        from geometry.se3 import invert_T
        from reconstruction.splatting import rasterization

        outputs = check_outputs(outputs)
        width, height = camera_size(cameras)
        s = self.scene if self.scene.means.dtype == torch.float32 \
            else self.scene.to(dtype=torch.float32)
        device = s.means.device
        viewmats = invert_T(cameras.T_world_cam.to(device, torch.float32))
        Ks = cameras.K.to(device, torch.float32)
        if "rgb" not in outputs:
            mode = "ED" if "depth" in outputs else "RGB"  # alpha alone comes with any mode
        else:
            mode = "RGB+ED" if "depth" in outputs else "RGB"
        bg = None
        if mode != "ED":
            # Backgrounds are colours only: the rasterizer appends depth after them.
            bg = torch.tensor(self.background, dtype=torch.float32,
                              device=device)[None].expand(len(cameras), 3)
        colors, alphas, _ = rasterization(
            s.means, s.quats, s.scales, s.opacities, s.sh, viewmats, Ks, width, height,
            sh_degree=s.sh_degree, render_mode=mode, backgrounds=bg)
        result = RenderOutput()
        if "rgb" in outputs:
            result.rgb = colors[..., :3]
        if "depth" in outputs:
            result.depth = colors[..., -1]
        if "alpha" in outputs:
            result.alpha = alphas[..., 0]
        return result

    def near(self, cameras: Cameras, margin: float = 0.5) -> GaussianSceneModel:
        """The Gaussians in front of some camera of ``cameras`` whose centres project within
        the image grown by ``margin`` of its size on every side (a pose search stays inside
        that), with their colours evaluated once from the cameras' mean centre (degree-0
        SH): over a few degrees and centimetres view-dependent colour barely changes, and
        skipping the SH per render saves a good part of it."""
        from reconstruction.gaussians import GaussianScene
        from reconstruction.splatting.sh import rgb_to_sh, sh_to_color

        s = self.scene.to(dtype=torch.float32).detach()
        keep = torch.zeros(s.num_gaussians, dtype=torch.bool, device=s.means.device)
        T_world_cam = cameras.T_world_cam.detach().to(s.means)
        for k in range(len(cameras)):
            keep |= in_view(s.means, cameras.K[k].to(s.means), T_world_cam[k],
                            *camera_size(cameras[k]), margin)
        centre = T_world_cam[:, :3, 3].mean(0)
        colours = sh_to_color(s.sh_degree, s.means[keep] - centre, s.sh[keep])
        baked = GaussianScene(means=s.means[keep], quats=s.quats[keep],
                              log_scales=s.log_scales[keep],
                              logit_opacities=s.logit_opacities[keep],
                              sh0=rgb_to_sh(colours)[:, None], shN=s.shN[keep][:, :0])
        return GaussianSceneModel(baked, self.cameras, self.background)

    def save(self, folder: Path) -> None:
        from geometry.io.transforms_json import write_transforms_json
        from reconstruction.gaussians import write_ply

        folder = Path(folder)
        write_ply(folder / "splats.ply", self.scene)
        names = self.cameras.names or [f"{k:03d}.png" for k in range(len(self.cameras))]
        write_transforms_json(folder / "transforms.json", self.cameras.to("cpu"),
                              file_paths=list(names))
        if any(self.background):
            (folder / "scene_model.json").write_text(
                json.dumps({"kind": "gaussians", "background": list(self.background)}) + "\n",
                encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> GaussianSceneModel:
        from geometry.io.transforms_json import read_transforms_json
        from reconstruction.gaussians import read_ply

        folder = Path(folder)
        for name in ("splats.ply", "transforms.json"):
            if not (folder / name).is_file():
                raise UserError(f"{folder} has no {name}; give the output folder of a "
                                "Gaussian-splat method (recon fit --out).")
        scene = read_ply(folder / "splats.ply").to(device, torch.float32)
        cameras = read_transforms_json(folder / "transforms.json", dtype=torch.float64,
                                       require_images=False).cameras
        order = sorted(range(len(cameras)), key=lambda i: Path(cameras.names[i]).name)
        background = (0.0, 0.0, 0.0)
        meta_file = folder / "scene_model.json"
        if meta_file.is_file():
            try:
                background = tuple(json.loads(meta_file.read_text("utf-8"))["background"])
            except (ValueError, KeyError, TypeError) as err:
                raise UserError(f"{meta_file} is unreadable ({err}); write it again.") from None
        return cls(scene, cameras[order], background)


def in_view(means: Tensor, K: Tensor, T_world_cam: Tensor, width: int, height: int,
            margin: float = 0.5) -> Tensor:
    """``[N]`` bool: points in front of the camera whose projections fall within the image
    grown by ``margin`` of its size on every side.

    Args:
        means: ``[N, 3]`` points in the world frame.
        K: ``[3, 3]`` intrinsics; T_world_cam: ``[4, 4]`` camera-to-world.
    """
    R = T_world_cam[:3, :3]
    pts_cam = (means - T_world_cam[:3, 3]) @ R
    z = pts_cam[:, 2]
    u = pts_cam[:, 0] / z.clamp_min(1e-6) * K[0, 0] + K[0, 2]
    v = pts_cam[:, 1] / z.clamp_min(1e-6) * K[1, 1] + K[1, 2]
    return (z > 1e-3) & (u > -margin * width) & (u < (1 + margin) * width) \
        & (v > -margin * height) & (v < (1 + margin) * height)
