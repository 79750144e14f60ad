"""The one camera type of sparseview: a batch of pinhole cameras with optional OpenCV distortion.

Camera frame (OpenCV, also COLMAP's)::

                 z (forward, optical axis)
                /
               /
              o ------> x (right)
              |
              |
              v
              y (down)

Image frame: ``u`` to the right, ``v`` down, in pixels. The image coordinate ``(0, 0)``
is the top-left CORNER of the top-left pixel, so pixel ``(row i, col j)`` has its centre
at ``(u, v) = (j + 0.5, i + 0.5)`` and the whole image spans ``[0, W] x [0, H]``. This is
the convention of COLMAP, nerfstudio, PyTorch3D's screen space and gsplat (which samples
pixel centres at ``+0.5``). Consequences:

- resizing an image by ``s`` scales ``fx, fy, cx, cy`` by ``s`` with no half-pixel shift;
- cropping at ``(x0, y0)`` subtracts ``(x0, y0)`` from ``(cx, cy)``.

Projection of a camera-frame point ``p = (x, y, z)``, ``z > 0``::

    (x', y') = (x / z, y / z)                 normalised coordinates
    (x'', y'') = distort(x', y')              OpenCV radial-tangential, optional
    (u, v, 1)^T = K @ (x'', y'', 1)^T

with ``dist = (k1, k2, p1, p2, k3)``::

    r^2 = x'^2 + y'^2,  radial = 1 + k1 r^2 + k2 r^4 + k3 r^6
    x'' = x' radial + 2 p1 x'y' + p2 (r^2 + 2 x'^2)
    y'' = y' radial + p1 (r^2 + 2 y'^2) + 2 p2 x'y'

``K`` may carry a skew ``K[0, 1]`` (decomposed projection matrices have one);
projection and unprojection honour it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from geometry.se3 import invert_T, transform_points
from geometry.shapes import broadcast_shapes

NUM_DIST = 5  # (k1, k2, p1, p2, k3)


def intrinsics_matrix(fx: Tensor, fy: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """Build ``K`` from focal lengths and principal point (pixels).

    Args:
        fx, fy, cx, cy: ``[...]`` each (broadcast together).

    Returns:
        ``[..., 3, 3]``.
    """
    fx, fy, cx, cy = torch.broadcast_tensors(*(torch.as_tensor(v) for v in (fx, fy, cx, cy)))
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack(
        (
            torch.stack((fx, zero, cx), -1),
            torch.stack((zero, fy, cy), -1),
            torch.stack((zero, zero, one), -1),
        ),
        -2,
    )


def distort(xy: Tensor, dist: Tensor | None) -> Tensor:
    """Apply OpenCV radial-tangential distortion to normalised image coordinates.

    Args:
        xy: ``[..., N, 2]`` undistorted normalised coordinates ``(x/z, y/z)``.
        dist: ``[..., 5]`` ``(k1, k2, p1, p2, k3)`` or ``None`` (identity).

    Returns:
        ``[..., N, 2]`` distorted normalised coordinates.
    """
    if dist is None:
        return xy
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(NUM_DIST))
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xy_prod = x * y
    x_d = x * radial + 2 * p1 * xy_prod + p2 * (r2 + 2 * x * x)
    y_d = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * xy_prod
    return torch.stack((x_d, y_d), -1)


def _distort_jacobian(xy: Tensor, dist: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entries ``(dxd/dx, dxd/dy, dyd/dx, dyd/dy)`` of the distortion Jacobian, ``[..., N]``."""
    k1, k2, p1, p2, k3 = (dist[..., i, None] for i in range(NUM_DIST))
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    d_radial_d_r2 = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    j00 = radial + 2 * x * x * d_radial_d_r2 + 2 * p1 * y + 6 * p2 * x
    j01 = 2 * x * y * d_radial_d_r2 + 2 * p1 * x + 2 * p2 * y
    j10 = 2 * x * y * d_radial_d_r2 + 2 * p1 * x + 2 * p2 * y
    j11 = radial + 2 * y * y * d_radial_d_r2 + 6 * p1 * y + 2 * p2 * x
    return j00, j01, j10, j11


