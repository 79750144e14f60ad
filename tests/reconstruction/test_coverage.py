"""Dense coverage of the training views (issue 22, parts 1 and 2): depth completion guided
by the photo, the free-space check, seeding at initialisation, coverage sampling during
densification (shared with RDG-GS), determinism, and both switches off."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reconstruction.engine.config import TrainConfig
from reconstruction.engine.losses import default_loss_terms
from reconstruction.engine.strategy import DefaultStrategy
from reconstruction.engine.trainer import GaussianTrainer, TrainData
from reconstruction.gaussians import GaussianScene
from reconstruction.init.config import InitConfig
from reconstruction.init.coverage import (
    complete_depth,
    fill_coverage,
    free_space_violations,
    seeded_scene,
)

W, H, F = 96, 72, 80.0
K = torch.tensor([[F, 0.0, W / 2], [0.0, F, H / 2], [0.0, 0.0, 1.0]])
TILT = 0.3  # the plane z = 3 + TILT * x (world)
HOLE = (0.6, 0.45)  # half extents (x, y) of the textureless square on it


def _pose(cx: float) -> torch.Tensor:
    """``T_cam_world`` of a camera at ``(cx, 0, 0)`` looking along +z."""
    T = torch.eye(4)
    T[0, 3] = -cx
    return T


def _plane_hits(T_cam_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points ``[H, W, 3]`` where the pixel rays hit the plane, and their camera z."""
    centre = -T_cam_world[:3, 3]  # identity rotations
    vs, us = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    a, b = (us - K[0, 2]) / F, (vs - K[1, 2]) / F
    # centre_z + z = 3 + TILT (centre_x + z a)  ->  z (1 - TILT a) = 3 + TILT centre_x - centre_z
    z = (3.0 + TILT * centre[0] - centre[2]) / (1.0 - TILT * a)
    pts = torch.stack([centre[0] + z * a, centre[1] + z * b, centre[2] + z], -1)
    return pts, z


