"""The generative core (reconstruction.generative): schedules, SDS / C-SDS / multi-view SDS
gradients against closed forms with an oracle noise predictor, partial DDIM, the camera
sampler, the backbone, the distillation loss terms inside the Gaussian trainer (with the
densification strategy fed by the novel views), the oracle denoiser and, marked slow, the
oracle experiment: held-out PSNR at least 2 dB above photometric-only fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from reconstruction.generative import cameras as cams  # noqa: E402
from reconstruction.generative import schedule as sch  # noqa: E402
from reconstruction.generative import sds  # noqa: E402


def test_schedule_matches_diffusers_and_sampler_anneals():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    a = sch.scaled_linear_alphas_cumprod()
    torch.testing.assert_close(a, ref.alphas_cumprod.float())
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(sch.sds_weight(a, t, "sds"), 1 - a[t])
    torch.testing.assert_close(sch.sds_weight(a, t, "snr"), (a[t] * (1 - a[t])).sqrt())
    sampler = sch.TimestepSampler(0.02, 0.98, anneal=True, jitter=0.0)
    g = torch.Generator().manual_seed(0)
    early = sampler.steps(4, 0.0, g)
    late = sampler.steps(4, 1.0, g)
    assert (early == 980).all() and (late == 20).all()  # high noise first
    uniform = sch.TimestepSampler(0.2, 0.4, anneal=False).fraction(1000, 0.5, g)
    assert 0.2 <= float(uniform.min()) and float(uniform.max()) <= 0.4
    assert abs(float(uniform.mean()) - 0.3) < 0.01
    with pytest.raises(ValueError):
        sch.TimestepSampler(0.5, 0.2)


def test_partial_ddim_with_an_exact_noise_predictor_returns_the_target():
    a = sch.scaled_linear_alphas_cumprod()
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 4, 8, 8, generator=g)
    start = torch.randn(2, 4, 8, 8, generator=g)

    def oracle(x_t, t):  # the noise that makes x_t from the target
        at = a[t].view(-1, 1, 1, 1)
        return (x_t - at.sqrt() * target) / (1 - at).sqrt()

    out = sch.partial_ddim(start, oracle, 700, 4, a, g)
    torch.testing.assert_close(out, target, atol=1e-4, rtol=1e-4)
    assert sch.ddim_timesteps(700, 4) == [700, 525, 350, 175]
    assert sch.ddim_timesteps(2, 10) == [2, 1]  # then x_0 is predicted from step 1


class _OracleScore:
    """A ScoreModel in pixel space whose conditional noise prediction points at ``target``
    and whose unconditional one points at ``blur``."""

    def __init__(self, target, blur):
        self.alphas_cumprod = sch.scaled_linear_alphas_cumprod()
        self.target, self.blur = target, blur

    def encode(self, images):
        return images.permute(0, 3, 1, 2) * 2 - 1

    def predict_noise(self, noisy, t, cameras):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        cond = (noisy - a.sqrt() * self.encode(self.target)) / (1 - a).sqrt()
        uncond = (noisy - a.sqrt() * self.encode(self.blur)) / (1 - a).sqrt()
        return sds.NoisePrediction(cond, uncond)


def test_sds_and_csds_gradients_have_their_closed_forms():
    g = torch.Generator().manual_seed(2)
    target, blur = torch.rand(1, 8, 8, 3, generator=g), torch.rand(1, 8, 8, 3, generator=g)
    images = torch.rand(1, 8, 8, 3, generator=g).requires_grad_(True)
    model = _OracleScore(target, blur)
    cameras = sds.NovelCameras(torch.eye(4)[None], torch.eye(3)[None], 8, 8)
    t = torch.tensor([400])
    a = float(model.alphas_cumprod[400])
    k = math.sqrt(a) / math.sqrt(1 - a)
    z, z_t, z_b = (model.encode(x).detach() for x in (images, target, blur))
    for mode, scale, expected in (
            # eps_hat - eps = k (z - z_u) + s k (z_u - z_c): guidance pulls to the target
            ("sds", 1.0, (1 - a) * k * (z - z_t)),
            ("sds", 3.0, (1 - a) * k * ((z - z_b) + 3.0 * (z_b - z_t))),
            ("csds", 3.0, (1 - a) * 3.0 * k * (z_b - z_t))):  # no noise residual
        images.grad = None
        loss = sds.score_distillation(model, images, cameras, t, torch.Generator().manual_seed(3),
                                      guidance_scale=scale, mode=mode)
        (latent_grad,) = torch.autograd.grad(loss, [images])
        # dL/dimages = 2 * dL/dz (z = 2 x - 1), channels last
        torch.testing.assert_close(latent_grad, 2 * expected.permute(0, 2, 3, 1),
                                   atol=1e-4, rtol=1e-4)


def test_multiview_prediction_averages_the_views():
    calls = []

    def per_view(noisy, t, cameras, v):
        calls.append(v)
        return sds.NoisePrediction(noisy * (v + 1), noisy * 0 + v)

    predict = sds.average_over_views(per_view, 3)
    out = predict(torch.ones(1, 2, 2, 2), torch.tensor([1]), None)
    assert calls == [0, 1, 2]
    torch.testing.assert_close(out.cond, torch.full((1, 2, 2, 2), 2.0))
    torch.testing.assert_close(out.uncond, torch.full((1, 2, 2, 2), 1.0))


def _ring(n=3, radius=2.0, elevation=0.3, spread=1.2):
    centre = torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    az = torch.linspace(-spread / 2, spread / 2, n, dtype=torch.float64)
    pos = torch.stack([torch.cos(az) * math.cos(elevation), torch.sin(az) * math.cos(elevation),
                       torch.full_like(az, math.sin(elevation))], -1) * radius + centre
    return cams.look_at(pos, up, centre), centre, up


def test_camera_sampler_orbits_the_object_inside_the_elevation_band():
    T, centre, up = _ring()
    torch.testing.assert_close(cams.axes_centre(T), centre)
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).expand(3, 3, 3)
    band = cams.orbit_band(T, K, [64] * 3, elevation_margin_deg=10.0)
    torch.testing.assert_close(band.up, up)
    assert band.radius == pytest.approx(2.0)
    assert band.elevation_min == pytest.approx(0.3 - math.radians(10))
    assert band.elevation_max == pytest.approx(0.3 + math.radians(10))
    novel = cams.sample_orbit_cameras(band, 400, torch.Generator().manual_seed(4))
    R = novel[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64)
                               .expand(400, 3, 3))
    assert torch.allclose(torch.det(R), torch.ones(400, dtype=torch.float64))
    positions = -(R.transpose(1, 2) @ novel[:, :3, 3:])[..., 0]
    offsets = positions - centre
    torch.testing.assert_close(offsets.norm(dim=-1), torch.full((400,), 2.0, dtype=torch.float64))
    elevation = torch.asin(offsets @ up / 2.0)
    assert float(elevation.min()) >= band.elevation_min - 1e-9
    assert float(elevation.max()) <= band.elevation_max + 1e-9
    azimuth = torch.atan2(offsets[:, 1], offsets[:, 0])
    counts = torch.histc(azimuth, bins=8, min=-math.pi, max=math.pi)
    assert int(counts.min()) > 25  # the full circle, not the inputs' arc
    centre_cam = (novel[:, :3, :3] @ centre + novel[:, :3, 3])  # the centre straight ahead
    assert torch.allclose(centre_cam[:, :2], torch.zeros(400, 2, dtype=torch.float64), atol=1e-9)
    assert (R[:, 1] @ up < 0).all()  # image down points against up
    K2 = cams.square_intrinsics(band, 32)
    assert float(K2[0, 0, 0]) == pytest.approx(50.0 / 64 * 32)


def test_backbone_pixel_space_round_trip_and_prompts():
    from reconstruction.generative.model import DiffusionBackbone

    b = DiffusionBackbone.tiny(pixel_space=True, seed=0)
    x = torch.rand(2, 16, 16, 3)
    torch.testing.assert_close(b.decode(b.encode(x)), x)
    assert torch.equal(b.prompt_embedding(""), torch.zeros(1, 1, 16))
    c1, c2 = b.prompt_embedding("a chair"), b.prompt_embedding("a hydrant")
    assert not torch.equal(c1, c2) and torch.equal(c1, b.prompt_embedding("a chair"))
    eps = b.eps(b.encode(x), torch.tensor([10, 900]), c1)
    assert eps.shape == (2, 3, 16, 16) and torch.isfinite(eps).all()
    assert not any(p.requires_grad for p in b.parameters())
    again = DiffusionBackbone.tiny(pixel_space=True, seed=0)
    assert torch.equal(again.unet.conv_in.weight, b.unet.conv_in.weight)


# ---------------------------------------------------------------------- in the trainer


def _scene_and_trainer(extra_terms, iterations=20):
    from reconstruction.engine.config import TrainConfig
    from reconstruction.engine.losses import default_loss_terms
    from reconstruction.engine.trainer import GaussianTrainer, TrainData
    from reconstruction.gaussians import GaussianScene

    g = torch.Generator().manual_seed(5)
    pts = (torch.rand(400, 3, generator=g) - 0.5) * 0.6
    scene = GaussianScene.from_points(pts, torch.rand(400, 3, generator=g), sh_degree=1,
                                      initial_opacity=0.5)
    T, _, _ = _ring(3, 1.0)
    T = cams.look_at(-(T[:, :3, :3].transpose(1, 2) @ T[:, :3, 3:])[..., 0]
                     - torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64),
                     torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float()
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]])
    images = [torch.rand(32, 32, 3, generator=g) for _ in range(3)]
    config = TrainConfig(iterations=iterations, sh_degree=1, optimise_poses=False,
                         coarse_fraction=0.0, checkpoint_every=0, refine_every=5,
                         refine_start=0.0, refine_stop=1.0)
    data = TrainData(images, K.expand(3, 3, 3).clone(), T, 1.0)
    return GaussianTrainer(data, scene, config, seed=0,
                           loss_terms=[*default_loss_terms(config), *extra_terms])


class _Constant:
    """An ImageDenoiser returning mid-grey (and recording what it saw)."""

    def __init__(self):
        self.seen = []

    def __call__(self, images, cameras, strength, generator):
        self.seen.append((images.shape, cameras.T_cam_world.clone(), strength.clone()))
        return torch.full_like(images, 0.5)


def test_image_distillation_term_trains_the_gaussians_and_feeds_densification():
    from reconstruction.generative.distill import ImageDistillationLoss, NovelViewConfig

    denoiser = _Constant()
    term = ImageDistillationLoss(denoiser, NovelViewConfig(weight=1.0, every=2, batch_size=2,
                                                           render_size=16), 20)
    trainer = _scene_and_trainer([term])
    trainer.iteration = 1
    assert term(trainer, 0, None, None, {}, None) == 0.0
    trainer.iteration = 2
    before = trainer.strategy.grad_count.clone()
    loss = term(trainer, 0, None, None, {}, None)
    loss.backward()
    assert float(trainer.params["sh0"].grad.abs().sum()) > 0
    assert float(trainer.params["means"].grad.abs().sum()) > 0
    # The strategy counted the Gaussians the two novel views see.
    assert float((trainer.strategy.grad_count - before).max()) == 2.0
    shape, T, strength = denoiser.seen[0]
    assert shape == (2, 16, 16, 3) and strength.shape == (2,)
    # Novel cameras look at the (default) centre of the inputs' optical axes.
    centre = cams.axes_centre(trainer.viewmats().detach()).float()
    ahead = T[:, :3, :3] @ centre + T[:, :3, 3]
    assert torch.allclose(ahead[:, :2], torch.zeros(2, 2), atol=1e-4)
    # Mean-grey targets: a full (short) run lowers the novel views' distance to grey.
    trainer = _scene_and_trainer([ImageDistillationLoss(
        _Constant(), NovelViewConfig(weight=10.0, render_size=16), 20)])
    term = trainer.loss_terms[-1]
    trainer.train()
    m = term.metrics()
    assert m["image_distill_steps"] == 20 and m["image_distill_mean_loss"] > 0
    assert term.state_meta()["image_distill_applied"] == 20


def test_image_distillation_adds_lpips_with_a_network():
    from reconstruction.eval.lpips import LPIPS
    from reconstruction.generative.distill import ImageDistillationLoss, NovelViewConfig

    torch.manual_seed(0)
    lpips = LPIPS("alex", widths=(4, 4, 4, 4, 4))
    config = NovelViewConfig(render_size=32, densify=False)
    plain = ImageDistillationLoss(_Constant(), config, 10, l2_weight=1.0)
    both = ImageDistillationLoss(_Constant(), config, 10, l2_weight=1.0, lpips_weight=0.5,
                                 lpips=lpips)
    trainer = _scene_and_trainer([], 10)
    l_plain = plain(trainer, 0, None, None, {}, None)
    l_both = both(trainer, 0, None, None, {}, None)  # same seed: same cameras and render
    rgb, _, _ = plain.render(trainer, plain.sample_cameras(
        trainer, torch.Generator().manual_seed(trainer.seed * 1_000_003 + 29)))
    expected = float(lpips(rgb.detach(), torch.full_like(rgb, 0.5)).mean())
    assert float((l_both - l_plain).detach()) == pytest.approx(0.5 * expected, rel=1e-4)
    l_both.backward()
    assert float(trainer.params["sh0"].grad.abs().sum()) > 0


def test_score_distillation_term_with_the_tiny_backbone():
    from reconstruction.generative.distill import (
        DiffusionImageDenoiser,
        NovelViewConfig,
        ScoreDistillationLoss,
    )
    from reconstruction.generative.model import DiffusionBackbone

    backbone = DiffusionBackbone.tiny(pixel_space=True)

    class Score:
        alphas_cumprod = backbone.alphas_cumprod
        encode = staticmethod(backbone.encode)
        decode = staticmethod(backbone.decode)

        @staticmethod
        def predict_noise(noisy, t, cameras):
            return sds.NoisePrediction(backbone.eps(noisy, t, backbone.prompt_embedding("x")),
                                       backbone.eps(noisy, t, backbone.prompt_embedding("")))

    for mode in ("sds", "csds"):
        term = ScoreDistillationLoss(Score(), NovelViewConfig(render_size=16), 10, 5.0, mode)
        trainer = _scene_and_trainer([term], 10)
        loss = term(trainer, 0, None, None, {}, None)
        loss.backward()
        assert torch.isfinite(loss) and float(trainer.params["sh0"].grad.abs().sum()) > 0
    denoise = DiffusionImageDenoiser(Score(), steps=2)
    images = torch.rand(2, 16, 16, 3)
    out = denoise(images, None, torch.tensor([0.3, 0.3]), torch.Generator().manual_seed(0))
    assert out.shape == images.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_oracle_denoiser_renders_the_world_at_the_sampled_camera():
    from reconstruction.generative.oracle import SCENE_CENTRE, OracleDenoiser, OracleExperiment
    from reconstruction.generative.oracle import _views as views

    exp = OracleExperiment(size=24, held_out=2)
    world, images, depth, T, K = views(exp, 2, 360.0)
    oracle = OracleDenoiser(world, SCENE_CENTRE, 1.0 / exp.radius)
    out = oracle(images, sds.NovelCameras(T, K.expand(2, 3, 3), 24, 24), torch.zeros(2), None)
    torch.testing.assert_close(out, images, atol=1e-4, rtol=0)
    assert oracle.calls == 2
    # Cameras sit at distance 1 of the normalised centre; depth is in metres.
    centres = torch.linalg.inv(T)[:, :3, 3]
    torch.testing.assert_close(centres.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    assert float(depth[depth > 0].min()) > 0.5


@pytest.mark.slow
def test_oracle_distillation_gains_at_least_2db_over_photometric_fitting():
    from reconstruction.generative.oracle import OracleExperiment, run_oracle_experiment

    result = run_oracle_experiment(OracleExperiment(seed=0, size=48, render_size=48, threads=2))
    assert result["oracle_gain_db"] >= 2.0, result
    assert np.isfinite(result["photometric_psnr"]) and result["oracle_calls"] == 1200
