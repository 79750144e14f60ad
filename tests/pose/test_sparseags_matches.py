"""SparseAGS's feature-match terms: Sampson distances, the epipolar loss, view costs, and
matching real photos of a generated scene."""

from __future__ import annotations

import math

import pytest
import torch

from geometry.se3 import invert_T, se3_exp
from geometry.so3 import axis_angle_to_matrix
from pose.camera.sparseags.matches import (
    EpipolarLoss,
    Matches,
    epipolar_search,
    orbit_hypotheses,
    polish_poses,
    sampson_sq,
    view_residual,
)

K = torch.tensor([[100.0, 0.0, 64.0], [0.0, 100.0, 48.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _look_at(eye: torch.Tensor) -> torch.Tensor:
    """``T_world_cam`` of a camera at ``eye`` looking at the origin (OpenCV, y down)."""
    z = -eye / eye.norm()
    x = torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.stack([x, y, z], 1)
    T[:3, 3] = eye
    return T


def _project(X: torch.Tensor, T_world_cam: torch.Tensor) -> torch.Tensor:
    """Pixels of the points ``X [N, 3]`` in a camera of intrinsics ``K`` at ``T_world_cam``."""
    p = (X - T_world_cam[:3, 3]) @ T_world_cam[:3, :3]
    return p[:, :2] / p[:, 2:] * 100.0 + torch.tensor([64.0, 48.0], dtype=torch.float64)


def _scene(views: int = 3, points: int = 200, seed: int = 0):
    """Cameras on a ring looking at random points in a ball (not planar), and the exact
    pixel matches of every pair."""
    g = torch.Generator().manual_seed(seed)
    X = (torch.rand(points, 3, generator=g, dtype=torch.float64) - 0.5) * 0.8
    T = torch.stack([_look_at(torch.tensor([3 * math.cos(a), 3 * math.sin(a), 0.8],
                                           dtype=torch.float64))
                     for a in torch.linspace(0, 1.2, views).tolist()])
    pix = [_project(X, T[k]) for k in range(views)]
    pairs = [(i, j, pix[i], pix[j]) for i in range(views) for j in range(i + 1, views)]
    return T, Matches(pairs=pairs, sizes=[(128, 96)] * views)


def _turned(T: torch.Tensor, degrees: float, axis=(0.3, 1.0, 0.2)) -> torch.Tensor:
    out = T.clone()
    a = torch.nn.functional.normalize(torch.tensor(axis, dtype=torch.float64), dim=0)
    out[:3, :3] = axis_angle_to_matrix(a * math.radians(degrees)) @ T[:3, :3]
    return out


def test_sampson_zero_for_exact_matches_and_about_pixels_when_off():
    T, matches = _scene()
    i, j, a, b = matches.pairs[0]
    Tcw = invert_T(T)
    exact = sampson_sq(a, b, K, K, Tcw[i], Tcw[j])
    assert float(exact.max()) < 1e-16
    # Moving view j's points by one pixel gives at most about a pixel (only the part
    # across the epipolar lines counts).
    F_dir = torch.randn(2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    moved = sampson_sq(a, b + F_dir / F_dir.norm(), K, K, Tcw[i], Tcw[j]).sqrt()
    assert 0.05 < float(moved.median()) < 1.01
    # A 2-degree rotation of view j costs several pixels at a 100-pixel focal length.
    turned = invert_T(_turned(T[j], 2.0))
    assert float(sampson_sq(a, b, K, K, Tcw[i], turned).sqrt().median()) > 1.0
    # Batched poses of view i give the per-pose values.
    both = sampson_sq(a, b, K, K, torch.stack([Tcw[i], invert_T(_turned(T[i], 2.0))]), Tcw[j])
    assert both.shape == (2, len(a))
    torch.testing.assert_close(both[0], exact)


def test_view_residual_ranks_poses_and_is_nan_without_matches():
    T, matches = _scene()
    poses = torch.stack([T[2], _turned(T[2], 1.0), _turned(T[2], 10.0), _turned(T[2], 90.0)])
    cost = view_residual(matches, 2, [0, 1], K.expand(3, 3, 3), T, poses, 0.0025)
    assert cost.shape == (4,)
    assert float(cost[0]) < 1e-6
    assert float(cost[0]) < float(cost[1]) < float(cost[2])
    assert float(cost[3]) > 1.0
    lonely = Matches(pairs=[p for p in matches.pairs if 2 not in p[:2]], sizes=matches.sizes)
    assert math.isnan(float(view_residual(lonely, 2, [0, 1], K.expand(3, 3, 3), T, T[2],
                                          0.0025)))


def test_epipolar_search_finds_a_view_turned_about_the_scene():
    # Cameras on a ring about the origin (up +z): view 3 turned 90 degrees about the up
    # axis is found again from the other views' orbits (the nearest 2-3 degrees off),
    # polished to within a degree.
    T, matches = _scene(views=4)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    hypotheses = orbit_hypotheses(T[:3], up, 5.0)
    assert hypotheses.shape == (3 * 71, 4, 4)
    turned = orbit_hypotheses(T[3:], up, 90.0)[0]  # the 90-degree orbit of the truth
    assert float((turned[:3, 3] - T[3, :3, 3]).norm()) > 1.0
    found, cost = epipolar_search(matches, 3, [0, 1, 2], K.expand(4, 3, 3), T,
                                  torch.cat((hypotheses, turned[None])), 0.0025)
    R_err = found[:3, :3] @ T[3, :3, :3].T
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(R_err.trace()) - 1) / 2))))
    assert angle < 1.0, angle
    assert cost < 0.5
    with pytest.raises(ValueError, match="shares no match"):
        epipolar_search(Matches(pairs=[], sizes=matches.sizes), 3, [0, 1, 2],
                        K.expand(4, 3, 3), T, hypotheses, 0.0025)


