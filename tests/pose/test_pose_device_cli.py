"""``--device`` and ``--quiet`` of ``pose sparp``, ``pose sparp-train``, ``pose shapo
train-priors|mesh|train|predict|eval``, ``pose egoposer train|predict|eval`` and ``pose aden
eval``: a device that is
misspelt or absent ends in one sentence and exit 2 with nothing written; ``--device cpu``
gives the default's result; ``--quiet`` prints nothing. The ``cuda`` tests run the same code
on a GPU and compare it with the CPU (``-m cuda``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pose.cli import main as pose_main

# "cuda:7": no such GPU on these machines (none, or fewer than eight)
BAD_DEVICES = ["tpu", "gpu0", "cuda:7"]

EGO_TINY = ["--model.d-model", "16", "--model.layers", "1", "--model.heads", "2",
            "--model.ff-dim", "32", "--model.head-dim", "32", "--model.tokens", "6",
            "--model.slow-stride", "2", "--synthetic-sequences", "2", "--synth.seconds", "3",
            "--batch-size", "8", "--threads", "1", "--warmup-steps", "2"]

# every device test runs on the CPU (against a second CPU run or the truth) and, with
# -m cuda on a machine with a GPU, on CUDA against the CPU
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]


def _commands(tmp: Path) -> dict[str, list[str]]:
    """Each command with the options it needs, writing into ``tmp/out``."""
    out = str(tmp / "out")
    return {
        "sparp": ["sparp", "--images", str(tmp / "photos"), "--nocs", str(tmp / "nocs"),
                  "--out", out],
        "sparp-train": ["sparp-train", "--out", out],
        "shapo train-priors": ["shapo", "train-priors", "--synthetic", "--out", out],
        "shapo mesh": ["shapo", "mesh", "--priors", str(tmp / "priors"), "--out", out],
        "shapo train": ["shapo", "train", "--synthetic", "--priors", str(tmp / "priors"),
                        "--out", out],
        "shapo predict": ["shapo", "predict", "--checkpoint", str(tmp / "ck"), "--rgb",
                          str(tmp / "c.png"), "--depth", str(tmp / "d.png"), "--intrinsics",
                          "real", "--out", out],
        "shapo eval": ["shapo", "eval", "--checkpoint", str(tmp / "ck"), "--synthetic",
                       "--out", out],
        "egoposer train": ["egoposer", "train", "--synthetic", "--out", out],
        "egoposer predict": ["egoposer", "predict", "--checkpoint", str(tmp / "ck"),
                             "--tracking", str(tmp / "trk.npz"), "--out", out + ".npz"],
        "egoposer eval": ["egoposer", "eval", "--checkpoint", str(tmp / "ck"), "--synthetic",
                          "--out", out + ".json"],
        "aden eval": ["aden", "eval", "--checkpoint", str(tmp / "ck"), "--synthetic", "--out",
                      out],
    }


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("command", list(_commands(Path("."))))
@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_bad_device_is_one_sentence_and_writes_nothing(command: str, device: str,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture):
    before = _tree(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        pose_main([*_commands(tmp_path)[command], "--device", device])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pose: error: --device {device}") and "\n" not in err, err
    assert err.endswith(".") and err.count(". ") == 0, err  # one sentence
    if device == "cuda:7":  # spelt right: the message says why this machine cannot
        assert "GPU" in err, err
    else:
        assert "use cpu, cuda or cuda:N" in err, err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("command", list(_commands(Path("."))))
def test_every_command_documents_device(command: str, capsys: pytest.CaptureFixture):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        pose_main([*command.split(), "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--device STR" in text and "cpu, cuda or cuda:N" in text
    assert "(default: cpu)" in text


def test_egoposer_train_quiet_prints_nothing_and_cpu_is_the_default(
        tmp_path: Path, capsys: pytest.CaptureFixture):
    from safetensors.torch import load_file

    capsys.readouterr()
    pose_main(["egoposer", "train", "--synthetic", "--out", str(tmp_path / "a"), "--steps",
               "3", *EGO_TINY])
    loud = capsys.readouterr()
    assert "training on 2 sequences" in loud.out and "saved checkpoint" in loud.out
    pose_main(["egoposer", "train", "--synthetic", "--out", str(tmp_path / "b"), "--steps",
               "3", "--device", "cpu", "--quiet", *EGO_TINY])
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same device: same weights
    record = json.loads((tmp_path / "b" / "config.json").read_text())
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert record["step"] == 3 and history[-1]["step"] == 3
    assert math.isfinite(history[-1]["loss"])


# ------------------------------------------------------------------- CPU against a device


def _sparp_tiny_train(out: Path, device: str, cache: Path):
    from pose.camera.sparp.config import SparpData, SparpTrainConfig
    from pose.camera.sparp.model import SparpModelConfig
    from pose.camera.sparp.train import run_train

    return run_train(out, SparpModelConfig.tiny(16),
                     SparpTrainConfig(steps=2, batch=2, log_every=1, p_nocs=0.5),
                     SparpData(sequences=2, frames=3, supersample=1), quiet=True,
                     cache=cache, device=device)


@pytest.mark.parametrize("device", DEVICES)
def test_sparp_train_and_predict_on_a_device_match_the_cpu(tmp_path: Path, device: str):
    from safetensors.torch import load_file

    from pose.camera.sparp.model import SparpModel, SparpModelConfig
    from pose.camera.sparp.predict import predict
    from pose.camera.sparp.solver import intrinsics_from_fov
    from pose.camera.sparp.train import load_model

    cache = tmp_path / "objects.npz"  # rendered once
    cpu = _sparp_tiny_train(tmp_path / "cpu", "cpu", cache)
    dev = _sparp_tiny_train(tmp_path / "dev", device, cache)
    # the same data and noise (CPU generators): the same losses up to float32 round-off
    np.testing.assert_allclose([r["loss"] for r in dev.history],
                               [r["loss"] for r in cpu.history], rtol=1e-3)
    weights = load_file(str(tmp_path / "dev" / "model.safetensors"))
    assert all(w.device.type == "cpu" for w in weights.values())
    model_cpu, _ = load_model(tmp_path / "dev", "cpu")
    model_dev, _ = load_model(tmp_path / "dev", device)
    assert next(model_dev.parameters()).device.type == device
    photos = [np.random.default_rng(k).random((20, 24, 3)) for k in range(2)]
    Ks = np.stack([intrinsics_from_fov(24, 20, 50.0)] * 2)
    a = predict(model_cpu, photos, Ks, steps=2, seed=3, novel_views=True)
    b = predict(model_dev, photos, Ks, steps=2, seed=3, novel_views=True)
    other = predict(model_dev, photos, Ks, steps=2, seed=4, novel_views=True)
    assert isinstance(b.generated, np.ndarray) and b.generated.shape == (6, 16, 16, 3)
    np.testing.assert_allclose(b.generated, a.generated, atol=2e-3)
    np.testing.assert_allclose(b.views[1].nocs, a.views[1].nocs, atol=2e-3)
    assert np.abs(other.generated - b.generated).max() > 0.01  # the seed matters
    # the v-ddim loss draws its timesteps and noise on the CPU
    torch.manual_seed(0)
    net = SparpModel(SparpModelConfig.tiny(16))
    g = torch.Generator().manual_seed(1)
    cond = torch.rand(2, 4, 48, 32, generator=g) * 2 - 1
    target = torch.rand(2, 4, 48, 32, generator=g) * 2 - 1
    domain = torch.tensor([1, 0])
    ref = net.loss(cond, target, domain, generator=torch.Generator().manual_seed(5))
    net = net.to(device)
    got = net.loss(cond.to(device), target.to(device), domain.to(device),
                   generator=torch.Generator().manual_seed(5))
    assert float(got["loss"].detach()) == pytest.approx(float(ref["loss"].detach()), rel=1e-3)


AXES = (0.3, 0.2, 0.12)


class _Ellipsoid(nn.Module):
    """An ellipsoid of size ``1 + z[0]`` (test_shapo_refine's stand-in for the priors) on
    the points' device; colour ``sigmoid(z_app[:3])``."""

    def sdf(self, z, x):
        a = torch.tensor(AXES, device=x.device) * (1 + z[..., :1])
        k0 = (x / a).norm(dim=-1)
        k1 = (x / a**2).norm(dim=-1).clamp_min(1e-9)
        return k0 * (k0 - 1) / k1  # Inigo Quilez's ellipsoid bound

    def color(self, z_app, z_shape, x):
        return torch.sigmoid(z_app[..., None, :3]).expand(*x.shape[:-1], 3)


def _rot(axis, deg):
    from geometry.so3 import axis_angle_to_matrix

    return axis_angle_to_matrix(torch.tensor(axis, dtype=torch.float32) * math.radians(deg))


@pytest.mark.parametrize("device", DEVICES)
def test_shapo_refinement_on_a_device_recovers_the_object(device: str):
    """test_shapo_refine's recovery on ``device``; the silhouette costs against the CPU's."""
    from pose.object.shapo.refine import (
        ImageEvidence,
        ObjectState,
        RefineConfig,
        depth_to_surface,
        refine_object,
        shape_size,
    )
    from pose.object.shapo.surface import octree_surface_points

    prior = _Ellipsoid()
    true_R, true_t, true_s = _rot([0, 1, 0], 30), torch.tensor([0.05, -0.02, 0.8]), 0.25
    true_z = torch.tensor([0.1])
    surf = octree_surface_points(lambda x: prior.sdf(true_z, x), depth=5)
    cam = true_s * surf @ true_R.T + true_t
    obs = cam[((cam - true_t) * cam).sum(-1) < 0]  # the camera-facing half
    colour = torch.tensor([0.8, 0.2, 0.4]).expand(len(obs), 3)
    init = ObjectState(R=true_R @ _rot([0.3, 1, 0.2], 8),
                       t=true_t + torch.tensor([0.015, 0.01, -0.02]), scale=true_s * 1.12,
                       z_shape=torch.zeros(1), z_app=torch.zeros(3))
    config = RefineConfig(iterations=100, max_points=400, surface_points=800, seed=1)
    out = refine_object(prior, obs.to(device), colour.to(device), init.to(device), config)
    assert out.t.device.type == device and out.size.device.type == device
    out = out.to("cpu")
    before = depth_to_surface(prior, init, obs)
    after = depth_to_surface(prior, out, obs)
    assert after < 0.25 * before and after < 0.002  # test_shapo_refine's bounds
    assert torch.linalg.norm(out.t - true_t) < 0.006
    assert abs(out.scale * (1 + float(out.z_shape[0])) - true_s * 1.1) < 0.01
    np.testing.assert_allclose(out.size.numpy(), 2 * true_s * 1.1 * np.array(AXES),
                               rtol=0.05)
    size = shape_size(prior, true_z.to(device), true_s)
    assert size.device.type == device
    np.testing.assert_allclose(size.cpu().numpy(), 2 * true_s * 1.1 * np.array(AXES),
                               rtol=0.05)
    # the silhouette and coverage costs of one pose: the same on the device
    K = torch.tensor([[300.0, 0, 32], [0, 300.0, 32], [0, 0, 1]])
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[20:44, 16:40] = True
    depth = torch.where(mask, 0.8, 0.0)
    ev_cpu = ImageEvidence(K, mask, depth)
    ev_dev = ImageEvidence(K.to(device), mask, depth.to(device))
    points = init.scale * surf[:500] @ init.R.T + init.t
    cfg = RefineConfig()
    for name in ("silhouette_cost", "coverage_cost"):
        ref = getattr(ev_cpu, name)(points, cfg)
        got = getattr(ev_dev, name)(points.to(device), cfg)
        assert got.device.type == device
        torch.testing.assert_close(got.cpu(), ref, atol=1e-4, rtol=1e-4)
        assert float(ref.sum()) > 0  # the pose's surface leaves the mask: not a vacuous check


@pytest.mark.parametrize("device", DEVICES)
def test_shapo_decode_on_a_device_matches_the_cpu(device: str):
    from pose.object.shapo.network import decode

    g = torch.Generator().manual_seed(0)
    gh = gw = 8
    out = {"heatmap": torch.rand(1, 6, gh, gw, generator=g) * 0.1,
           "seg": torch.randn(1, 7, gh, gw, generator=g),
           "depth": 0.8 + 0.1 * torch.rand(1, 1, gh, gw, generator=g),
           "vertex": torch.randn(1, 2, gh, gw, generator=g),
           "pose": torch.randn(1, 10, gh, gw, generator=g) * 0.1,
           "shape": torch.randn(1, 8, gh, gw, generator=g),
           "appearance": torch.randn(1, 4, gh, gw, generator=g)}
    out["heatmap"][0, 2, 2, 2] = 0.9
    out["heatmap"][0, 4, 5, 6] = 0.8
    depth = 0.8 + 0.1 * torch.rand(1, 32, 32, generator=g)
    K = torch.tensor([[[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]]])
    ref = decode(out, depth, K, threshold=0.5)[0]
    got = decode({k: v.to(device) for k, v in out.items()}, depth.to(device), K.to(device),
                 threshold=0.5)[0]
    assert [(d.class_name, d.peak) for d in ref] == [("camera", (2, 2)), ("laptop", (5, 6))]
    assert [(d.class_name, d.peak) for d in got] == [(d.class_name, d.peak) for d in ref]
    for a, b in zip(ref, got, strict=True):
        assert b.R.device.type == device
        torch.testing.assert_close(b.R.cpu(), a.R, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.t.cpu(), a.t, atol=1e-5, rtol=1e-5)
        assert torch.equal(b.mask.cpu(), a.mask) and bool(a.mask.any())


@pytest.mark.parametrize("device", DEVICES)
def test_egoposer_train_on_a_device_matches_the_cpu(tmp_path: Path, device: str):
    from safetensors.torch import load_file

    for name, dev in (("cpu", "cpu"), ("dev", device)):
        pose_main(["egoposer", "train", "--synthetic", "--out", str(tmp_path / name),
                   "--steps", "3", "--device", dev, "--quiet", *EGO_TINY])
    loss = {n: json.loads((tmp_path / n / "history.json").read_text())[-1]["loss"]
            for n in ("cpu", "dev")}
    assert loss["dev"] == pytest.approx(loss["cpu"], rel=1e-3)
    weights = load_file(str(tmp_path / "dev" / "model.safetensors"))
    assert all(w.device.type == "cpu" for w in weights.values())
    # a checkpoint written on the device resumes on the CPU
    pose_main(["egoposer", "train", "--synthetic", "--out", str(tmp_path / "dev"),
               "--steps", "4", "--resume", "--quiet", *EGO_TINY])
    assert json.loads((tmp_path / "dev" / "config.json").read_text())["step"] == 4


# ------------------------------------------- egoposer predict|eval and aden eval on a device


@pytest.fixture(scope="module")
def ego_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny EgoPoser checkpoint and a synthetic tracking file (a few seconds)."""
    root = tmp_path_factory.mktemp("ego")
    pose_main(["egoposer", "train", "--synthetic", "--out", str(root / "ck"), "--steps", "2",
               "--quiet", *EGO_TINY])
    pose_main(["egoposer", "simulate", "--synthetic", "--out", str(root / "trk.npz"),
               "--seed", "3", "--synth.seconds", "3"])
    return root / "ck", root / "trk.npz"


@pytest.mark.parametrize("device", DEVICES)
def test_egoposer_predict_on_a_device_matches_the_default(ego_checkpoint: tuple[Path, Path],
                                                          tmp_path: Path, device: str):
    ck, trk = ego_checkpoint
    outs = {"default": [], "dev": ["--device", device]}
    for name, extra in outs.items():
        pose_main(["egoposer", "predict", "--checkpoint", str(ck), "--tracking", str(trk),
                   "--out", str(tmp_path / f"{name}.npz"), "--threads", "1", *extra])
    a, b = (np.load(tmp_path / f"{n}.npz") for n in outs)
    assert a.files == b.files and a["poses"].shape == (90, 66)
    assert np.abs(a["poses"]).max() > 0.01  # a real pose, not a vacuous comparison
    exact = device == "cpu"  # the same device: the same numbers
    for key in ("poses", "trans", "joints"):
        if exact:
            np.testing.assert_array_equal(b[key], a[key])
        else:
            np.testing.assert_allclose(b[key], a[key], atol=1e-4)
    assert float(b["body_scale"]) == float(a["body_scale"])


@pytest.mark.parametrize("device", DEVICES)
def test_egoposer_eval_on_a_device_matches_the_default(ego_checkpoint: tuple[Path, Path],
                                                       tmp_path: Path, device: str):
    ck, _ = ego_checkpoint
    common = ["egoposer", "eval", "--checkpoint", str(ck), "--synthetic",
              "--synthetic-sequences", "2", "--synth.seconds", "3", "--threads", "1"]
    pose_main([*common, "--out", str(tmp_path / "a.json")])
    pose_main([*common, "--out", str(tmp_path / "b.json"), "--device", device])
    a, b = (json.loads((tmp_path / n).read_text())["methods"] for n in ("a.json", "b.json"))
    assert a.keys() == b.keys() == {"egoposer", "stand_still"}
    assert a["egoposer"]["all"]["mpjpe_cm"] > 0
    for method in a:
        for group, metrics in a[method].items():
            for key, value in metrics.items():
                got = b[method][group][key]
                if value is None:
                    assert got is None
                elif device == "cpu":
                    assert got == value, (method, group, key)
                else:
                    assert got == pytest.approx(value, rel=1e-3, abs=1e-3), (method, group, key)


@pytest.mark.parametrize("device", DEVICES)
def test_aden_eval_on_a_device_matches_the_default(tmp_path: Path, device: str,
                                                   monkeypatch: pytest.MonkeyPatch):
    from geometry.training import save_checkpoint
    from pose.camera.aden.config import AdenConfig
    from pose.camera.aden.model import AdenNet

    # an untrained net scores mostly 0 %: compare its predicted poses too, and where the
    # images were when the net saw them
    calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    predict = AdenNet.predict

    def recording_predict(self, images, seed=0, select="argmax", mirror_views=False):
        R, t, prob = predict(self, images, seed=seed, select=select, mirror_views=mirror_views)
        calls.append((images.device.type, R.cpu(), t.cpu()))
        return R, t, prob

    monkeypatch.setattr(AdenNet, "predict", recording_predict)
    torch.manual_seed(0)
    cfg = AdenConfig(image_size=32, widths=(8, 16), d_model=16, layers=1, heads=2, hidden=32,
                     queries=4, noise_dim=4, hypotheses=12, grid_size=64, random_negatives=4)
    ck = tmp_path / "ck"
    save_checkpoint(ck, AdenNet(cfg), "aden", {"model": cfg.to_dict()})
    common = ["aden", "eval", "--checkpoint", str(ck), "--synthetic", "--seed", "5",
              "--sequences", "2", "--frames", "3", "--view-counts", "2", "3", "--threads", "1"]
    pose_main([*common, "--out", str(tmp_path / "a")])
    default, calls[:] = list(calls), []
    pose_main([*common, "--out", str(tmp_path / "b"), "--device", device])
    assert len(calls) == len(default) == 2  # one batch per view count
    for (dev_a, Ra, ta), (dev_b, Rb, tb) in zip(default, calls, strict=True):
        assert (dev_a, dev_b) == ("cpu", device)
        assert Ra.shape == Rb.shape and Ra.shape[:2] in ((2, 2), (2, 3))  # 2 sets of V views
        assert ta.abs().max() > 1e-3  # not a vacuous comparison
        tol = 0 if device == "cpu" else 1e-4
        torch.testing.assert_close(Rb, Ra, atol=tol, rtol=tol)
        torch.testing.assert_close(tb, ta, atol=tol, rtol=tol)
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["views"].keys() == b["views"].keys() == {"2", "3"}
    assert a["views"]["3"]["pairs"] == 6
    # the RRA / CC shares of one set of pairs: identical on the CPU, and within one pair's
    # share on a GPU (a hypothesis on a threshold's edge may flip)
    for view, metrics in a["views"].items():
        assert b["views"][view]["pairs"] == metrics["pairs"]
        for key in ("rra5", "rra15", "rra30", "cc10"):
            if device == "cpu":
                assert b["views"][view][key] == metrics[key], (view, key)
            else:
                assert abs(b["views"][view][key] - metrics[key]) <= 0.5, (view, key)
    if device == "cpu":
        assert b["groups"] == a["groups"]
