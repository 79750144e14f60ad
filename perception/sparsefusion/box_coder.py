"""Box codes: the regression targets of the heads.

LiDAR frame (the LiDAR decoder, the refined camera candidates and the fusion head), in
units of BEV cells for the centre so that it matches the query grid::

    [ (x - x0) / cell_x, (y - y0) / cell_y, z, log w, log l, log h, sin yaw, cos yaw, vx, vy ]

Camera frame (the camera decoder), per view, with the image size of the network input::

    [ u / W, v / H, log depth, log w, log l, log h, sin yaw_cam, cos yaw_cam, vx, vz ]

``(u, v)`` is the projection of the box's centre (it can lie outside the image), ``yaw_cam``
the rotation about the camera's +y axis (:class:`perception.boxes.CameraBoxes`).
"""

from __future__ import annotations

import torch
from torch import Tensor

CODE_SIZE = 10


class LidarBoxCoder:
    """Encodes LiDAR-frame boxes relative to the BEV grid."""

    def __init__(self, point_range: tuple[float, ...], cell: tuple[float, float]) -> None:
        self.origin = (float(point_range[0]), float(point_range[1]))
        self.cell = (float(cell[0]), float(cell[1]))

    def encode(
        self,
        centers: Tensor,  # [N, 3] metres, LiDAR frame (gravity centre)
        sizes: Tensor,  # [N, 3] (w, l, h) metres
        yaws: Tensor,  # [N] radians
        velocities: Tensor,  # [N, 2] m/s
    ) -> Tensor:
        """Returns ``[N, 10]`` codes."""
        return torch.cat([
            ((centers[:, 0] - self.origin[0]) / self.cell[0])[:, None],
            ((centers[:, 1] - self.origin[1]) / self.cell[1])[:, None],
            centers[:, 2:3],
            sizes.clamp(min=1e-3).log(),
            yaws.sin()[:, None],
            yaws.cos()[:, None],
            velocities,
        ], dim=1)

    def decode(self, code: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[..., 10]`` codes -> centres ``[..., 3]``, sizes ``[..., 3]``, yaws ``[...]``,
        velocities ``[..., 2]``."""
        x = code[..., 0] * self.cell[0] + self.origin[0]
        y = code[..., 1] * self.cell[1] + self.origin[1]
        centers = torch.stack([x, y, code[..., 2]], dim=-1)
        sizes = code[..., 3:6].clamp(max=6.0).exp()
        yaws = torch.atan2(code[..., 6], code[..., 7])
        return centers, sizes, yaws, code[..., 8:10]

    def normalised_center(self, code: Tensor, bev_shape: tuple[int, int]) -> Tensor:
        """``[..., 2]`` centre in [0, 1] of the BEV map (for matching costs)."""
        h, w = bev_shape
        return torch.stack([code[..., 0] / w, code[..., 1] / h], dim=-1)


def camera_encode(
    centers_2d: Tensor,  # [N, 2] pixels of the network image
    depths: Tensor,  # [N] metres
    sizes: Tensor,  # [N, 3] (w, l, h)
    yaws_cam: Tensor,  # [N]
    velocities_cam: Tensor,  # [N, 2] (vx, vz)
    image_size: tuple[int, int],  # (W, H)
) -> Tensor:
    """Camera-frame code ``[N, 10]``."""
    w, h = image_size
    return torch.cat([
        (centers_2d[:, 0] / w)[:, None], (centers_2d[:, 1] / h)[:, None],
        depths.clamp(min=1e-2).log()[:, None], sizes.clamp(min=1e-3).log(),
        yaws_cam.sin()[:, None], yaws_cam.cos()[:, None], velocities_cam,
    ], dim=1)
