"""The small SpaRP model's ``x0-single-step`` objective (one deterministic UNet pass, direct
loss), the 4-level CPU configuration, the canonical NOCS frame of axis-symmetric objects in
the training data, and ``pose sparp --threads``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pose.camera.sparp.model import (
    SparpModel,
    SparpModelConfig,
    decode_tiles,
    encode_tiles,
    small_unet_config,
)

TILE = 16


def _x0_model(seed: int = 0) -> SparpModel:
    torch.manual_seed(seed)
    return SparpModel(SparpModelConfig.tiny(TILE, objective="x0-single-step")).eval()


def test_single_step_is_one_deterministic_pass_on_the_clean_condition():
    model = _x0_model()
    cond = torch.rand(2, 4, 3 * TILE, 2 * TILE) * 2 - 1
    domain = torch.tensor([1, 0])
    out = model.sample(cond, domain, steps=7, seed=1)
    assert torch.equal(out, model.sample(cond, domain, steps=2, seed=9))  # no noise, one pass
    # the definition: the UNet at the fixed timestep on the condition image, its reference
    # pass on the clean condition (the core noises it to sqrt(alpha_bar_t) * c + 0)
    t = model.config.timestep
    seen = {}
    unet_forward = model.core.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.setdefault("inputs", []).append((sample.clone(), timestep.clone()))
        return unet_forward(sample, timestep, *args, **kwargs)

    model.core.unet.forward = spy
    with torch.no_grad():
        pred = model.predict_x0(cond, domain)
    (ref, t_ref), (sample, t_sample) = seen["inputs"]
    assert torch.allclose(ref, cond, atol=1e-5) and torch.equal(sample, cond)
    assert t_ref.tolist() == t_sample.tolist() == [t, t]
    assert torch.equal(out, pred.clamp(-1, 1))


def test_direct_loss_against_hand_computed_values(monkeypatch):
    """NOCS items: L1 of the coordinates over the object's pixels + the mask channel's MSE;
    views items: L1 over all channels."""
    model = _x0_model()
    g = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 6, TILE, TILE, 3, generator=g)
    mask = torch.rand(2, 6, TILE, TILE, generator=g) > 0.5
    target = encode_tiles(rgb, mask)
    offset = torch.zeros_like(target)
    offset[:, :3] = 0.1
    offset[:, 3] = -0.2
    outside = (target[:, 3] < 0)[:, None].expand(-1, 3, -1, -1)
    offset[:, :3][outside] = 5.0  # background colours do not count for NOCS
    monkeypatch.setattr(model, "predict_x0", lambda cond, domain: target + offset)
    terms = model.loss(torch.zeros_like(target), target, torch.tensor([1, 0]))
    nocs = 0.1 + 0.2 ** 2
    views = float((offset[1].abs()).mean())
    assert float(terms["nocs"]) == pytest.approx(nocs, rel=1e-5)
    assert float(terms["views"]) == pytest.approx(views, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx((nocs + views) / 2, rel=1e-5)


def test_single_step_training_fits_a_nocs_map():
    """A few dozen steps on one example bring the direct loss well down (the pass learns)."""
    from pose.camera.sparp.data import condition_tiles, render_example

    ex = render_example(3, TILE, frames=3, supersample=1)
    cond = condition_tiles(torch.from_numpy(ex.images)[None])
    rgb = torch.zeros(1, 6, TILE, TILE, 3)
    mask = torch.zeros(1, 6, TILE, TILE, dtype=torch.bool)
    rgb[0, :3] = torch.from_numpy(ex.nocs)
    mask[0, :3] = torch.from_numpy(ex.masks)
    target = encode_tiles(rgb, mask)
    torch.manual_seed(0)
    model = SparpModel(SparpModelConfig(tile=TILE, unet=small_unet_config(8, levels=4),
                                        encoder_width=8, objective="x0-single-step"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.loss(cond, target, torch.tensor([1]))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    _, pred_mask = decode_tiles(model.eval().sample(cond, torch.tensor([1])))
    iou = (pred_mask[0, :3] & mask[0, :3]).sum() / (pred_mask[0, :3] | mask[0, :3]).sum()
    assert float(iou) > 0.7


def test_configs_round_trip_and_old_records_are_v_ddim():
    cfg = SparpModelConfig(tile=32, unet=small_unet_config(8, levels=4), encoder_width=8,
                           objective="x0-single-step", timestep=500)
    assert SparpModelConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["objective"], old["timestep"]
    assert SparpModelConfig.from_dict(old).objective == "v-ddim"
    with pytest.raises(ValueError):
        SparpModelConfig.from_dict({**cfg.to_dict(), "objective": "x1"})
    with pytest.raises(ValueError):
        small_unet_config(8, levels=5)


def test_four_level_configuration_runs_on_32_px_tiles():
    cfg = SparpModelConfig(tile=32, unet=small_unet_config(8, levels=4), encoder_width=8,
                           objective="x0-single-step")
    assert cfg.unet["block_out_channels"] == [8, 16, 16, 32] and cfg.embed_dim == 32
    torch.manual_seed(0)
    model = SparpModel(cfg).eval()
    out = model.sample(torch.zeros(1, 4, 96, 64), torch.tensor([1]))
    assert out.shape == (1, 4, 96, 64)


def test_axis_symmetric_objects_put_the_first_camera_at_azimuth_zero():
    """Maps of ``axis`` objects are turned about the NOCS z axis (the first camera at
    azimuth 0); the turned maps and ``T_world_nocs`` still give the photos' pixels."""
    from pose.camera.sparp.data import render_example
    from reconstruction.procedural.objects import ObjectSequenceConfig, object_sequence

    checked = set()
    for seed in range(40):
        ex = render_example(seed, TILE, frames=3, supersample=1)
        if ex.symmetry in checked:
            continue
        checked.add(ex.symmetry)
        T_nocs_cam0 = np.linalg.inv(ex.T_world_nocs) @ ex.T_world_cam[0]
        az = math.degrees(math.atan2(T_nocs_cam0[1, 3] - 0.5, T_nocs_cam0[0, 3] - 0.5))
        seq = object_sequence(seed, ObjectSequenceConfig(
            image_size=TILE, views=3, background=False, supersample=1,
            distance_range=(0.7, 0.9)))
        if ex.symmetry == "axis":
            assert az == pytest.approx(0.0, abs=1e-9)
            assert not np.allclose(ex.nocs, seq.nocs.numpy(), atol=1e-3)
        else:
            assert np.array_equal(ex.nocs, seq.nocs.numpy())
        for k in range(3):  # every map projects to its pixels through the cameras
            rows, cols = np.nonzero(ex.masks[k])
            n = ex.nocs[k][rows, cols].astype(np.float64)
            pw = n @ ex.T_world_nocs[:3, :3].T + ex.T_world_nocs[:3, 3]
            T_cam_world = np.linalg.inv(ex.T_world_cam[k])
            pc = pw @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
            uv = pc @ ex.K.T
            uv = uv[:, :2] / uv[:, 2:] * (TILE / (2 * ex.K[0, 2]))
            assert np.abs(uv - np.stack((cols + 0.5, rows + 0.5), 1)).max() < 1e-3
            assert n.min() >= 0.0 and n.max() <= 1.0
        if checked == {"axis", "near", "none"}:
            break
    assert "axis" in checked and "none" in checked


def test_sparp_threads_option(capsys):
    import tyro

    from pose.camera.sparp.cli import SpaRPCommand

    cmd = tyro.cli(SpaRPCommand, args=["--images", "a", "--out", "b", "--threads", "3"])
    assert cmd.threads == 3
    assert tyro.cli(SpaRPCommand, args=["--images", "a", "--out", "b"]).threads is None
    with pytest.raises(SystemExit):
        tyro.cli(SpaRPCommand, args=["--help"])
    assert "--threads" in capsys.readouterr().out


def test_sparp_threads_below_one_exits_2(tmp_path, capsys):
    from pose.cli import main

    with pytest.raises(SystemExit) as info:
        main(["sparp", "--images", str(tmp_path), "--out", str(tmp_path / "o"),
              "--threads", "0"])
    assert info.value.code == 2
    assert "--threads 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
