"""ShAPO's priors: samples of the generated shapes, auto-decoder training, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geometry.errors import UserError
from pose.object.shapo.priors import (
    PriorConfig,
    PriorTrainConfig,
    make_prior_data,
    surface_points,
)
from pose.object.shapo.shapes import random_shape
from pose.object.shapo.train import load_priors, run_train_priors

TINY = PriorConfig(shape_dim=8, appearance_dim=4, hidden=32, layers=2, appearance_layers=2,
                   fourier=1)
TRAIN = PriorTrainConfig(instances_per_category=1, sdf_samples=256, color_samples=64,
                         batch_instances=6, points=128, steps=60, log_every=10,
                         warmup_steps=5, lr=3e-3, code_lr=3e-3)


def test_surface_points_and_samples_match_the_shape():
    rng = np.random.default_rng(0)
    shape = random_shape("mug", rng)
    pts = surface_points(shape, 300, rng)
    assert pts.shape == (300, 3)
    assert np.abs(shape.sdf_unit(pts)).max() < 1e-4
    assert np.all(np.abs(pts) <= shape.size / shape.diag / 2 + 1e-3)
    data = make_prior_data(PriorTrainConfig(instances_per_category=1, sdf_samples=200,
                                            color_samples=50), categories=("can", "bowl"))
    assert data.points.shape == (2, 200, 3) and data.colors.shape == (2, 50, 3)
    np.testing.assert_allclose(data.sdf[1], data.shapes[1].sdf_unit(
        data.points[1].astype(np.float64)), atol=1e-6)
    np.testing.assert_array_equal(data.instance_class, [4, 2])
    # both signs near the surface, colours from the instance's albedo
    assert (data.sdf < 0).mean() > 0.1 and (data.sdf > 0).mean() > 0.3
    np.testing.assert_allclose(data.colors[0], data.shapes[0].albedo(
        data.color_points[0].astype(np.float64) * data.shapes[0].diag), atol=1e-6)


def test_train_priors_lowers_the_loss_and_round_trips(tmp_path):
    out = tmp_path / "priors"
    result = run_train_priors(out, True, TINY, TRAIN, quiet=True)
    first, last = result.history[0], result.history[-1]
    assert result.step == 60
    assert last["sdf"] < 0.7 * first["sdf"]
    assert last["color"] < first["color"]
    net = load_priors(out)
    assert net.shape_codes.weight.shape == (6, 8)
    np.testing.assert_array_equal(net.instance_class.numpy(), [1, 2, 3, 4, 5, 6])
    zs, za = net.mean_codes("mug")
    torch.testing.assert_close(zs, net.shape_codes.weight[5])
    x = torch.rand(2, 10, 3) - 0.5
    assert net.sdf(zs.expand(2, -1), x).shape == (2, 10)
    rgb = net.color(za, zs, x[0])
    assert rgb.shape == (10, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # an existing checkpoint is not replaced without --overwrite; resume continues
    with pytest.raises(UserError, match="already holds a checkpoint"):
        run_train_priors(out, True, TINY, TRAIN, quiet=True)
    again = run_train_priors(out, True, TINY, TRAIN, resume=True, quiet=True)
    assert again.step == 60 and len(again.history) >= len(result.history)
    with pytest.raises(UserError, match="another shapo_priors configuration"):
        run_train_priors(out, True, TINY, PriorTrainConfig(**{**TRAIN.__dict__, "lr": 1e-3}),
                         resume=True, quiet=True)
    # meshes of the mean codes and one instance (a tiny model may have no surface yet)
    from pose.object.shapo.export import run_mesh

    record = run_mesh(out, tmp_path / "meshes", resolution=16, instances=1, quiet=True)
    assert len(record["meshes"]) == 7 and (tmp_path / "meshes" / "meshes.json").is_file()
    for name, m in record["meshes"].items():
        assert (tmp_path / "meshes" / f"{name}.ply").is_file() == (m["faces"] > 0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="did not write"):
        run_mesh(out, tmp_path / "other", resolution=16, quiet=True)
    with pytest.raises(UserError, match="--synthetic"):
        run_train_priors(tmp_path / "x", False, TINY, TRAIN, quiet=True)
    with pytest.raises(UserError, match="shapo_priors"):
        load_priors(tmp_path)
