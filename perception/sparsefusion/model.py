"""SparseFusion: parallel LiDAR and camera detectors on sparse candidates, fused.

.. code-block:: none

    points -> voxelize -> sparse 3D encoder -> BEV neck -> shared conv --+
                                                    (semantic transfer) <-+-- image feats
                               BEV heatmap -> top-k LiDAR queries -> decoder -> LiDAR cands
    images -> ResNet -> FPN --(geometric transfer <- LiDAR depth)--> per-view heatmap
             -> top-k camera queries -> deformable decoder -> camera cands (camera frame)
             -> disentangled view transform -> camera-aware refinement -> camera cands (LiDAR)
    union of candidates -> self-attention -> heads -> boxes

The ``modality`` switch builds only the LiDAR branch, only the camera branch, or both
(the transfer modules exist only with both, each behind its own switch). The fusion layer
and heads run in every mode, so the three variants are trained and scored the same way.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perception.boxes import LidarBoxes
from perception.constants import ATTRIBUTES, DEFAULT_ATTRIBUTE, DETECTION_CLASSES
from perception.sparsefusion.box_coder import LidarBoxCoder, camera_encode
from perception.sparsefusion.camera_branch import CameraBranch
from perception.sparsefusion.config import SparseFusionConfig
from perception.sparsefusion.data import Batch
from perception.sparsefusion.heads import (
    FFN,
    CrossAttentionLayer,
    PositionEmbedding,
    PredictionHead,
    SelfAttentionLayer,
    heatmap_peaks,
    top_queries,
)
from perception.sparsefusion.lidar_branch import BEVNeck, SparseEncoder, voxelize_batch
from perception.sparsefusion.losses import (
    draw_gaussian,
    gaussian_focal_loss,
    gaussian_radius,
    set_loss,
)
from perception.sparsefusion.transfer import GeometricTransfer, SemanticTransfer
from perception.sparsefusion.view_transform import (
    CameraAwareRefinement,
    camera_parameters,
    camera_to_lidar,
)

# TransFusion runs no heatmap NMS for the two smallest classes (pedestrian, traffic cone).
NO_NMS_CLASSES = (DETECTION_CLASSES.index("pedestrian"), DETECTION_CLASSES.index("traffic_cone"))
MOVING_SPEED = 0.2  # m/s above which a box gets its class's "moving" attribute


class SparseFusion(nn.Module):
    def __init__(self, config: SparseFusionConfig) -> None:
        super().__init__()
        self.config = config
        dim, k = config.hidden, config.num_classes
        self.bev_shape = config.bev_shape
        cell = tuple(s * config.bev_stride for s in config.voxel.voxel_size[:2])
        self.coder = LidarBoxCoder(config.voxel.point_range, cell)
        self.fusion_mode = config.modality == "fusion"
        if config.use_lidar:
            self.encoder = SparseEncoder(config)
            self.neck = BEVNeck(self.encoder.out_channels, config)
            self.shared_conv = nn.Sequential(nn.Conv2d(self.neck.out_channels, dim, 3, padding=1,
                                                       bias=False),
                                             nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
            self.lidar_heatmap = nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim),
                nn.ReLU(inplace=True), nn.Conv2d(dim, k, 3, padding=1))
            nn.init.constant_(self.lidar_heatmap[-1].bias, -2.19)
            self.lidar_class_embed = nn.Linear(k, dim)
            self.bev_pos = PositionEmbedding(2, dim)
            self.lidar_self = SelfAttentionLayer(dim, config.heads, config.dropout)
            self.lidar_cross = CrossAttentionLayer(dim, config.heads, config.dropout)
            self.lidar_ffn = FFN(dim, config.ffn, config.dropout)
            self.lidar_head = PredictionHead(dim, k)
            h, w = self.bev_shape
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grid = torch.stack([(gx + 0.5) / w, (gy + 0.5) / h], -1).reshape(-1, 2).float()
            self.register_buffer("bev_grid", grid, persistent=False)  # [H*W, 2] normalised
        if config.use_camera:
            self.camera = CameraBranch(config)
            self.refine = CameraAwareRefinement(dim, config.ffn, k, config.dropout)
        if self.fusion_mode and config.transfer.semantic:
            self.semantic = SemanticTransfer(dim, 6, config.transfer.semantic_heights,
                                             config.voxel.point_range, self.bev_shape)
        if self.fusion_mode and config.transfer.geometric:
            self.geometric = GeometricTransfer(dim, config.camera.max_depth)
        self.fusion_pos = PositionEmbedding(2, dim)
        self.modality_embed = nn.Embedding(2, dim)
        self.fusion_self = SelfAttentionLayer(dim, config.heads, config.dropout)
        self.fusion_ffn = FFN(dim, config.ffn, config.dropout)
        self.fusion_head = PredictionHead(dim, k)

    # ------------------------------------------------------------------ forward

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Run the network; see :meth:`loss` and :meth:`predict` for the outputs' use."""
        cfg = self.config
        out: dict[str, Tensor] = {}
        image_feats = None
        if cfg.use_camera:
            image_feats = self.camera.extract(batch.images)
            if hasattr(self, "geometric"):
                maps = GeometricTransfer.depth_maps(batch.points, batch.T_cam_lidar, batch.K,
                                                    batch.image_size,
                                                    [tuple(f.shape[-2:]) for f in image_feats])
                image_feats = self.geometric(image_feats, maps)
        candidates, cand_codes, cand_kind = [], [], []
        if cfg.use_lidar:
            feats, codes = self._lidar(batch, image_feats, out)
            candidates.append(feats)
            cand_codes.append(codes)
            cand_kind.append(0)
        if cfg.use_camera:
            feats, codes = self._camera(batch, image_feats, out)
            candidates.append(feats)
            cand_codes.append(codes)
            cand_kind.append(1)
        features = torch.cat([f + self.modality_embed.weight[kind]
                              for f, kind in zip(candidates, cand_kind, strict=True)], dim=1)
        base = torch.cat(cand_codes, dim=1).detach()
        h, w = self.bev_shape
        pos = self.fusion_pos(torch.stack([base[..., 0] / w, base[..., 1] / h], dim=-1))
        x = self.fusion_self(features, pos)
        x = self.fusion_ffn(x)
        logits, delta = self.fusion_head(x)
        out["logits"] = logits
        out["code"] = base + delta
        return out

    def _lidar(self, batch: Batch, image_feats: list[Tensor] | None, out: dict
               ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        b = len(batch.points)
        voxel_feats, coords, _ = voxelize_batch(batch.points, cfg)
        bev = self.encoder(voxel_feats, coords, b)
        bev = self.shared_conv(self.neck(bev))
        h, w = self.bev_shape
        bev = bev[..., :h, :w]
        if hasattr(self, "semantic") and image_feats is not None:
            bev = self.semantic(bev, image_feats[0], batch.T_cam_lidar, batch.K,
                                batch.image_size, batch.view_mask)
        heatmap = self.lidar_heatmap(bev)  # [B, K, H, W]
        out["lidar_heatmap"] = heatmap
        with torch.no_grad():
            peaks = heatmap_peaks(heatmap.sigmoid(), cfg.lidar.nms_kernel, NO_NMS_CLASSES)
            position, labels, _ = top_queries(peaks.flatten(2), cfg.lidar.num_queries)
        flat = bev.flatten(2)  # [B, C, HW]
        query = flat.gather(2, position[:, None].expand(-1, flat.shape[1], -1)).transpose(1, 2)
        query = query + self.lidar_class_embed(F.one_hot(labels, cfg.num_classes).to(query.dtype))
        ref = self.bev_grid[position]  # [B, Q, 2] normalised
        pos = self.bev_pos(ref)
        memory = flat.transpose(1, 2)
        memory_pos = self.bev_pos(self.bev_grid)[None].expand(b, -1, -1)
        query = self.lidar_self(query, pos)
        query = self.lidar_cross(query, pos, memory, memory_pos)
        query = self.lidar_ffn(query)
        logits, delta = self.lidar_head(query)
        center = ref * torch.tensor([w, h], dtype=ref.dtype, device=ref.device) + delta[..., :2]
        code = torch.cat([center, delta[..., 2:]], dim=-1)
        out["lidar_logits"], out["lidar_code"], out["lidar_labels"] = logits, code, labels
        return query, code

    def _camera(self, batch: Batch, image_feats: list[Tensor], out: dict
                ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        cam = self.camera(image_feats, batch.view_mask, batch.image_size)
        out["camera_heatmap"] = cam["heatmap"]
        out["camera_logits"], out["camera_code"], out["camera_view"] = (
            cam["logits"], cam["code"], cam["view"])
        b, q = cam["view"].shape
        W, H = batch.image_size
        code = cam["code"]
        batch_index = torch.arange(b, device=code.device)[:, None].expand(b, q)
        K = batch.K[batch_index, cam["view"]].reshape(b * q, 3, 3)
        T_lidar_cam = torch.linalg.inv(batch.T_cam_lidar[batch_index, cam["view"]]).reshape(
            b * q, 4, 4)
        flat = code.reshape(b * q, 10)
        uv = flat[:, :2] * torch.tensor([W, H], dtype=flat.dtype, device=flat.device)
        depth = flat[:, 2].clamp(max=float(np.log(cfg.camera.max_depth))).exp()
        sin_cos = F.normalize(flat[:, 6:8], dim=-1, eps=1e-6)
        centers, yaw, vel = camera_to_lidar(uv, depth, sin_cos, flat[:, 8:10], K.to(flat.dtype),
                                            T_lidar_cam.to(flat.dtype))
        lidar_code = torch.cat([
            ((centers[:, 0] - self.coder.origin[0]) / self.coder.cell[0])[:, None],
            ((centers[:, 1] - self.coder.origin[1]) / self.coder.cell[1])[:, None],
            centers[:, 2:3], flat[:, 3:6], yaw, vel], dim=-1).reshape(b, q, 10)
        params = camera_parameters(K, T_lidar_cam, batch.image_size).reshape(b, q, 16)
        feats, logits, refined = self.refine(cam["features"], lidar_code, params.to(flat.dtype),
                                             self.bev_shape)
        out["camera_lidar_code"], out["camera_refined_logits"], out["camera_refined_code"] = (
            lidar_code, logits, refined)
        return feats, refined

    # ------------------------------------------------------------------ losses

    def loss(self, out: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        """All training losses (scalars, already weighted); ``total`` is their sum."""
        cfg, lc = self.config, self.config.loss
        weights = torch.tensor(lc.code_weights, dtype=out["code"].dtype,
                               device=out["code"].device)
        terms: dict[str, Tensor] = {}
        h, w = self.bev_shape

        def add(name: str, value: Tensor) -> None:
            terms[name] = terms.get(name, 0.0) + value / len(batch.gt)

        def lidar_set(prefix: str, logits: Tensor, codes: Tensor) -> None:
            for i, gt in enumerate(batch.gt):
                gt_code = self.coder.encode(gt["centers"], gt["sizes"], gt["yaws"],
                                            gt["velocities"]).to(codes.dtype)
                cls, box = set_loss(
                    logits[i], codes[i], self.coder.normalised_center(codes[i], (h, w)),
                    gt["labels"], gt_code, self.coder.normalised_center(gt_code, (h, w)),
                    weights, gt["code_mask"].to(codes.dtype), None, lc.cls_weight,
                    lc.bbox_weight, lc.match_cls_weight, lc.match_center_weight,
                    lc.focal_alpha, lc.focal_gamma)
                add(f"{prefix}_cls", cls)
                add(f"{prefix}_box", box)

        lidar_set("fusion", out["logits"], out["code"])
        if cfg.use_lidar:
            target = self.lidar_heatmap_target(batch).to(out["lidar_heatmap"])
            terms["lidar_heatmap"] = lc.heatmap_weight * gaussian_focal_loss(
                out["lidar_heatmap"], target)
            lidar_set("lidar", out["lidar_logits"], out["lidar_code"])
        if cfg.use_camera:
            scale = lc.camera_weight
            target = self.camera_heatmap_target(batch, out["camera_heatmap"].shape[-2:])
            terms["camera_heatmap"] = scale * lc.heatmap_weight * gaussian_focal_loss(
                out["camera_heatmap"], target.to(out["camera_heatmap"]))
            logits, codes, views = out["camera_logits"], out["camera_code"], out["camera_view"]
            for i, cam_gt in enumerate(batch.camera_gt):
                gt_code = camera_encode(cam_gt["centers_2d"], cam_gt["depths"], cam_gt["sizes"],
                                        cam_gt["yaws"], cam_gt["velocities"],
                                        batch.image_size).to(codes.dtype)
                other_view = (views[i][:, None] != cam_gt["view"][None, :]).to(codes.dtype) * 1e4
                cls, box = set_loss(
                    logits[i], codes[i], codes[i][:, :2], cam_gt["labels"], gt_code,
                    gt_code[:, :2], weights, cam_gt["code_mask"].to(codes.dtype), other_view,
                    lc.cls_weight, lc.bbox_weight, lc.match_cls_weight, lc.match_center_weight,
                    lc.focal_alpha, lc.focal_gamma)
                add("camera_cls", scale * cls)
                add("camera_box", scale * box)
            lidar_set("camera_refined", out["camera_refined_logits"], out["camera_refined_code"])
        terms["total"] = sum(terms.values())
        return terms

    def lidar_heatmap_target(self, batch: Batch) -> Tensor:
        """``[B, K, H, W]`` Gaussian peaks at the ground-truth centres (TransFusion)."""
        h, w = self.bev_shape
        cx, cy = self.coder.cell
        target = np.zeros((len(batch.gt), self.config.num_classes, h, w), np.float32)
        for i, gt in enumerate(batch.gt):
            code = self.coder.encode(gt["centers"], gt["sizes"], gt["yaws"], gt["velocities"])
            for j in range(code.shape[0]):
                width, length = float(gt["sizes"][j, 0]) / cx, float(gt["sizes"][j, 1]) / cy
                radius = max(2, int(gaussian_radius(length, width, 0.1)))
                draw_gaussian(target[i, int(gt["labels"][j])], float(code[j, 0]),
                              float(code[j, 1]), radius)
        return torch.from_numpy(target)

    def camera_heatmap_target(self, batch: Batch, map_size: tuple[int, int]) -> Tensor:
        """``[B*V, K, h, w]`` Gaussian peaks at the projected centres, per view."""
        h, w = map_size
        W, H = batch.image_size
        v = batch.view_mask.shape[1]
        target = np.zeros((len(batch.camera_gt) * v, self.config.num_classes, h, w), np.float32)
        for i, cam_gt in enumerate(batch.camera_gt):
            for j in range(cam_gt["labels"].shape[0]):
                x1, y1, x2, y2 = (float(t) for t in cam_gt["bboxes_2d"][j])
                bw, bh = (x2 - x1) / W * w, (y2 - y1) / H * h
                radius = max(1, int(gaussian_radius(bh, bw, 0.7)))
                u, vv = (float(t) for t in cam_gt["centers_2d"][j])
                draw_gaussian(target[i * v + int(cam_gt["view"][j]), int(cam_gt["labels"][j])],
                              u / W * w, vv / H * h, radius)
        return torch.from_numpy(target)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(self, out: dict[str, Tensor]) -> list[LidarBoxes]:
        """Final detections per sample, in the LiDAR frame, best first."""
        cfg = self.config
        results = []
        scores_all = out["logits"].sigmoid()
        for i in range(scores_all.shape[0]):
            scores, labels = scores_all[i].max(-1)
            keep = scores >= cfg.score_threshold
            order = torch.argsort(scores[keep], descending=True)[: cfg.max_detections]
            index = torch.nonzero(keep).squeeze(1)[order]
            centers, sizes, yaws, vels = self.coder.decode(out["code"][i][index].double())
            labels_np = labels[index].cpu().numpy()
            vel_np = vels.cpu().numpy()
            results.append(LidarBoxes(
                centers=centers.cpu().numpy(), sizes=sizes.cpu().numpy(),
                yaws=yaws.cpu().numpy(), velocities=vel_np, labels=labels_np,
                attributes=attributes_from_velocity(labels_np, vel_np),
                scores=scores[index].double().cpu().numpy()))
        return results


def attributes_from_velocity(labels: np.ndarray, velocities: np.ndarray) -> np.ndarray:
    """``[N]`` attribute indices: the class's moving attribute above 0.2 m/s, its most
    frequent one otherwise (mmdet3d's rule for nuScenes)."""
    speed = np.linalg.norm(velocities.reshape(-1, 2), axis=1)
    out = np.empty(len(labels), np.int64)
    for i, label in enumerate(labels):
        name = DETECTION_CLASSES[int(label)]
        attribute = DEFAULT_ATTRIBUTE[name]
        if speed[i] > MOVING_SPEED:
            attribute = {"car": "vehicle.moving", "truck": "vehicle.moving",
                         "bus": "vehicle.moving", "trailer": "vehicle.moving",
                         "construction_vehicle": "vehicle.moving",
                         "bicycle": "cycle.with_rider", "motorcycle": "cycle.with_rider",
                         "pedestrian": "pedestrian.moving"}.get(name, attribute)
        elif name in ("bicycle", "motorcycle"):
            attribute = "cycle.without_rider"
        elif name == "pedestrian":
            attribute = "pedestrian.standing"
        out[i] = ATTRIBUTES.index(attribute)
    return out