def _texture(pts: torch.Tensor) -> torch.Tensor:
    """Colour ``[..., 3]`` of plane points: random cells outside the hole, grey inside."""
    cell = torch.floor(pts[..., :2] / 0.05).long()
    g = (cell[..., 0] * 73_856_093 ^ cell[..., 1] * 19_349_663) % 1000
    colour = torch.stack([(g % 10) / 10.0, (g // 10 % 10) / 10.0, (g // 100) / 10.0], -1)
    inside = (pts[..., 0].abs() < HOLE[0]) & (pts[..., 1].abs() < HOLE[1])
    return torch.where(inside[..., None], torch.tensor([0.8, 0.8, 0.8]), colour * 0.6 + 0.2)


def _plane_scene() -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The initial cloud (a grid on the plane, none on the textureless square), the two
    photos, ``Ks`` and ``T_cam_world``."""
    xs = torch.arange(-3.0, 3.0, 0.025)  # beyond both views' fields of view
    ys = torch.arange(-2.0, 2.0, 0.025)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    textured = (grid[:, 0].abs() >= HOLE[0]) | (grid[:, 1].abs() >= HOLE[1])
    grid = grid[textured]
    points = torch.cat([grid, 3.0 + TILT * grid[:, :1]], 1)
    T = torch.stack([_pose(0.0), _pose(0.4)])
    photos = [_texture(_plane_hits(T[k])[0]) for k in range(2)]
    return points, photos, K[None].expand(2, 3, 3).clone(), T


# ---------------------------------------------------------------------- depth completion


def test_completion_fills_a_textureless_hole_in_a_plane_close_to_the_truth():
    pts, z_true = _plane_hits(_pose(0.0))
    photo = _texture(pts)
    hole = (pts[..., 0].abs() < HOLE[0]) & (pts[..., 1].abs() < HOLE[1])
    filled = complete_depth(torch.where(hole, 0.0, z_true), ~hole, photo)
    assert torch.equal(filled[~hole], z_true[~hole])  # measured depths are kept
    error = ((filled - z_true).abs() / z_true)[hole]
    # The inverse depth of a plane is affine in the pixel: the pyramid's averages of the
    # hole's rim stay within ~1 % of it (measured 0.3 % mean, 0.9 % worst).
    assert float(error.mean()) < 0.006 and float(error.max()) < 0.02, error.max()


def test_completion_keeps_depth_edges_at_colour_edges():
    # Two surfaces of two colours (depth 1 left of column 48, 3 right of it), measured only
    # near the image sides: the depth must not blend across the colour edge.
    depth = torch.where(torch.arange(W)[None].expand(H, W) < 48, 1.0, 3.0)
    photo = torch.where((torch.arange(W) < 48)[None, :, None], torch.tensor([0.9, 0.2, 0.1]),
                        torch.tensor([0.1, 0.3, 0.9])).expand(H, W, 3)
    known = torch.zeros(H, W, dtype=torch.bool)
    known[:, :8] = known[:, -8:] = True
    filled = complete_depth(torch.where(known, depth, 0.0), known, photo)
    relative = (filled - depth).abs() / depth
    assert float(relative.max()) < 0.05, relative.max()
    blind = complete_depth(torch.where(known, depth, 0.0), known, photo, sigma_colour=100.0)
    assert float(((blind - depth).abs() / depth).max()) > 0.3  # without the photo: blended


def test_completion_of_nothing_and_of_everything():
    photo = torch.rand(H, W, 3)
    assert torch.equal(complete_depth(torch.ones(H, W), torch.zeros(H, W, dtype=torch.bool),
                                      photo), torch.zeros(H, W))
    depth = torch.rand(H, W) + 1
    assert torch.equal(complete_depth(depth, torch.ones(H, W, dtype=torch.bool), photo), depth)


# ---------------------------------------------------------------------- the free-space check


def test_free_space_check_rejects_a_depth_in_front_of_an_observed_surface():
    Ks = K[None].expand(2, 3, 3).clone()
    T = torch.stack([_pose(0.0), _pose(0.4)])
    observed = [torch.zeros(H, W), torch.full((H, W), 3.0)]  # view 1 sees a wall at z = 3
    ray = torch.tensor([0.1, 0.05, 1.0])  # a pixel ray of view 0 that view 1 sees
    points = torch.stack([ray * 1.5, ray * 2.85, ray * 3.0, ray * 6.0,
                          torch.tensor([50.0, 0.0, 3.0])])  # the last one outside view 1
    bad = free_space_violations(points, 0, Ks, T, observed, margin=0.1)
    # 1.5 m: in the free space view 1 looks through to its wall; 2.85 m: within the 10 %
    # margin; on and behind the wall: consistent; outside the view: unchecked.
    assert bad.tolist() == [True, False, False, False, False]
    assert not bool(free_space_violations(points, 1, Ks, T, observed, 0.1).any())  # itself


# ---------------------------------------------------------------------- seeding at init


def test_fill_reaches_full_coverage_with_seeds_on_the_true_surface():
    points, photos, Ks, T = _plane_scene()
    fill = fill_coverage(points, photos, Ks, T, InitConfig())
    assert max(fill.coverage_before) < 0.92  # the textureless square is a hole
    assert min(fill.coverage_after) >= 0.99
    assert fill.stats["fill_points"] == len(fill.points) > 20
    assert fill.stats["fill_rejected"] == 0
    # On the plane and on the square. The hole here is the coverage hole, rimmed by covered
    # pixels of the square's own colour: the pyramid fills it mostly from that rim and
    # flattens the plane's slope toward the middle (measured 1.9 % mean, 4.7 % worst; from
    # exact rim depths 1.6 % / 4.4 %, so this is the completion, not the rendered depths).
    z_plane = 3.0 + TILT * fill.points[:, 0]
    error = (fill.points[:, 2] - z_plane).abs() / z_plane
    assert float(error.mean()) < 0.03 and float(error.max()) < 0.06, error
    inside = (fill.points[:, 0].abs() < HOLE[0] + 0.1) & (fill.points[:, 1].abs() < HOLE[1] + 0.1)
    assert float(inside.float().mean()) > 0.9
    # Colour from the photo (the square is grey 0.8), size from the pixel footprint.
    assert torch.allclose(fill.colors[inside].median(0).values, torch.full((3,), 0.8),
                          atol=0.02)
    stride = fill.stats["fill_stride"]
    footprint = InitConfig().fill_scale * stride * fill.points[:, 2] / F
    assert torch.allclose(fill.scales, footprint, rtol=0.05)
    # The view filled second sees the first one's seeds: the square is seeded about once.
    square_px = (2 * HOLE[0] * F / 3.0) * (2 * HOLE[1] * F / 3.0)
    assert len(fill.points) < 1.6 * square_px / stride**2


def test_fill_is_deterministic_and_respects_its_budget():
    points, photos, Ks, T = _plane_scene()
    a = fill_coverage(points, photos, Ks, T, InitConfig())
    b = fill_coverage(points, photos, Ks, T, InitConfig())
    assert torch.equal(a.points, b.points) and torch.equal(a.scales, b.scales)
    small = fill_coverage(points, photos, Ks, T, InitConfig(fill_max_points=40))
    assert small.stats["fill_stride"] > a.stats["fill_stride"]
    assert len(small.points) <= 1.5 * 40  # the stride is set from the hole's pixel count
    measured = fill_coverage(points, photos, Ks, T, InitConfig(), seed_fill=False)
    assert len(measured.points) == 0 and measured.coverage_after == measured.coverage_before


def test_fill_pushes_seeds_out_of_another_views_free_space(monkeypatch):
    from reconstruction.init import coverage

    points, photos, Ks, T = _plane_scene()
    real = coverage.render_coverage

    observed_1 = _plane_hits(T[1])[1] * 1.3

    def further(means, scales, K_, T_, width, height):
        """View 1 observes the whole plane, 30 % further away than it is."""
        alpha, depth = real(means, scales, K_, T_, width, height)
        if torch.equal(T_, T[1]) and len(means) == len(points):
            return torch.ones(H, W), observed_1
        return alpha, depth

    monkeypatch.setattr(coverage, "render_coverage", further)
    fill = fill_coverage(points, photos, Ks, T, InitConfig())
    # View 0's seeds on the true plane would hide what view 1 observes: they go back along
    # their rays until they no longer do (by 1.25 here: the check's margin is 10 %).
    assert fill.stats["fill_pushed_back"] == len(fill.points) > 20
    assert min(fill.coverage_after) >= 0.99
    observed = [torch.zeros(H, W), observed_1]
    assert not bool(free_space_violations(fill.points, 0, Ks, T, observed, 0.1).any())
    z0 = fill.points[:, 2]  # camera 0 is the world frame
    assert torch.allclose(z0, 1.25 * (3.0 + TILT * fill.points[:, 0] / 1.25), rtol=0.06)
    monkeypatch.undo()
    plain = fill_coverage(points, photos, Ks, T, InitConfig())
    assert bool(free_space_violations(plain.points, 0, Ks, T, observed, 0.1).all())


def test_pixels_of_the_background_colour_need_no_seed():
    points, photos, Ks, T = _plane_scene()
    grey = (0.8, 0.8, 0.8)  # the textureless square's colour, as if it were the backdrop
    fill = fill_coverage(points, photos, Ks, T, InitConfig(), background=grey)
    assert len(fill.points) == 0 and min(fill.coverage_after) >= 0.99
    assert fill.coverage_before == fill.coverage_after
    black = fill_coverage(points, photos, Ks, T, InitConfig(), background=(0.0, 0.0, 0.0))
    assert len(black.points) > 20  # nothing here is black


def test_seeded_scene_appends_gaussians_with_their_own_opacity_and_size():
    points, photos, Ks, T = _plane_scene()
    scene = GaussianScene.from_points(points[:50], torch.rand(50, 3), sh_degree=1,
                                      initial_opacity=0.5)
    fill = fill_coverage(points, photos, Ks, T, InitConfig())
    both = seeded_scene(scene, fill.points, fill.colors, fill.scales, 0.3)
    assert both.num_gaussians == 50 + len(fill.points)
    assert torch.equal(both.means[:50], scene.means)
    assert torch.allclose(both.opacities[50:], torch.full((len(fill.points),), 0.3))
    assert torch.allclose(both.scales[50:, 0], fill.scales, rtol=1e-5)
    # The cloud's Gaussians are no larger than a seed at their depth (isolated points' kNN
    # sizes would blur over the seeds).
    z = points[:, 2]  # both cameras look along +z from z = 0
    assert torch.allclose(fill.scale_cap, InitConfig().fill_scale * InitConfig().fill_stride
                          * z / F, rtol=1e-4)
    big = GaussianScene.from_points(points[:50], torch.rand(50, 3), sh_degree=1,
                                    initial_opacity=0.5)
    big.log_scales[:] = 3.0
    capped = seeded_scene(big, fill.points, fill.colors, fill.scales, 0.3,
                          fill.scale_cap[:50])
    assert torch.allclose(capped.scales[:50, 0], fill.scale_cap[:50], rtol=1e-5)


# ---------------------------------------------------------------------- densification


def _trainer(config: TrainConfig) -> GaussianTrainer:
    """One camera at the origin, a textured wall at z = 2 in the target; Gaussians on its
    left half only."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(H, W, 3, generator=g) * 0.5 + 0.25
    xs = torch.linspace(-1.2, 0.0, 60)
    ys = torch.linspace(-0.9, 0.9, 90)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    pts = torch.cat([grid, torch.full((len(grid), 1), 2.0)], 1)
    scene = GaussianScene.from_points(pts, torch.rand(len(pts), 3, generator=g), sh_degree=1,
                                      initial_opacity=0.9)
    data = TrainData(images=[target], Ks=K[None].clone(), T_cam_world_init=torch.eye(4)[None],
                     scene_scale=1.0)
    return GaussianTrainer(data, scene, config, loss_terms=default_loss_terms(config),
                           strategy=DefaultStrategy(config))


def test_coverage_densify_adds_gaussians_where_the_alpha_stays_low():
    config = TrainConfig(iterations=20, sh_degree=1, max_gaussians=100_000)
    trainer = _trainer(config)
    n0 = trainer.num_gaussians
    with torch.no_grad():
        _, alpha, _, _ = trainer.render(0)
    assert float(alpha[:, W // 2 + 8:].mean()) < 0.1  # the right half is empty
    added = trainer.strategy.coverage_sample(trainer)
    assert 0 < added <= math.ceil(config.coverage_max_fraction * n0)
    new = trainer.params["means"].detach()[n0:]
    # In the empty right half, at the wall's depth completed from the rendered left half.
    assert float((new[:, 0] > 0).float().mean()) > 0.9
    assert torch.allclose(new[:, 2], torch.full((added,), 2.0), rtol=0.03)
    assert torch.allclose(torch.sigmoid(trainer.params["logit_opacities"].detach()[n0:]),
                          torch.full((added,), config.coverage_opacity))
    # Same inputs, same Gaussians.
    again = _trainer(config)
    assert again.strategy.coverage_sample(again) == added
    assert torch.equal(again.params["means"].detach()[n0:], new)


def test_coverage_densify_skips_regions_the_background_already_explains():
    config = TrainConfig(iterations=20, sh_degree=1, max_gaussians=100_000)
    trainer = _trainer(config)
    n0 = trainer.num_gaussians
    trainer.targets[0][:, 64:] = 0.0  # the background colour (black) where nothing is
    added = trainer.strategy.coverage_sample(trainer)
    # Only the tiles next to the Gaussians' edge (columns 48-63), which their spill
    # brightens, get any: the black ones beyond match the background.
    u = F * trainer.params["means"].detach()[n0:, 0] / 2.0 + W / 2
    assert added <= 5 * 4 and bool((u < 64).all())  # 5 tiles of 4 samples


def test_refine_runs_coverage_sampling_only_when_switched_on():
    on = _trainer(TrainConfig(iterations=20, sh_degree=1, max_gaussians=100_000))
    counts = on.refine()
    assert counts["coverage"] > 0
    assert on.strategy.metrics()["coverage_densify_added"] == counts["coverage"]
    off_config = TrainConfig(iterations=20, sh_degree=1, max_gaussians=100_000,
                             coverage_densify=False)
    off = _trainer(off_config)
    old = _trainer(off_config)
    counts_off = off.refine()
    assert "coverage" not in counts_off and off.strategy.metrics() == {}
    # Off: exactly the gradient densification and pruning of before.
    assert counts_off == old.strategy.densify_and_prune(old)
    for name in ("means", "log_scales", "logit_opacities"):
        assert torch.equal(off.params[name], old.params[name])


# ---------------------------------------------------------------------- recon fit


@pytest.fixture(scope="module")
def textureless_photos(tmp_path_factory):
    from reconstruction.procedural import SceneConfig, render, write_photos

    folder = tmp_path_factory.mktemp("coverage") / "images"
    generated = render(SceneConfig(kind="arc", num_views=3, width=160, height=120, seed=2,
                                   textureless=1.0))
    write_photos(generated, folder)
    return folder


def test_fit_reports_coverage_and_switches_off_to_the_old_initialisation(
        textureless_photos, tmp_path, run_recon):
    common = ["--images", str(textureless_photos), "--iterations", "10", "--max-size", "160",
              "--train.checkpoint-every", "0", "--quiet", "--threads", "1"]
    # Without stereo's nearest-depth guesses (--init-options.stereo.fill-stride 0) the
    # textureless boxes are holes that the seeds fill.
    code, err = run_recon("fit", *common, "--out", str(tmp_path / "on"),
                          "--init-options.stereo.fill-stride", "0")
    assert code == 0, err
    on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert on["init_stats"]["fill_points"] == 0
    assert on["coverage_before_fill"] < 0.95 < on["coverage_after_fill"]
    assert on["coverage_after_fill"] >= 0.99
    assert len(on["coverage_per_view"]) == 3
    assert on["coverage_fill"]["fill_points"] > 0
    assert on["num_gaussians"] >= on["initial_gaussians"]
    code, err = run_recon("fit", *common, "--out", str(tmp_path / "off"),
                          "--init-options.no-fill-coverage", "--train.no-coverage-densify")
    assert code == 0, err
    off = json.loads((tmp_path / "off" / "metrics.json").read_text())
    assert off["coverage_after_fill"] == off["coverage_before_fill"]
    assert off["coverage_fill"]["fill_points"] == 0
    assert "coverage_densify_added" not in off
    assert off["initial_gaussians"] == off["init_stats"]["sparse_points"] + \
        off["init_stats"]["dense_points"] + off["init_stats"]["fill_points"]
