"""RDG-GS components against analytic references: the relative depth losses, prior
refinement (scale/shift recovery, hole filling, local correction), monocular alignment
through a fake network, adaptive sampling, the ablation switches and bad inputs."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from geometry.errors import UserError
from reconstruction.engine.config import TrainConfig
from reconstruction.engine.losses import default_loss_terms
from reconstruction.engine.trainer import GaussianTrainer, TrainData
from reconstruction.gaussians import GaussianScene
from reconstruction.rdggs.config import RDGGSConfig
from reconstruction.rdggs.losses import depth_image_loss, patch_pearson_loss
from reconstruction.rdggs.method import AdaptiveSampling, RelativeDepthLoss
from reconstruction.rdggs.priors import (
    DepthPriors,
    DepthSamples,
    align_inverse_depth,
    build_priors,
    fill_holes,
    fit_scale_shift,
    project_points,
    refine_prior,
)

W, H, F = 64, 48, 60.0
K = torch.tensor([[F, 0.0, W / 2], [0.0, F, H / 2], [0.0, 0.0, 1.0]])


def _surface(seed: int = 0) -> torch.Tensor:
    """A smooth, non-planar depth map ``[H, W]`` between about 1.5 and 3."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    return 2.2 + 0.4 * torch.sin(2.0 * xs + seed) + 0.3 * ys ** 2


# ------------------------------------------------------------------------- losses


def test_pearson_loss_is_zero_for_scale_and_shift_and_positive_otherwise():
    render = _surface().requires_grad_(True)
    valid = torch.ones(H, W, dtype=torch.bool)
    valid[:5, :7] = False
    for size in (8, 16, max(H, W)):
        loss, patches = patch_pearson_loss(render, 3.7 * render.detach() + 0.9, valid, size)
        assert patches > 0
        # float32 sums over <= 3072 pixels: 1 - corr is exact to about 1e-6.
        assert abs(loss.item()) < 1e-5, size
        # Another shape: the render plus an independent texture of comparable variation.
        other = render.detach() + 0.5 * torch.rand(H, W, generator=torch.Generator()
                                                     .manual_seed(size))
        loss_other, _ = patch_pearson_loss(render, other, valid, size)
        assert float(loss_other) > 1e-2, size
        flipped, _ = patch_pearson_loss(render, -render.detach() + 10, valid, size)
        assert float(flipped) == pytest.approx(2.0, abs=1e-4)  # anti-correlated
    # The gradient pulls the render towards the prior's shape.
    prior = _surface(seed=1)
    loss, _ = patch_pearson_loss(render, prior, valid, 16)
    loss.backward()
    stepped = (render - 0.5 * render.grad).detach()
    assert float(patch_pearson_loss(stepped, prior, valid, 16)[0]) < float(loss)


def test_pearson_loss_skips_invalid_and_flat_patches():
    render = _surface().requires_grad_(True)
    none = torch.zeros(H, W, dtype=torch.bool)
    loss, patches = patch_pearson_loss(render, _surface(1), none, 8)
    assert patches == 0 and float(loss) == 0.0
    loss.backward()  # still a graph
    flat = torch.full((H, W), 2.0)
    loss, patches = patch_pearson_loss(render, flat, torch.ones(H, W, dtype=torch.bool), 8)
    assert patches == 0