def _angle_deg(R: torch.Tensor) -> float:
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(R.trace()) - 1) / 2))))


def test_polish_poses_brings_every_rotated_view_back_and_keeps_the_first():
    T, matches = _scene(views=4)
    start = T.clone()
    for k, axis in ((1, (1.0, 0.2, 0.0)), (2, (0.0, 1.0, 0.3)), (3, (0.2, 0.0, 1.0))):
        start[k] = _turned(T[k], 3.0, axis)
    polished = polish_poses(matches, K.expand(4, 3, 3), start, [0, 1, 2, 3], 0.0025)
    torch.testing.assert_close(polished[0], T[0])
    for k in (1, 2, 3):
        angle = _angle_deg(polished[k, :3, :3] @ T[k, :3, :3].T)
        assert angle < 0.01, (k, angle)  # from 3 degrees
    # Views outside ``rows`` keep their poses; no iterations, no change.
    kept = polish_poses(matches, K.expand(4, 3, 3), start, [0, 1, 2], 0.0025, iterations=50)
    torch.testing.assert_close(kept[3], start[3])
    torch.testing.assert_close(polish_poses(matches, K.expand(4, 3, 3), start, [0, 1, 2, 3],
                                            0.0025, iterations=0), start)


def test_polish_poses_trims_coherent_wrong_matches():
    g = torch.Generator().manual_seed(3)
    T, matches = _scene(views=4, points=200)
    # Pair (1, 2) gets 150 more matches that agree with a wrong geometry (view 2 turned by
    # 6 degrees), as repeated structure gives: a robust cost does not discount them.
    extra = (torch.rand(150, 3, generator=g, dtype=torch.float64) - 0.5) * 0.7
    pairs = [(i, j, torch.cat([a, _project(extra, T[1])]),
              torch.cat([b, _project(extra, _turned(T[2], 6.0))])) if (i, j) == (1, 2)
             else (i, j, a, b) for i, j, a, b in matches.pairs]
    bad = Matches(pairs=pairs, sizes=matches.sizes)
    start = T.clone()
    for k, axis in ((1, (1.0, 0.2, 0.0)), (2, (0.0, 1.0, 0.3)), (3, (0.2, 0.0, 1.0))):
        start[k] = _turned(T[k], 1.0, axis)
    Ks = K.expand(4, 3, 3)
    untrimmed = polish_poses(bad, Ks, start, [0, 1, 2, 3], 0.0025, trim=())
    trimmed = polish_poses(bad, Ks, start, [0, 1, 2, 3], 0.0025)
    pulled = max(_angle_deg(untrimmed[k, :3, :3] @ T[k, :3, :3].T) for k in (1, 2, 3))
    kept = max(_angle_deg(trimmed[k, :3, :3] @ T[k, :3, :3].T) for k in (1, 2, 3))
    assert pulled > 0.05 and kept < 0.01, (pulled, kept)