def undistort(xy_distorted: Tensor, dist: Tensor | None, num_iters: int = 10) -> Tensor:
    """Invert :func:`distort` with Gauss-Newton (Newton) steps on the 2x2 system.

    Starts from the distorted coordinates; each step solves ``J dx = distort(x) - x_d``
    in closed form. Converges quadratically inside the region where the distortion is
    invertible (the usual image area); ``num_iters`` steps are unrolled, so the result is
    differentiable.

    Args:
        xy_distorted: ``[..., N, 2]`` distorted normalised coordinates.
        dist: ``[..., 5]`` or ``None`` (identity).
        num_iters: fixed number of Newton steps.

    Returns:
        ``[..., N, 2]`` undistorted normalised coordinates.
    """
    if dist is None:
        return xy_distorted
    xy = xy_distorted
    for _ in range(num_iters):
        residual = distort(xy, dist) - xy_distorted
        j00, j01, j10, j11 = _distort_jacobian(xy, dist)
        det = j00 * j11 - j01 * j10
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        dx = (j11 * residual[..., 0] - j01 * residual[..., 1]) / det
        dy = (-j10 * residual[..., 0] + j00 * residual[..., 1]) / det
        xy = xy - torch.stack((dx, dy), -1)
    return xy


def _as_float_tensor(value: object, name: str) -> Tensor:
    tensor = torch.as_tensor(value)
    if not torch.is_floating_point(tensor):
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dim() < 2:
        raise ValueError(f"Cameras.{name} must be a matrix (or batch of them), got {tensor.shape}")
    return tensor