def test_depth_image_loss_is_scale_free_and_edge_aware():
    depth = _surface()
    image = torch.full((H, W, 3), 0.5)
    valid = torch.ones(H, W, dtype=torch.bool)
    base = float(depth_image_loss(depth, image, valid, 16, 10.0))
    assert base > 0
    assert float(depth_image_loss(5.0 * depth, image, valid, 16, 10.0)) == \
        pytest.approx(base, rel=1e-5)
    # A step in depth costs less where the image has an edge at the same place.
    step = torch.full((H, W), 2.0)
    step[:, W // 2:] = 3.0
    edge = image.clone()
    edge[:, W // 2:] = 1.0
    assert float(depth_image_loss(step, edge, valid, 16, 10.0)) < \
        0.1 * float(depth_image_loss(step, image, valid, 16, 10.0))


# ------------------------------------------------------------------------- priors


def _samples(depth: torch.Tensor, count: int, seed: int = 0) -> DepthSamples:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, H, (count,), generator=g)
    cols = torch.randint(0, W, (count,), generator=g)
    return DepthSamples(rows, cols, depth[rows, cols])


def test_fit_scale_shift_is_exact_and_robust_to_outliers():
    x = torch.linspace(1, 5, 200, dtype=torch.float64)
    y = 2.5 * x - 0.7
    y[::17] += 30.0  # outliers (wrong matches)
    a, b = fit_scale_shift(x, y)
    assert a == pytest.approx(2.5, abs=1e-9) and b == pytest.approx(-0.7, abs=1e-9)


def test_refinement_recovers_a_known_scale_and_shift_and_fills_holes():
    truth = _surface()
    a, b = 1.8, 0.35
    coarse = (truth - b) / a
    holes = torch.zeros(H, W, dtype=torch.bool)
    holes[10:20, 30:45] = True
    coarse[holes] = 0.0
    samples = _samples(truth, 60)
    depth, valid, info = refine_prior(coarse, samples, RDGGSConfig())
    assert info["scale"] == pytest.approx(a, rel=1e-4)
    assert info["shift"] == pytest.approx(b, abs=1e-4)
    assert torch.equal(valid, ~holes)  # the losses use measured pixels only
    assert bool((depth > 0).all())
    known = ~holes
    # Exact affine prior: the local correction has nothing left to correct.
    assert float(((depth - truth).abs() / truth)[known].max()) < 1e-4
    # Holes: push-pull from the surrounding smooth surface, a few percent at most.
    assert float(((depth - truth).abs() / truth)[holes].mean()) < 0.05


def test_local_correction_removes_a_smooth_regional_bias():
    truth = _surface()
    bias = torch.ones(H, W)
    bias[:, W // 2:] = 1.1  # the right half of the prior is 10 % too far
    coarse = truth * bias
    samples = _samples(truth, 400, seed=3)
    config = RDGGSConfig(local_sigma=0.05)
    depth, _, _ = refine_prior(coarse, samples, config)
    before = float(((coarse - truth).abs() / truth).mean())
    after = float(((depth - truth).abs() / truth).mean())
    assert after < 0.5 * before
    no_local = RDGGSConfig(max_local_correction=0.0)
    global_only, _, _ = refine_prior(coarse, samples, no_local)
    assert after < float(((global_only - truth).abs() / truth).mean())


def test_fill_holes_keeps_valid_pixels_and_is_exact_on_constants():
    depth = torch.full((H, W), 3.0)
    valid = torch.rand(H, W, generator=torch.Generator().manual_seed(0)) > 0.9
    out = fill_holes(torch.where(valid, depth, 0.0), valid)
    assert torch.allclose(out, depth, atol=1e-5)


def test_project_points_keeps_the_nearest_point_per_pixel():
    T = torch.eye(4)
    pts = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.5, 0.0, 2.0], [0.0, 0.0, -1.0]])
    rows, cols, z = project_points(pts, K, T, W, H)
    hits = {(int(r), int(c)): float(d) for r, c, d in zip(rows, cols, z, strict=True)}
    assert hits[(H // 2, W // 2)] == pytest.approx(1.0)
    assert hits[(H // 2, W // 2 + 15)] == pytest.approx(2.0)  # 0.5 / 2 * 60 = 15 px
    assert len(hits) == 2


def test_align_inverse_depth_recovers_metric_depth():
    truth = _surface()
    inverse = 0.3 / truth + 0.05  # relative inverse depth: unknown scale and shift
    aligned = align_inverse_depth(inverse, _samples(truth, 50), 8)
    assert torch.allclose(aligned, truth, rtol=1e-4)


def _plane_state(depth: float = 2.0) -> dict[str, torch.Tensor]:
    """A fronto-parallel textured wall at z = ``depth`` seen by one camera at the origin."""
    xs = torch.linspace(-1.2, 1.2, 80)
    ys = torch.linspace(-0.9, 0.9, 60)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    pts = torch.cat([grid, torch.full((len(grid), 1), depth)], 1) * depth / 2.0
    return {"init.Ks": K[None].clone(), "init.T_cam_world": torch.eye(4)[None],
            "init.points": pts[::3].clone(), "init.colors": torch.rand(len(pts[::3]), 3),
            "init.sparse_points": pts[::7].clone(), "init.sparse_colors": torch.rand(
                len(pts[::7]), 3)}


def test_refine_switch_changes_the_init_prior():
    state = _plane_state()
    rgbs = [torch.rand(H, W, 3)]
    # Points one pixel wide (radius 0): the projected cloud has holes between them.
    raw = build_priors([], rgbs, state, RDGGSConfig(depth_prior="init", refine_prior=False,
                                                    splat_radius=0), None)
    refined = build_priors([], rgbs, state, RDGGSConfig(depth_prior="init", splat_radius=0),
                           None)
    assert raw.source == refined.source == "init"
    assert 0.2 < float(raw.valid[0].float().mean()) < 0.95  # the projected cloud has holes
    # Filled everywhere (for sampling); the losses use the measured pixels only.
    assert torch.allclose(refined.depth[0], torch.full((H, W), 2.0), rtol=1e-3)
    assert torch.equal(refined.valid[0], raw.valid[0])
    wider = build_priors([], rgbs, state, RDGGSConfig(depth_prior="init", fill_radius=-1,
                                                      splat_radius=0), None)
    assert bool(wider.valid[0].all())


def test_mono_prior_through_a_fake_network(monkeypatch, tmp_path):
    checkpoint = tmp_path / "depth_anything.safetensors"
    checkpoint.write_bytes(b"fake")
    loaded = []

    class FakeMono:
        def predict(self, image: torch.Tensor) -> torch.Tensor:
            assert image.shape == (H, W, 3)
            return torch.full(image.shape[:2], 0.7) / 2.0 + 0.1  # 1/z scaled and shifted

    def load_mono_depth(path, device="cpu"):
        loaded.append(path)
        return FakeMono()

    monkeypatch.setitem(sys.modules, "reconstruction.depth",
                        types.SimpleNamespace(load_mono_depth=load_mono_depth))
    state = _plane_state()
    priors = build_priors([], [torch.rand(H, W, 3)], state,
                          RDGGSConfig(mono_checkpoint=checkpoint), None)
    assert priors.source == "mono" and loaded == [checkpoint]
    # A constant inverse depth aligns by the median scale: the plane's depth, 2.
    assert torch.allclose(priors.depth[0], torch.full((H, W), 2.0), rtol=1e-4)


def test_bad_prior_options_are_one_sentence_user_errors(tmp_path):
    state = _plane_state()
    rgbs = [torch.rand(H, W, 3)]
    cases = [
        (RDGGSConfig(depth_prior="mono"), "needs --rdggs.mono-checkpoint"),
        (RDGGSConfig(mono_checkpoint=tmp_path / "missing.pth"), "is not a file"),
        (RDGGSConfig(depth_prior="init", mono_checkpoint=tmp_path / "x.pth"), "unused"),
    ]
    for config, text in cases:
        with pytest.raises(UserError) as err:
            build_priors([], rgbs, state, config, None)
        message = str(err.value)
        assert text in message and message.count(". ") == 0 and message.endswith(".")


# ------------------------------------------------------------------------- the trainer


def _trainer(rdggs: RDGGSConfig, half: bool = True) -> GaussianTrainer:
    """One camera at the origin, a wall at z = 2 textured in the target; Gaussians cover
    the left half of the view only (``half``)."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(H, W, 3, generator=g) * 0.5 + 0.25
    state = _plane_state()
    pts = state["init.points"]
    if half:
        pts = pts[pts[:, 0] < 0]
    scene = GaussianScene.from_points(pts, torch.rand(len(pts), 3, generator=g),
                                      sh_degree=1, initial_opacity=0.9)
    data = TrainData(images=[target], Ks=K[None].clone(), T_cam_world_init=torch.eye(4)[None],
                     scene_scale=1.0)
    priors = DepthPriors(depth=[torch.full((H, W), 2.0)], valid=[torch.ones(H, W, dtype=bool)],
                         source="init")
    config = TrainConfig(iterations=20, sh_degree=1, max_gaussians=100_000)
    return GaussianTrainer(data, scene, config,
                           loss_terms=[*default_loss_terms(config),
                                       RelativeDepthLoss(rdggs, priors)],
                           strategy=AdaptiveSampling(config, rdggs, priors))


def test_adaptive_sampling_adds_gaussians_where_coverage_is_sparse():
    trainer = _trainer(RDGGSConfig())
    n0 = trainer.num_gaussians
    added = trainer.strategy.adaptive_sample(trainer)
    assert added > 0 and trainer.num_gaussians == n0 + added
    new = trainer.params["means"].detach()[n0:]
    # On the prior (z = 2) and in the uncovered right half of the view (x > 0).
    assert torch.allclose(new[:, 2], torch.full((added,), 2.0), atol=1e-5)
    assert float((new[:, 0] > 0).float().mean()) > 0.9
    # Budget: at most max_sample_fraction of the count per round.
    assert added <= math.ceil(trainer.strategy.rdggs.max_sample_fraction * n0)
    # Covered everywhere: the sparse criterion selects nothing.
    full = _trainer(RDGGSConfig(), half=False)
    rgb, alpha, _, target = full.render(0, 1.0)
    selected, _ = full.strategy.select_tiles(0, rgb, alpha, target)
    assert float(alpha.mean()) > 0.9 and not bool(selected.any())


def test_adaptive_sampling_uses_the_filled_prior_and_skips_views_without_depth():
    trainer = _trainer(RDGGSConfig())
    depth, _ = trainer.strategy.prior_full[0]
    # The losses may use no pixel (all filled, none measured): sampling still places.
    trainer.strategy.prior_full = [(depth, torch.zeros(H, W, dtype=torch.bool))]
    assert trainer.strategy.adaptive_sample(trainer) > 0
    empty = _trainer(RDGGSConfig())
    empty.strategy.prior_full = [(torch.zeros(H, W), torch.zeros(H, W, dtype=torch.bool))]
    n0 = empty.num_gaussians
    assert empty.strategy.adaptive_sample(empty) == 0 and empty.num_gaussians == n0


def test_slow_tiles_need_a_previous_round_that_did_not_improve():
    trainer = _trainer(RDGGSConfig(sparse_alpha=0.0, slow_tiles=True))  # only "slow"
    rgb, alpha, _, target = trainer.render(0, 1.0)
    bad = rgb.clone()  # a target the render matches but for one tile
    bad[:16, :16] = 1.0 - bad[:16, :16]
    first, _ = trainer.strategy.select_tiles(0, rgb, alpha, bad)
    assert not bool(first.any())  # no history yet
    again, _ = trainer.strategy.select_tiles(0, rgb, alpha, bad)
    assert bool(again[0, 0]) and int(again.sum()) == 1
    off = _trainer(RDGGSConfig(sparse_alpha=0.0))  # the default: no slow criterion
    off.strategy.select_tiles(0, rgb, alpha, bad)
    assert not bool(off.strategy.select_tiles(0, rgb, alpha, bad)[0].any())


def test_each_switch_changes_the_training_behaviour():
    on = _trainer(RDGGSConfig())
    off = _trainer(RDGGSConfig(relative_depth=False))
    assert on.render_depth and not off.render_depth
    # Wrong relative depth in the prior (a tilted plane vs the rendered wall) costs.
    tilt = 2.0 + torch.linspace(-0.5, 0.5, W)[None].expand(H, W) * \
        torch.linspace(-1, 1, H)[:, None]
    for trainer in (on, off):
        trainer.loss_terms[-1].prior_full = [(tilt.clone(), torch.ones(H, W, dtype=torch.bool))]
    image, alpha, meta, target = on.render(0, 1.0, depth=True)
    loss_on = float(on.loss(0, image, alpha, meta, target))
    loss_off = float(off.loss(0, image, alpha, meta, target))
    assert loss_on > loss_off + 1e-4
    no_sampling = _trainer(RDGGSConfig(adaptive_sampling=False))
    n0 = no_sampling.num_gaussians
    counts = no_sampling.refine()
    assert "sampled" not in counts and no_sampling.num_gaussians == n0
    with_sampling = _trainer(RDGGSConfig())
    assert with_sampling.refine()["sampled"] > 0


def test_checkpoint_state_round_trips_the_sampling_history():
    trainer = _trainer(RDGGSConfig())
    trainer.strategy.adaptive_sample(trainer)
    tensors, meta = trainer.state_tensors(), trainer.state_meta()
    other = _trainer(RDGGSConfig())
    other.load_state(tensors, meta)
    assert other.strategy.sampled == trainer.strategy.sampled
    assert other.num_gaussians == trainer.num_gaussians
    assert torch.equal(other.strategy.tile_error[0], trainer.strategy.tile_error[0])


def test_mono_prior_with_the_real_tiny_network(tmp_path):
    """The Depth-Anything-V2 architecture of reconstruction.depth with tiny random weights:
    the prior path loads it, runs it and aligns its output to the sparse depths."""
    from reconstruction.depth.depth_anything import DepthAnythingV2, preset_config
    from reconstruction.depth.mono import save_mono_depth

    torch.manual_seed(0)
    path = save_mono_depth(DepthAnythingV2(preset_config("tiny")), tmp_path / "tiny.safetensors")
    state = _plane_state()
    priors = build_priors([], [torch.rand(H, W, 3)], state,
                          RDGGSConfig(mono_checkpoint=path, refine_prior=False), None)
    assert priors.source == "mono"
    depth, valid = priors.depth[0], priors.valid[0]
    assert depth.shape == (H, W) and bool(torch.isfinite(depth).all())
    assert bool(valid.any()) and bool((depth[valid] > 0).all())
    # Aligned to the wall's sparse depths: the median depth is the wall's (z = 2) within the
    # spread a random network's output leaves after a scale/shift fit.
    assert 1.0 < float(depth[valid].median()) < 4.0


def _photo(name: str) -> types.SimpleNamespace:
    from pathlib import Path

    return types.SimpleNamespace(path=Path("/photos") / name, width=W, height=H)


def test_file_priors_are_read_per_photo_resized_and_aligned(tmp_path):
    import numpy as np

    folder = tmp_path / "priors"
    folder.mkdir()
    # Twice the photo's size, another scale and shift than the scene's (the wall is at
    # z = 2), a hole in the top-left corner and a NaN.
    depth = np.full((2 * H, 2 * W), 3.0 * 2.0 + 0.5, np.float32)
    depth[:20, :20] = 0.0
    depth[30, 30] = np.nan
    np.save(folder / "view_a.npy", depth)
    priors = build_priors([_photo("view_a.png")], [torch.rand(H, W, 3)], _plane_state(),
                          RDGGSConfig(depth_prior="files", prior_dir=folder), None)
    assert priors.source == "files"
    assert torch.allclose(priors.depth[0], torch.full((H, W), 2.0), rtol=1e-4)
    assert not bool(priors.valid[0][:10, :10].any()) and bool(priors.valid[0][20:, 20:].all())
    raw = build_priors([_photo("view_a.png")], [torch.rand(H, W, 3)], _plane_state(),
                       RDGGSConfig(depth_prior="files", prior_dir=folder, refine_prior=False),
                       None)
    assert torch.allclose(raw.depth[0][20:, 20:], torch.full((H - 20, W - 20), 6.5))


def test_bad_file_priors_are_one_sentence_user_errors(tmp_path):
    import numpy as np

    folder = tmp_path / "priors"
    folder.mkdir()
    np.save(folder / "flat.npy", np.ones(5, np.float32))
    (folder / "junk.npy").write_bytes(b"not numpy")
    rgbs = [torch.rand(H, W, 3)]
    cases = [
        ("view.png", RDGGSConfig(depth_prior="files"), "go together"),
        ("view.png", RDGGSConfig(prior_dir=folder), "go together"),
        ("view.png", RDGGSConfig(depth_prior="files", prior_dir=tmp_path / "nope"),
         "is not a folder"),
        ("view.png", RDGGSConfig(depth_prior="files", prior_dir=folder), "no depth map for"),
        ("flat.png", RDGGSConfig(depth_prior="files", prior_dir=folder), "2-D array"),
        ("junk.png", RDGGSConfig(depth_prior="files", prior_dir=folder), "unreadable"),
    ]
    for name, config, text in cases:
        with pytest.raises(UserError) as err:
            build_priors([_photo(name)], rgbs, _plane_state(), config, None)
        message = str(err.value)
        assert text in message and message.endswith("."), message