class _Trainer:
    """The trainer attributes the loss reads."""

    class config:  # noqa: N801
        optimise_poses = True
        iterations = 100

    iteration = 0

    def __init__(self, T_cam_world: torch.Tensor) -> None:
        self.twists = torch.zeros(len(T_cam_world), 6, requires_grad=True)
        self.T0 = T_cam_world.float()

    def viewmats(self) -> torch.Tensor:
        return se3_exp(self.twists) @ self.T0


def test_epipolar_loss_is_zero_at_the_truth_and_pulls_a_view_back():
    T, matches = _scene(views=4)
    rows = [0, 1, 2, 3]
    loss = EpipolarLoss(matches, rows, K.expand(4, 3, 3), weight=1.0, sigma_scale=0.0025)
    assert loss.count == sum(len(a) for _, _, a, _ in matches.pairs)
    truth = _Trainer(invert_T(T))
    assert float(loss(truth, 0, None, None, None, None)) < 1e-4
    frozen = _Trainer(invert_T(T))
    frozen.config = type("C", (), {"optimise_poses": False, "iterations": 100})
    assert loss(frozen, 0, None, None, None, None) == 0.0
    # View 3 rotated by 5 degrees: gradient descent on the loss alone brings it back.
    T_off = T.clone()
    T_off[3] = _turned(T[3], 5.0)
    trainer = _Trainer(invert_T(T_off))
    optimiser = torch.optim.Adam([trainer.twists], lr=2e-3)
    start = float(loss(trainer, 0, None, None, None, None))
    for _ in range(300):
        value = loss(trainer, 0, None, None, None, None)
        optimiser.zero_grad()
        value.backward()
        trainer.twists.grad[0] = 0  # the gauge: view 0 stays
        optimiser.step()
    assert float(value) < 0.05 * start
    T_now = invert_T(trainer.viewmats().detach().double())
    R_err = T_now[3, :3, :3] @ T[3, :3, :3].T
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(R_err.trace()) - 1) / 2))))
    assert angle < 1.0, angle
    # Annealing: the wider scale at the start of the fit weighs a 5-degree error more (the
    # cost is nearer quadratic there; scaled to the final scale's units), the final scale
    # the same as without annealing, and the truth nothing.
    annealed = EpipolarLoss(matches, rows, K.expand(4, 3, 3), 1.0, 0.0025, anneal=10.0)
    off = _Trainer(invert_T(T_off))
    assert float(annealed(_Trainer(invert_T(T)), 0, None, None, None, None)) < 1e-4
    wide, final = float(annealed(off, 0, None, None, None, None)), None
    off.iteration = 100
    final = float(annealed(off, 0, None, None, None, None))
    assert final == pytest.approx(start, rel=1e-5) and wide > final
    # Rows renumber the pairs: a loss over views 1 and 3 only sees their pair.
    sub = EpipolarLoss(matches, [1, 3], K.expand(4, 3, 3), 1.0, 0.0025)
    assert [(i, j) for i, j, _, _ in sub.pairs] == [(0, 1)]


def test_find_matches_on_generated_photos_gives_consistent_pixels():
    pytest.importorskip("pycolmap")
    from pose.camera.sparseags.config import MatchConfig
    from pose.camera.sparseags.matches import find_matches
    from reconstruction.images import LoadedImage
    from reconstruction.procedural import SceneConfig, render

    scene = render(SceneConfig(kind="orbit", num_views=3, width=256, height=192,
                               arc_deg=40.0, seed=3, supersample=1))
    images = [LoadedImage(path=__import__("pathlib").Path(f"{k}.png"),
                          rgb=torch.from_numpy(im).float() / 255.0, focal_px=None,
                          camera_key=()) for k, im in enumerate(scene.images)]
    matches = find_matches(images, MatchConfig(max_size=256), threads=1)
    assert matches.sizes == [(256, 192)] * 3
    assert len(matches) > 30
    cams = scene.cameras
    Tcw = invert_T(cams.T_world_cam.double())
    for i, j, a, b in matches.pairs:
        d = sampson_sq(a, b, cams.K[i].double(), cams.K[j].double(), Tcw[i], Tcw[j]).sqrt()
        assert float(d.median()) < 1.0  # the scene's true cameras explain the matches
