"""The two transfer modules of SparseFusion, which run before the detectors.

- Semantic transfer (camera -> LiDAR): every BEV cell samples image features at the
  projections of a few points above it (several heights, all views) and attends to them
  with weights predicted from its own LiDAR feature (invalid projections masked); the
  result is fused into the BEV map that forms the LiDAR heatmap, so the LiDAR queries
  start where the cameras see objects too.
- Geometric transfer (LiDAR -> camera): the LiDAR points are projected into each view
  and splatted into a sparse depth map (nearest point per cell) at every feature level;
  an encoding of it is added to the image features, so the camera decoder knows depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def project_points(
    pts_lidar: Tensor,  # [B, P, 3]
    T_cam_lidar: Tensor,  # [B, V, 4, 4]
    K: Tensor,  # [B, V, 3, 3]
) -> tuple[Tensor, Tensor]:
    """Returns pixels ``[B, V, P, 2]`` and depths ``[B, V, P]`` (camera z)."""
    R = T_cam_lidar[:, :, :3, :3]
    t = T_cam_lidar[:, :, :3, 3]
    pts_cam = torch.einsum("bvij,bpj->bvpi", R, pts_lidar) + t[:, :, None]
    depth = pts_cam[..., 2]
    uvw = torch.einsum("bvij,bvpj->bvpi", K, pts_cam)
    uv = uvw[..., :2] / uvw[..., 2:3].clamp(min=1e-6)
    return uv, depth


class SemanticTransfer(nn.Module):
    """BEV cells attend to image features at their projections (camera -> LiDAR)."""

    def __init__(self, dim: int, num_views: int, heights: tuple[float, ...],
                 point_range: tuple[float, ...], bev_shape: tuple[int, int]) -> None:
        super().__init__()
        self.heights = tuple(heights)
        self.num_views = num_views
        self.weights = nn.Linear(dim, num_views * len(heights))
        self.value = nn.Conv2d(dim, dim, 1)
        self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
                                  nn.Conv2d(dim, dim, 1))
        # Start as the identity (a zero last layer, after the ReLU so gradients still flow),
        # so a pretrained LiDAR branch is not disturbed when fusion training begins.
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)
        h, w = bev_shape
        x0, y0, _, x1, y1, _ = point_range
        xs = x0 + (torch.arange(w) + 0.5) * (x1 - x0) / w
        ys = y0 + (torch.arange(h) + 0.5) * (y1 - y0) / h
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        z = torch.tensor(self.heights)
        pts = torch.stack([gx[..., None].expand(h, w, len(heights)),
                           gy[..., None].expand(h, w, len(heights)),
                           z.expand(h, w, len(heights))], dim=-1)
        self.register_buffer("points", pts.reshape(-1, 3), persistent=False)  # [H*W*S, 3]

    def forward(
        self,
        bev: Tensor,  # [B, C, H, W]
        image_features: Tensor,  # [B*V, C, h, w]
        T_cam_lidar: Tensor,  # [B, V, 4, 4]
        K: Tensor,  # [B, V, 3, 3] of the network images
        image_size: tuple[int, int],  # (W, H)
        view_mask: Tensor,  # [B, V] bool
    ) -> Tensor:
        """Returns the BEV map with camera semantics fused in, ``[B, C, H, W]``."""
        b, c, h, w = bev.shape
        v, s = self.num_views, len(self.heights)
        pts = self.points.to(bev.dtype).expand(b, -1, -1)
        uv, depth = project_points(pts, T_cam_lidar.to(bev.dtype), K.to(bev.dtype))
        width, height = image_size
        grid = torch.stack([uv[..., 0] / width * 2 - 1, uv[..., 1] / height * 2 - 1], dim=-1)
        valid = ((depth > 0.1) & (grid.abs() <= 1).all(-1) & view_mask[:, :, None])
        grid = torch.where(valid[..., None], grid, torch.full_like(grid, -2.0))
        values = self.value(image_features)
        sampled = F.grid_sample(values, grid.reshape(b * v, 1, -1, 2), align_corners=False)
        sampled = sampled.reshape(b, v, c, h * w, s)
        logits = self.weights(bev.flatten(2).transpose(1, 2))  # [B, HW, V*S]
        logits = logits.reshape(b, h * w, v, s).permute(0, 2, 1, 3)  # [B, V, HW, S]
        valid = valid.reshape(b, v, h * w, s)
        # A finite mask value keeps the backward pass finite for cells that see nothing;
        # multiplying by ``valid`` then gives them zero weight.
        logits = logits.masked_fill(~valid, -1e4)
        flat = logits.permute(0, 2, 1, 3).reshape(b, h * w, v * s)
        attn = flat.softmax(-1).reshape(b, h * w, v, s).permute(0, 2, 1, 3)  # [B, V, HW, S]
        attn = attn * valid.to(attn.dtype)
        gathered = (sampled * attn[:, :, None]).sum(dim=(1, 4))  # [B, C, HW]
        return bev + self.fuse(torch.cat([bev, gathered.reshape(b, c, h, w)], dim=1))


class GeometricTransfer(nn.Module):
    """LiDAR depth projected into each view and fused into image features (LiDAR ->
    camera)."""

    def __init__(self, dim: int, max_depth: float) -> None:
        super().__init__()
        self.max_depth = max_depth
        self.encode = nn.Sequential(nn.Conv2d(2, dim // 2, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(dim // 2, dim, 3, padding=1))
        nn.init.zeros_(self.encode[-1].weight)
        nn.init.zeros_(self.encode[-1].bias)

    @staticmethod
    def depth_maps(
        points: list[Tensor],  # per sample [N_i, 3+] LiDAR frame (column 4: time lag)
        T_cam_lidar: Tensor,  # [B, V, 4, 4]
        K: Tensor,  # [B, V, 3, 3]
        image_size: tuple[int, int],
        map_sizes: list[tuple[int, int]],  # (h, w) of each feature map
    ) -> list[Tensor]:
        """Nearest LiDAR depth per feature cell, 0 where no point falls: per map
        ``[B, V, h, w]``. Only the keyframe sweep (time lag 0) is used when the points
        carry a time lag: older sweeps would put moving objects at stale places."""
        b, v = K.shape[:2]
        width, height = image_size
        outs = [torch.zeros(b, v, h * w, dtype=K.dtype, device=K.device) for h, w in map_sizes]
        for i, pts in enumerate(points):
            if pts.shape[1] > 4:
                pts = pts[pts[:, 4] == 0]
            if pts.shape[0] == 0:
                continue
            uv, depth = project_points(pts[None, :, :3].to(K.dtype), T_cam_lidar[i:i + 1],
                                       K[i:i + 1])
            uv, depth = uv[0], depth[0]  # [V, P, 2], [V, P]
            in_front = depth > 0.5
            view = torch.arange(v, device=K.device)[:, None].expand_as(depth)
            for out, (h, w) in zip(outs, map_sizes, strict=True):
                col = torch.floor(uv[..., 0] / width * w).long()
                row = torch.floor(uv[..., 1] / height * h).long()
                ok = in_front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
                flat = (view * h * w + row * w + col)[ok]
                nearest = torch.full((v * h * w,), float("inf"), dtype=K.dtype,
                                     device=K.device)
                nearest = nearest.scatter_reduce(0, flat, depth[ok], reduce="amin")
                out[i] = torch.where(torch.isinf(nearest), torch.zeros_like(nearest),
                                     nearest).view(v, h * w)
        return [out.view(b, v, h, w) for out, (h, w) in zip(outs, map_sizes, strict=True)]

    def forward(self, features: list[Tensor], depth_maps: list[Tensor]) -> list[Tensor]:
        """``features``: per level ``[B*V, C, h, w]``; ``depth_maps``: per level
        ``[B, V, h, w]`` -> features with depth fused in."""
        out = []
        for feat, depth in zip(features, depth_maps, strict=True):
            d = depth.flatten(0, 1)[:, None].to(feat.dtype)
            x = torch.cat([d / self.max_depth, (d > 0).to(feat.dtype)], dim=1)
            out.append(feat + self.encode(x))
        return out
