"""ShAPO's octree surface points, meshes and test-time refinement, on analytic SDFs."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pose.object.shapo.refine import ObjectState, RefineConfig, depth_to_surface, refine_object
from pose.object.shapo.surface import (
    dense_surface_points,
    mesh_from_sdf,
    octree_surface_points,
    write_mesh_ply,
)

AXES = torch.tensor([0.3, 0.2, 0.12])


class EllipsoidPrior(nn.Module):
    """A stand-in for the learned priors: an ellipsoid whose size is ``1 + z[0]``; its
    colour is ``sigmoid(z_app[:3])`` everywhere."""

    def sdf(self, z, x):
        a = AXES * (1 + z[..., :1])
        k0 = (x / a).norm(dim=-1)
        k1 = (x / a**2).norm(dim=-1).clamp_min(1e-9)
        return k0 * (k0 - 1) / k1  # Inigo Quilez's ellipsoid bound

    def color(self, z_app, z_shape, x):
        return torch.sigmoid(z_app[..., None, :3]).expand(*x.shape[:-1], 3)


def sphere(x):
    return x.norm(dim=-1) - 0.3


def test_octree_points_lie_on_the_surface_and_cover_it():
    pts = octree_surface_points(sphere, depth=4)
    assert (pts.norm(dim=-1) - 0.3).abs().max() < 1e-5
    # cover the sphere: every direction has a point within 3 cells' angle
    dirs = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator()
                                                     .manual_seed(0)), dim=-1)
    cos = (dirs @ (pts / pts.norm(dim=-1, keepdim=True)).T).max(1).values
    assert cos.min() > math.cos(3 * 1.1 / 128 / 0.3)
    # the same cells as the dense grid of the same resolution, far fewer evaluations
    dense = dense_surface_points(sphere, 128)
    assert abs(len(pts) - len(dense)) <= 0.02 * len(dense)


def test_mesh_of_a_sphere(tmp_path):
    verts, faces = mesh_from_sdf(sphere, res=40)
    r = np.linalg.norm(verts, axis=-1)
    assert np.abs(r - 0.3).max() < 0.01 and len(faces) > 500
    write_mesh_ply(tmp_path / "m.ply", verts, faces, np.full_like(verts, 0.5))
    import trimesh

    mesh = trimesh.load(tmp_path / "m.ply")
    assert len(mesh.faces) == len(faces)
    assert mesh.is_watertight


def _rot(axis, deg):
    from geometry.so3 import axis_angle_to_matrix

    return axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float32) * math.radians(deg))


def test_refinement_recovers_pose_scale_shape_and_colour():
    prior = EllipsoidPrior()
    true_R, true_t, true_s, true_z = _rot([0, 1, 0], 30), torch.tensor([0.05, -0.02, 0.8]), \
        0.25, torch.tensor([0.1])
    # observed: the camera-facing half of the true surface
    surf = octree_surface_points(lambda x: prior.sdf(true_z, x), depth=5)
    cam = true_s * surf @ true_R.T + true_t
    normals = cam - true_t
    seen = (normals * cam).sum(-1) < 0
    obs = cam[seen]
    colour = torch.tensor([0.8, 0.2, 0.4]).expand(len(obs), 3)
    init = ObjectState(R=true_R @ _rot([0.3, 1, 0.2], 8), t=true_t + torch.tensor(
        [0.015, 0.01, -0.02]), scale=true_s * 1.12, z_shape=torch.zeros(1),
        z_app=torch.zeros(3))
    before = depth_to_surface(prior, init, obs)
    config = RefineConfig(iterations=100, max_points=400, surface_points=800, seed=1)
    out = refine_object(prior, obs, colour, init, config)
    after = depth_to_surface(prior, out, obs)
    assert after < 0.25 * before and after < 0.002
    assert torch.linalg.norm(out.t - true_t) < 0.006
    cos = float(((out.R.T @ true_R).trace() - 1) / 2)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    assert angle < 3.0
    # scale and shape trade off (s * (1 + z)); their product is the ellipsoid's size
    assert abs(out.scale * (1 + float(out.z_shape[0])) - true_s * 1.1) < 0.01
    np.testing.assert_allclose(out.size.numpy(), (2 * true_s * 1.1 * AXES).numpy(), rtol=0.05)
    np.testing.assert_allclose(torch.sigmoid(out.z_app).numpy(), [0.8, 0.2, 0.4], atol=0.05)


def test_yaw_search_recovers_a_turned_start():
    from pose.object.shapo.refine import best_yaw, sdf_distance

    prior = EllipsoidPrior()
    true_R, true_t, s, z = _rot([0, 1, 0], 20), torch.tensor([0.0, 0.0, 0.7]), 0.2, \
        torch.zeros(1)
    surf = octree_surface_points(lambda x: prior.sdf(z, x), depth=4)
    obs = s * surf @ true_R.T + true_t
    truth = ObjectState(R=true_R, t=true_t, scale=s, z_shape=z, z_app=torch.zeros(3))
    assert sdf_distance(prior, truth, obs) < 1e-4
    start = ObjectState(R=true_R @ _rot([0, 1, 0], 95), t=true_t, scale=s, z_shape=z,
                        z_app=torch.zeros(3))
    assert sdf_distance(prior, start, obs) > 0.01
    best = best_yaw(prior, obs, start, 12)
    # the ellipsoid is symmetric under a half turn about y: 0 or 180 degrees off, up to the
    # 30-degree grid (95 -> 5 degrees off the nearest hypothesis)
    cos = float(((best.R.T @ true_R).trace() - 1) / 2)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    assert min(angle, 180 - angle) < 5.5
    out = refine_object(prior, obs, None, start, RefineConfig(iterations=40, seed=2),
                        yaw_search=True)
    cos = float(((out.R.T @ true_R).trace() - 1) / 2)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
    assert min(angle, 180 - angle) < 2.0
    no_search = refine_object(prior, obs, None, start, RefineConfig(iterations=40, seed=2))
    assert sdf_distance(prior, no_search, obs) > 2 * sdf_distance(prior, out, obs)


class BoxPrior(nn.Module):
    """A box whose width (x) is ``1 + z[0]`` times ``BOX_HALF[0]``; grey."""

    def sdf(self, z, x):
        half = BOX_HALF * torch.cat([1 + z[..., :1], torch.ones(2)])
        d = x.abs() - half
        return d.clamp_min(0).norm(dim=-1) + d.max(-1).values.clamp_max(0)

    def color(self, z_app, z_shape, x):
        return torch.full((*x.shape[:-1], 3), 0.5)


BOX_HALF = torch.tensor([0.3, 0.2, 0.15])


def _box_view(scale, centre, size=96, focal=120.0, wall=1.5):
    """Depth and mask of the true box (width code 0) seen face-on along its z axis from
    the origin (only its front face is visible), a wall behind it."""
    K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    front = float(centre[2]) - scale * float(BOX_HALF[2])
    x = (u - K[0, 2]) / focal * front - float(centre[0])
    y = (v - K[1, 2]) / focal * front - float(centre[1])
    mask = (x.abs() < scale * BOX_HALF[0]) & (y.abs() < scale * BOX_HALF[1])
    depth = torch.where(mask, torch.tensor(front), torch.tensor(wall))
    return K, mask, depth


def test_silhouette_term_shrinks_a_shape_too_wide_for_the_mask():
    """Face-on, the visible points fit a box of any width at least the true one (they all
    lie on its front face): only the mask tells the width. Without it the start's 40 % too
    wide box stays too wide; with :class:`ImageEvidence` the width comes back."""
    from pose.object.shapo.refine import ImageEvidence, masked_points

    prior, s, t = BoxPrior(), 0.25, torch.tensor([0.0, 0.0, 0.6])
    K, mask, depth = _box_view(s, t)
    points, _ = masked_points(depth, None, K, mask)
    init = ObjectState(R=torch.eye(3), t=t + torch.tensor([0.004, -0.003, 0.005]), scale=s,
                       z_shape=torch.tensor([0.4]), z_app=torch.zeros(3))
    config = RefineConfig(iterations=60, seed=3, lr_shape=0.02)
    true_size = (2 * s * BOX_HALF).numpy()
    plain = refine_object(prior, points, None, init, config)
    assert plain.size[0] > 1.25 * true_size[0]
    out = refine_object(prior, points, None, init, config,
                        evidence=ImageEvidence(K, mask, depth))
    np.testing.assert_allclose(out.size.numpy(), true_size, rtol=0.08)
    assert torch.linalg.norm(out.t - t) < 0.006
    # the silhouette cost itself: zero inside the mask, about the pixel distance outside,
    # zero behind an occluder
    ev = ImageEvidence(K, mask, depth)
    cfg = RefineConfig(silhouette_slack_px=0.0, silhouette_cap_px=100.0)
    edge = s * float(BOX_HALF[0])
    front = 0.6 - s * float(BOX_HALF[2])
    cam = torch.tensor([[0.0, 0.0, front], [edge + 5 * front / 120, 0.0, front],
                        [edge + 5 * 2.0 / 120, 0.0, 2.0]])
    cost = ev.silhouette_cost(cam, cfg)
    assert float(cost[0]) == 0.0 and 4.0 < float(cost[1]) < 6.0 and float(cost[2]) == 0.0
    # the coverage cost: each mask pixel's distance to the nearest projected point
    assert len(ev.mask_uv) == 400 and bool(mask[ev.mask_uv[:, 1].long(),
                                               ev.mask_uv[:, 0].long()].all())
    centre = torch.tensor([[0.0, 0.0, front]])  # projects to (48, 48)
    np.testing.assert_allclose(ev.coverage_cost(centre, cfg).numpy(),
                               (ev.mask_uv - 48.0).norm(dim=-1).numpy(), atol=1e-4)
    capped = ev.coverage_cost(centre, RefineConfig(silhouette_slack_px=1.0,
                                                   silhouette_cap_px=3.0))
    np.testing.assert_allclose(capped.numpy(), ((ev.mask_uv - 48.0).norm(dim=-1) - 1.0)
                               .clamp(0, 3).numpy(), atol=1e-4)
