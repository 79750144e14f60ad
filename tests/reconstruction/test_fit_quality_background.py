"""Issue 22: the colour behind the Gaussians. ``recon fit`` trains over the photos' mean
colour (``TrainConfig.background`` None), so a dark surface cannot stay transparent over a
black background (it then opens holes in held-out views), and the scene model renders over
the same colour."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reconstruction.engine.config import FitConfig, TrainConfig
from reconstruction.engine.trainer import GaussianTrainer, TrainData, training_background
from reconstruction.gaussians import GaussianScene
from reconstruction.procedural import SceneConfig, render, write_photos
from reconstruction.scene_model import GaussianSceneModel

W, H = 24, 18


pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_background_values():
    a = torch.zeros(2, 3, 3)
    a[..., 0] = 1.0  # 6 red pixels
    b = torch.zeros(1, 2, 3)
    b[..., 2] = 0.5  # 2 pixels of half blue
    # Every pixel counts once: red 6/8, blue 0.5 * 2/8.
    assert training_background(None, [a, b]) == (0.75, 0.0, 0.125)
    assert training_background((0.2, 0.4, 0.6), [a, b]) == (0.2, 0.4, 0.6)  # given: kept
    assert training_background(None, [a, b], transparent=True) == (0.0, 0.0, 0.0)
    assert training_background(None, []) == (0.0, 0.0, 0.0)


def _one_dark_gaussian(background: tuple[float, float, float] | None,
                       data_background: tuple[float, float, float] | None) -> GaussianTrainer:
    """A black Gaussian filling the view of a camera whose photo is black."""
    scene = GaussianScene.from_points(torch.tensor([[0.0, 0.0, 2.0]]), torch.zeros(1, 3),
                                      sh_degree=0, initial_opacity=0.5)
    scene.log_scales[:] = math.log(0.5)
    K = torch.tensor([[[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]])
    data = TrainData([torch.zeros(H, W, 3)], K, torch.eye(4)[None], scene_scale=2.0,
                     background=data_background)
    config = TrainConfig(iterations=1, sh_degree=0, optimise_poses=False, refine_every=0,
                         coarse_fraction=0.0, checkpoint_every=0, background=background)
    return GaussianTrainer(data, scene, config)


def _opacity_gradient(trainer: GaussianTrainer) -> float:
    image, alpha, meta, target = trainer.render(0)
    loss = trainer.loss(0, image, alpha, meta, target)
    loss.backward()
    return float(trainer.params["logit_opacities"].grad[0])


def test_a_dark_surface_over_the_mean_colour_must_be_opaque():
    # Over black, a black Gaussian over a black photo is as right transparent as opaque:
    # no gradient keeps it, and another view sees through it.
    black = _one_dark_gaussian(None, None)
    assert black.background.tolist() == [0.0, 0.0, 0.0]  # a trainer built directly
    assert _opacity_gradient(black) == 0.0
    # Over the photos' colour (here grey) the loss falls as its opacity rises.
    grey = _one_dark_gaussian(None, (0.5, 0.5, 0.5))
    assert grey.background.tolist() == [0.5, 0.5, 0.5]
    assert _opacity_gradient(grey) < -1e-3
    # A given colour wins over the fit's choice.
    given = _one_dark_gaussian((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
    assert given.background.tolist() == [0.0, 0.0, 0.0]


def test_fit_renders_over_the_photos_mean_colour(tmp_path):
    from reconstruction.methods import fit

    generated = render(SceneConfig(kind="arc", num_views=3, width=160, height=120, seed=2))
    write_photos(generated, tmp_path / "images")
    config = FitConfig(images=tmp_path / "images", out=tmp_path / "out", iterations=2,
                       max_size=160, quiet=True, threads=1)
    config.train.checkpoint_every = 0
    metrics = fit(config)
    expected = metrics["background"]
    mean = torch.from_numpy(generated.images).double().reshape(-1, 3).mean(0) / 255.0
    assert expected == pytest.approx(mean.tolist(), abs=2e-3)  # the photos' mean colour
    assert min(expected) > 0.1, expected  # not black
    saved = json.loads((tmp_path / "out" / "scene_model.json").read_text())
    assert saved["background"] == pytest.approx(expected, abs=1e-6)
    model = GaussianSceneModel.load(tmp_path / "out")
    assert model.background == pytest.approx(tuple(expected), abs=1e-6)
