"""The disentangled view transform of SparseFusion and its camera-aware refinement.

A camera candidate is (projected centre ``(u, v)``, depth, size, yaw and velocity in the
camera frame). Each property goes to the LiDAR frame on its own path:

- centre: ``p_cam = depth * K^-1 [u, v, 1]`` (depth is the camera z), then
  ``p_lidar = R_lidar_cam p_cam + t_lidar_cam``;
- size: unchanged (it is intrinsic to the object);
- yaw: the heading ``(cos yaw, 0, -sin yaw)`` in the camera frame is rotated by
  ``R_lidar_cam`` and re-read as ``atan2(h_y, h_x)`` (kept as (sin, cos));
- velocity: ``(vx, 0, vz)`` rotated by ``R_lidar_cam``, its x and y kept.

All of it is differentiable, so the camera heads are trained through the LiDAR-frame
losses too. The refinement then corrects the transformed candidates with an MLP that sees
the query feature and the camera's parameters (intrinsics normalised by the image size,
extrinsics), since depth errors and their direction depend on them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perception.sparsefusion.heads import FFN, PositionEmbedding, PredictionHead


def camera_to_lidar(
    centers_2d: Tensor,  # [N, 2] pixels (u right, v down)
    depths: Tensor,  # [N] metres (camera z)
    yaw_sin_cos: Tensor,  # [N, 2] (sin, cos) of the yaw about the camera's +y axis
    velocities_cam: Tensor,  # [N, 2] (vx, vz) m/s
    K: Tensor,  # [N, 3, 3]
    T_lidar_cam: Tensor,  # [N, 4, 4]
) -> tuple[Tensor, Tensor, Tensor]:
    """Camera-frame candidates -> LiDAR frame.

    Returns:
        centres ``[N, 3]`` (metres), yaw ``[N, 2]`` (sin, cos) and velocities ``[N, 2]``
        (vx, vy) in the LiDAR frame. Sizes need no transform.
    """
    ones = torch.ones_like(depths)
    pixel = torch.stack([centers_2d[:, 0], centers_2d[:, 1], ones], dim=-1)
    rays = torch.linalg.solve(K, pixel.unsqueeze(-1)).squeeze(-1)  # z = 1
    pts_cam = rays / rays[:, 2:3] * depths[:, None]
    R = T_lidar_cam[:, :3, :3]
    centers = (R @ pts_cam.unsqueeze(-1)).squeeze(-1) + T_lidar_cam[:, :3, 3]
    zero = torch.zeros_like(depths)
    heading_cam = torch.stack([yaw_sin_cos[:, 1], zero, -yaw_sin_cos[:, 0]], dim=-1)
    heading = (R @ heading_cam.unsqueeze(-1)).squeeze(-1)
    norm = heading[:, :2].norm(dim=-1, keepdim=True).clamp(min=1e-6)
    yaw = torch.stack([heading[:, 1], heading[:, 0]], dim=-1) / norm
    vel_cam = torch.stack([velocities_cam[:, 0], zero, velocities_cam[:, 1]], dim=-1)
    velocities = (R @ vel_cam.unsqueeze(-1)).squeeze(-1)[:, :2]
    return centers, yaw, velocities


def camera_parameters(K: Tensor, T_lidar_cam: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``[N, 16]`` camera description for the refinement: fx/W, fy/H, cx/W, cy/H, the
    rotation (9) and the translation / 10 m."""
    w, h = image_size
    intr = torch.stack([K[:, 0, 0] / w, K[:, 1, 1] / h, K[:, 0, 2] / w, K[:, 1, 2] / h], -1)
    return torch.cat([intr, T_lidar_cam[:, :3, :3].flatten(1), T_lidar_cam[:, :3, 3] / 10.0],
                     dim=-1)


class CameraAwareRefinement(nn.Module):
    """Refines transformed camera candidates in the LiDAR frame.

    The query feature gets an embedding of its camera's parameters and of its new BEV
    position; a head predicts class logits and a residual on the transformed box code.
    """

    def __init__(self, dim: int, ffn: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.camera_embed = PositionEmbedding(16, dim)
        self.bev_embed = PositionEmbedding(2, dim)
        self.ffn = FFN(dim, ffn, dropout)
        self.head = PredictionHead(dim, num_classes)

    def forward(
        self,
        features: Tensor,  # [B, Q, C]
        codes: Tensor,  # [B, Q, 10] transformed candidates (LiDAR box code)
        camera_params: Tensor,  # [B, Q, 16]
        bev_shape: tuple[int, int],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns refined features ``[B, Q, C]``, logits ``[B, Q, K]``, codes ``[B, Q, 10]``."""
        h, w = bev_shape
        bev_xy = torch.stack([codes[..., 0] / w, codes[..., 1] / h], dim=-1).detach()
        x = features + self.camera_embed(camera_params) + self.bev_embed(bev_xy)
        x = self.ffn(x)
        logits, delta = self.head(x)
        return x, logits, codes + delta