@dataclass(eq=False)  # tensor fields: compare explicitly, not with ==
class Cameras:
    """A batch of pinhole cameras (OpenCV frame) with optional radial-tangential distortion.

    Batch shape ``...`` is common to every field; ``K`` and ``T_world_cam`` may be given
    with broadcastable batch shapes (one shared ``K`` for many poses) and are expanded.
    ``image_paths`` and ``names`` are per-camera lists and need a 1-D batch.

    Attributes:
        K: ``[..., 3, 3]`` intrinsics in pixels (see the module docstring for the pixel
            convention).
        T_world_cam: ``[..., 4, 4]`` camera-to-world, OpenCV axes (x right, y down,
            z forward).
        width: ``[...]`` int64 image width in pixels (an int is broadcast).
        height: ``[...]`` int64 image height.
        dist: ``[..., 5]`` ``(k1, k2, p1, p2, k3)`` or ``None`` for a distortion-free
            pinhole. Shorter vectors (``k1``; ``k1, k2``; ``k1, k2, p1, p2``) are
            zero-padded.
        image_paths: optional list of image file paths, one per camera.
        names: optional list of image names (e.g. the name in a COLMAP model).
    """

    K: Tensor
    T_world_cam: Tensor
    width: Tensor | int
    height: Tensor | int
    dist: Tensor | None = None
    image_paths: list[str] | None = None
    names: list[str] | None = None

    def __post_init__(self) -> None:
        K = _as_float_tensor(self.K, "K")
        T = _as_float_tensor(self.T_world_cam, "T_world_cam")
        if K.shape[-2:] != (3, 3) or T.shape[-2:] != (4, 4):
            raise ValueError(f"Cameras needs K [..., 3, 3] and T_world_cam [..., 4, 4], "
                             f"got {tuple(K.shape)} and {tuple(T.shape)}")
        dtype = torch.promote_types(K.dtype, T.dtype)
        width = torch.as_tensor(self.width, device=T.device)
        height = torch.as_tensor(self.height, device=T.device)
        dist = None if self.dist is None else torch.as_tensor(self.dist, device=T.device)
        shapes = [K.shape[:-2], T.shape[:-2], width.shape, height.shape]
        if dist is not None:
            if dist.dim() < 1 or dist.shape[-1] not in (1, 2, 4, 5):
                raise ValueError(f"Cameras.dist must be [..., k] with k in 1, 2, 4, 5, "
                                 f"got {tuple(dist.shape)}")
            shapes.append(dist.shape[:-1])
        batch = broadcast_shapes(*shapes)
        self.K = K.to(dtype).expand(*batch, 3, 3).contiguous()
        self.T_world_cam = T.to(T.device, dtype).expand(*batch, 4, 4).contiguous()
        self.K = self.K.to(self.T_world_cam.device)
        if torch.is_floating_point(width) or torch.is_floating_point(height):
            if not (torch.equal(width, width.round()) and torch.equal(height, height.round())):
                raise ValueError("Cameras.width and height must be whole numbers of pixels")
        self.width = width.to(torch.int64).expand(batch).contiguous()
        self.height = height.to(torch.int64).expand(batch).contiguous()
        if dist is not None:
            dist = dist.to(self.T_world_cam.device, dtype)
            if dist.shape[-1] == 1:
                dist = torch.nn.functional.pad(dist, (0, 4))
            elif dist.shape[-1] == 2:
                dist = torch.nn.functional.pad(dist, (0, 3))
            elif dist.shape[-1] == 4:
                dist = torch.nn.functional.pad(dist, (0, 1))
            dist = dist.expand(*batch, NUM_DIST).contiguous()
        self.dist = dist
        for field in ("image_paths", "names"):
            values = getattr(self, field)
            if values is None:
                continue
            values = [str(v) for v in values]
            if len(batch) != 1 or len(values) != batch[0]:
                raise ValueError(f"Cameras.{field} needs a 1-D batch and one entry per camera: "
                                 f"batch {tuple(batch)}, {len(values)} entries")
            setattr(self, field, values)

    # ------------------------------------------------------------------ batch handling

    @property
    def shape(self) -> torch.Size:
        """The batch shape ``...``."""
        return self.K.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.K.device

    @property
    def dtype(self) -> torch.dtype:
        return self.K.dtype

    def __len__(self) -> int:
        if len(self.shape) == 0:
            raise TypeError("len() of a single (unbatched) camera")
        return self.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor | np.ndarray) -> Cameras:
        """Index the batch like a tensor (int, slice, index list/tensor, boolean mask).

        Indexing the first dimension also selects ``image_paths`` and ``names``.
        """
        if isinstance(index, (list, np.ndarray)):
            index = torch.as_tensor(index)
        if isinstance(index, Tensor):
            index = index.to(self.device)

        def pick(values: list[str] | None) -> list[str] | None:
            if values is None:
                return None
            selected = np.arange(len(values))[
                index.cpu().numpy() if isinstance(index, Tensor) else index
            ]
            if np.ndim(selected) == 0:
                return None  # a single camera has a 0-d batch: lists need 1-D
            return [values[i] for i in np.asarray(selected).reshape(-1)]

        dist = None if self.dist is None else self.dist[index]
        return Cameras(
            K=self.K[index],
            T_world_cam=self.T_world_cam[index],
            width=self.width[index],
            height=self.height[index],
            dist=dist,
            image_paths=pick(self.image_paths),
            names=pick(self.names),
        )

    def to(self, device: torch.device | str | None = None,
           dtype: torch.dtype | None = None) -> Cameras:
        """Move to a device and/or cast the float fields to ``dtype``."""
        def conv(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device=device, dtype=dtype)

        return dataclasses.replace(
            self,
            K=conv(self.K),
            T_world_cam=conv(self.T_world_cam),
            dist=conv(self.dist),
            width=self.width.to(device),
            height=self.height.to(device),
        )

    @staticmethod
    def cat(cameras: Sequence[Cameras], dim: int = 0) -> Cameras:
        """Concatenate batches along ``dim``; a missing ``dist`` counts as zeros.

        ``image_paths``/``names`` are kept only if every input has them.
        """
        if not cameras:
            raise ValueError("Cameras.cat needs at least one Cameras")
        dtype = cameras[0].dtype
        any_dist = any(c.dist is not None for c in cameras)

        def dist_of(c: Cameras) -> Tensor:
            if c.dist is not None:
                return c.dist.to(dtype)
            return torch.zeros((*c.shape, NUM_DIST), dtype=dtype, device=c.device)

        def lists(field: str) -> list[str] | None:
            values = [getattr(c, field) for c in cameras]
            if any(v is None for v in values):
                return None
            return [item for v in values for item in v]

        return Cameras(
            K=torch.cat([c.K.to(dtype) for c in cameras], dim),
            T_world_cam=torch.cat([c.T_world_cam.to(dtype) for c in cameras], dim),
            width=torch.cat([c.width for c in cameras], dim),
            height=torch.cat([c.height for c in cameras], dim),
            dist=torch.cat([dist_of(c) for c in cameras], dim) if any_dist else None,
            image_paths=lists("image_paths"),
            names=lists("names"),
        )

    # ------------------------------------------------------------------ derived quantities

    @property
    def T_cam_world(self) -> Tensor:
        """``[..., 4, 4]`` world-to-camera (gsplat's ``viewmats``)."""
        return invert_T(self.T_world_cam)

    @property
    def centers(self) -> Tensor:
        """``[..., 3]`` camera centres in world coordinates."""
        return self.T_world_cam[..., :3, 3]

    @property
    def fx(self) -> Tensor:
        return self.K[..., 0, 0]

    @property
    def fy(self) -> Tensor:
        return self.K[..., 1, 1]

    @property
    def cx(self) -> Tensor:
        return self.K[..., 0, 2]

    @property
    def cy(self) -> Tensor:
        return self.K[..., 1, 2]

    @property
    def has_distortion(self) -> bool:
        """Whether any camera has a non-zero distortion coefficient."""
        return self.dist is not None and bool((self.dist != 0).any())

    # ------------------------------------------------------------------ projection

    def distort(self, xy: Tensor) -> Tensor:
        """Distort normalised coordinates ``[..., N, 2]`` (identity for a pinhole)."""
        return distort(xy, self.dist)

    def undistort(self, xy_distorted: Tensor, num_iters: int = 10) -> Tensor:
        """Undistort normalised coordinates ``[..., N, 2]`` (see :func:`undistort`)."""
        return undistort(xy_distorted, self.dist, num_iters)

    def pixels_to_normalized(self, uv: Tensor) -> Tensor:
        """``K^-1``: pixels ``[..., N, 2]`` to DISTORTED normalised coordinates."""
        fx, fy = self.fx[..., None], self.fy[..., None]
        cx, cy = self.cx[..., None], self.cy[..., None]
        skew = self.K[..., 0, 1, None]
        y = (uv[..., 1] - cy) / fy
        x = (uv[..., 0] - cx - skew * y) / fx
        return torch.stack((x, y), -1)

    def normalized_to_pixels(self, xy: Tensor) -> Tensor:
        """``K``: distorted normalised coordinates ``[..., N, 2]`` to pixels."""
        fx, fy = self.fx[..., None], self.fy[..., None]
        cx, cy = self.cx[..., None], self.cy[..., None]
        skew = self.K[..., 0, 1, None]
        u = fx * xy[..., 0] + skew * xy[..., 1] + cx
        v = fy * xy[..., 1] + cy
        return torch.stack((u, v), -1)

    def project(self, pts_world: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
        """Project world points into the images.

        Args:
            pts_world: ``[..., N, 3]``; its leading dims broadcast against the camera
                batch: ``[B, N, 3]`` is one point set per camera, ``[N, 3]`` one set seen
                by every camera (the output is then ``[B, N, ...]``).
            eps: ``|z|`` below which the division uses ``eps`` (sign kept) instead.

        Returns:
            ``uv [..., N, 2]`` pixels (distortion applied) and ``depth [..., N]``, the
            camera-frame ``z`` (metres). Points with ``depth <= 0`` are behind the camera;
            their ``uv`` is meaningless and the caller must mask them.
        """
        pts_cam = transform_points(self.T_cam_world, pts_world)
        depth = pts_cam[..., 2]
        z = torch.where(depth.abs() < eps, torch.full_like(depth, eps).copysign(depth), depth)
        xy = pts_cam[..., :2] / z[..., None]
        return self.normalized_to_pixels(self.distort(xy)), depth

    def unproject(self, uv: Tensor, depth: Tensor, num_iters: int = 10) -> Tensor:
        """Lift pixels with known z-depth to world points (inverse of :meth:`project`).

        Args:
            uv: ``[..., N, 2]`` pixels.
            depth: ``[..., N]`` camera-frame ``z`` (not the distance along the ray).
            num_iters: Newton steps of the undistortion.

        Returns:
            ``[..., N, 3]`` world points.
        """
        xy = self.undistort(self.pixels_to_normalized(uv), num_iters)
        pts_cam = torch.cat((xy * depth[..., None], depth[..., None]), -1)
        return transform_points(self.T_world_cam, pts_cam)

    def rays(self, uv: Tensor, num_iters: int = 10) -> tuple[Tensor, Tensor]:
        """World-space rays through pixels.

        Args:
            uv: ``[..., N, 2]`` pixels (pixel centres are at ``+0.5``).

        Returns:
            ``origins [..., N, 3]`` (the camera centres) and unit ``directions [..., N, 3]``.
        """
        xy = self.undistort(self.pixels_to_normalized(uv), num_iters)
        dirs_cam = torch.nn.functional.normalize(
            torch.cat((xy, torch.ones_like(xy[..., :1])), -1), dim=-1
        )
        dirs = dirs_cam @ self.T_world_cam[..., :3, :3].transpose(-1, -2)
        return self.centers[..., None, :].expand_as(dirs), dirs

    def pixel_centers(self) -> Tensor:
        """``[H, W, 2]`` pixel-centre coordinates ``(j + 0.5, i + 0.5)`` of an unbatched camera."""
        if len(self.shape) != 0 and int(np.prod(self.shape)) != 1:
            raise ValueError("pixel_centers needs a single camera; index the batch first")
        w, h = int(self.width.reshape(-1)[0]), int(self.height.reshape(-1)[0])
        v, u = torch.meshgrid(
            torch.arange(h, dtype=self.dtype, device=self.device) + 0.5,
            torch.arange(w, dtype=self.dtype, device=self.device) + 0.5,
            indexing="ij",
        )
        return torch.stack((u, v), -1)

    # ------------------------------------------------------------------ image edits

    def rescale(self, scale_x: float, scale_y: float | None = None) -> Cameras:
        """Intrinsics for the image resized by ``(scale_x, scale_y)``.

        With the corner-origin pixel convention the whole image plane scales:
        ``fx, cx, skew *= scale_x``; ``fy, cy *= scale_y``; the size becomes
        ``round(W * scale_x) x round(H * scale_y)``. To hit an exact size use :meth:`resize`.
        """
        scale_y = scale_x if scale_y is None else scale_y
        S = torch.tensor([[scale_x, 0, 0], [0, scale_y, 0], [0, 0, 1]],
                         dtype=self.dtype, device=self.device)
        return dataclasses.replace(
            self,
            K=S @ self.K,
            width=torch.round(self.width.double() * scale_x).to(torch.int64),
            height=torch.round(self.height.double() * scale_y).to(torch.int64),
        )

    def resize(self, width: int, height: int) -> Cameras:
        """Intrinsics for the image resized to exactly ``width x height`` pixels."""
        if len(self.shape) and not (torch.all(self.width == self.width.reshape(-1)[0])
                                    and torch.all(self.height == self.height.reshape(-1)[0])):
            raise ValueError("Cameras.resize needs cameras of one image size; index first")
        w0 = float(self.width.reshape(-1)[0])
        h0 = float(self.height.reshape(-1)[0])
        out = self.rescale(width / w0, height / h0)
        return dataclasses.replace(out, width=width, height=height)

    def crop(self, x0: int, y0: int, width: int, height: int) -> Cameras:
        """Intrinsics for the crop ``[x0, x0 + width) x [y0, y0 + height)`` of the image."""
        offset = torch.tensor([[0, 0, x0], [0, 0, y0], [0, 0, 0]],
                              dtype=self.dtype, device=self.device)
        return dataclasses.replace(self, K=self.K - offset, width=width, height=height)
