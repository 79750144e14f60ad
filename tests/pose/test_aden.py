"""ADen: losses against hand-computed values, relative poses, inference, metrics, the CLI's
refusals and a predict round trip (tiny models, 32 px)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geometry.se3 import mirror_x
from geometry.so3 import axis_angle_to_matrix, matrix_to_axis_angle, random_rotation
from geometry.training import save_checkpoint
from pose.camera.aden.config import AdenConfig
from pose.camera.aden.data import (
    PoseSequence,
    batch_from,
    look_at_point,
    poses_from_relative,
    relative_poses,
)
from pose.camera.aden.evaluate import evaluate
from pose.camera.aden.losses import (
    aden_loss,
    all_pairs_frame_loss,
    contrastive_discriminator_loss,
    hypothesis_nearest_loss,
    ranking_discriminator_loss,
    ranking_targets,
)
from pose.camera.aden.model import AdenNet
from pose.cli import main as pose_main

TINY = dict(image_size=32, widths=(8, 16), d_model=16, layers=1, heads=2, hidden=32,
            queries=4, noise_dim=4, hypotheses=12, grid_size=64, random_negatives=4)


def _rz(deg: float) -> torch.Tensor:
    return axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.radians(deg)]))


def test_hypothesis_nearest_loss_hand_computed() -> None:
    # ||R - I||_F^2 = 4 - 4 cos(angle); w = 0.5
    eye = torch.eye(3)
    R_h = torch.stack([torch.stack([_rz(90), eye]),  # view 1: 4, 0.5 * 1 -> 0.5 (idx 1)
                       torch.stack([_rz(90), _rz(180)])])  # view 2: 4 + 0.5 * 1, 8 -> 4.5
    t_h = torch.tensor([[[0.0, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 0, 0]]], requires_grad=True)
    R_gt, t_gt = eye.expand(2, 3, 3), torch.zeros(2, 3)
    loss, idx = hypothesis_nearest_loss(R_h, t_h, R_gt, t_gt, translation_weight=0.5)
    assert loss.item() == pytest.approx((0.5 + 4.5) / 2, abs=1e-5)
    assert idx.tolist() == [1, 0]
    loss.backward()
    # only the nearest hypothesis gets a gradient: d/dt (0.5 * 0.5 |t|^2) = 0.5 t
    expected = torch.tensor([[[0.0, 0, 0], [0.5, 0, 0]], [[0, 0.5, 0], [0, 0, 0]]])
    assert torch.allclose(t_h.grad, expected)


def test_all_pairs_frame_loss_hand_computed() -> None:
    # truth: view 1 = Rz(90) at x_1 = (1, 0, 0) in the first camera's frame; w = 0.5
    R_gt, t_gt = _rz(90)[None, None], torch.tensor([[[1.0, 0, 0]]])
    c = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    exact = torch.stack([torch.eye(3), _rz(90)])[None]
    assert all_pairs_frame_loss(exact, c, R_gt, t_gt, 0.5).item() == pytest.approx(0, abs=1e-6)
    # frames both I: pair (0, 1): rotation 4, translation 0; pair (1, 0): rotation 4,
    # translation I (c_0 - c_1) = (-1, 0, 0) vs Rz(90)^T (-1, 0, 0) = (0, 1, 0): 0.5 * 2
    wrong = torch.eye(3).expand(1, 2, 3, 3)
    assert all_pairs_frame_loss(wrong, c, R_gt, t_gt, 0.5).item() == pytest.approx(
        (4 + 4 + 1) / 2, abs=1e-5)
    # the loss is the same in any common frame of the views (left-multiplied frames)
    turned = _rz(33) @ exact
    assert all_pairs_frame_loss(turned, c @ _rz(33).T, R_gt, t_gt, 0.5).item() == \
        pytest.approx(0, abs=1e-5)


def test_contrastive_discriminator_loss_hand_computed() -> None:
    s = torch.tensor([[2.0, 1.0, 0.0]])
    assert contrastive_discriminator_loss(s).item() == pytest.approx(
        math.log(math.e ** 2 + math.e + 1) - 2, abs=1e-6)
    valid = torch.tensor([[True, False, True]])
    assert contrastive_discriminator_loss(s, valid).item() == pytest.approx(
        math.log(math.e ** 2 + 1) - 2, abs=1e-6)
    assert contrastive_discriminator_loss(s, temperature=2.0).item() == pytest.approx(
        math.log(math.e + math.e ** 0.5 + 1) - 1, abs=1e-6)
    # mean over rows; the positive always counts even when marked invalid
    two = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    v2 = torch.tensor([[False, True, True], [True, True, True]])
    want = ((math.log(math.e ** 2 + math.e + 1) - 2) + math.log(3)) / 2
    assert contrastive_discriminator_loss(two, v2).item() == pytest.approx(want, abs=1e-6)


def test_ranking_targets_and_loss_hand_computed() -> None:
    # candidates: the truth, Rz(10), Rz(20) and the truth moved by 0.1; temperatures 10 deg
    # and 0.1 -> weights proportional to e^0, e^-1, e^-2, e^-1
    R = torch.stack([torch.eye(3), _rz(10), _rz(20), torch.eye(3)])[None]
    t = torch.tensor([[[0.0, 0, 0], [0, 0, 0], [0, 0, 0], [0.1, 0, 0]]])
    q = ranking_targets(R, t, torch.eye(3)[None], torch.zeros(1, 3), 10.0, 0.1)
    w = torch.tensor([1, math.exp(-1), math.exp(-2), math.exp(-1)])
    assert torch.allclose(q[0], w / w.sum(), atol=1e-5)
    # cross entropy with soft targets: -sum q log softmax(s / T)
    s = torch.tensor([[2.0, 1.0, 0.0]])
    qs = torch.tensor([[0.5, 0.25, 0.25]])
    logz = math.log(math.e ** 2 + math.e + 1)
    want = -(0.5 * (2 - logz) + 0.25 * (1 - logz) + 0.25 * (0 - logz))
    assert ranking_discriminator_loss(s, qs).item() == pytest.approx(want, abs=1e-6)
    # one-hot targets on candidate 0: the paper's contrastive loss
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    assert ranking_discriminator_loss(s, one_hot, 2.0).item() == pytest.approx(
        contrastive_discriminator_loss(s, temperature=2.0).item(), abs=1e-6)


def _orbit(n: int, radius: float = 3.0, height: float = 1.0) -> torch.Tensor:
    """Cameras on a circle looking at the origin (OpenCV camera-to-world)."""
    from geometry.se3 import look_at

    Ts = []
    for k in range(n):
        a = 2 * math.pi * k / n + 0.3
        eye = np.array([radius * math.cos(a), radius * math.sin(a), height])
        Ts.append(torch.as_tensor(look_at(eye, np.zeros(3)), dtype=torch.float64))
    return torch.stack(Ts)


def test_relative_poses_and_back() -> None:
    T = _orbit(5)
    assert torch.allclose(look_at_point(T), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    R, t, scale = relative_poses(T)
    assert scale == pytest.approx(math.sqrt(10.0))
    back = poses_from_relative(torch.cat([torch.eye(3)[None].double(), R]),
                               torch.cat([torch.zeros(1, 3).double(), t]))
    # same cameras up to a similarity: the first at (0, 0, -1), the object at the origin
    assert torch.allclose(back[0], torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -1],
                                                 [0, 0, 0, 1]], dtype=torch.float64))
    rel_gt = torch.linalg.inv(T[1]) @ T[3]
    rel_back = torch.linalg.inv(back[1]) @ back[3]
    assert torch.allclose(rel_gt[:3, :3], rel_back[:3, :3], atol=1e-9)
    assert torch.allclose(rel_gt[:3, 3] / scale, rel_back[:3, 3], atol=1e-9)
    assert back[1:, :3, 3].norm(dim=-1).allclose(torch.ones(4, dtype=torch.float64))


def _sequences(n: int = 3, frames: int = 4, size: int = 32) -> list[PoseSequence]:
    g = torch.Generator().manual_seed(0)
    return [PoseSequence(images=torch.randint(0, 256, (frames, 3, size, size), generator=g,
                                              dtype=torch.uint8),
                         T_world_cam=_orbit(frames, 2.0 + k), name=f"s{k}",
                         category="cube" if k % 2 else "cylinder",
                         symmetry="none" if k % 2 else "axis")
            for k in range(n)]


@pytest.mark.parametrize("mode", ["aden", "regression", "grid"])
def test_modes_train_and_predict(mode: str) -> None:
    torch.manual_seed(0)
    net = AdenNet(AdenConfig(mode=mode, **TINY))
    batch = batch_from(_sequences(), 3, 3, np.random.default_rng(0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        out = net(batch)
        assert set(out) >= {"loss", "gen", "disc"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < first  # it learns the fixed batch
    net.eval()
    R, t, p = net.predict(batch["images"], seed=1)
    assert R.shape == (3, 3, 3, 3) and t.shape == (3, 3, 3) and p.shape == (3, 3)
    assert torch.allclose(R[:, 0], torch.eye(3).expand(3, 3, 3))
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)
    R2, _, _ = net.predict(batch["images"], seed=1)
    assert torch.equal(R, R2)  # deterministic for a seed


def test_aden_inference_is_the_argmax_hypothesis() -> None:
    torch.manual_seed(0)
    net = AdenNet(AdenConfig(**TINY)).eval()
    images = torch.rand(2, 3, 3, 32, 32)
    R, t, prob = net.predict(images, seed=5)
    with torch.no_grad():  # as predict: the transformer's inference path
        fused = net.encode(images)
        R_h, t_h = net.generate(fused, 12, generator=torch.Generator().manual_seed(5))
        s = net.score(fused, R_h, t_h)
    best = s.argmax(-1)
    for b in range(2):
        for j in range(2):
            assert torch.allclose(R[b, j + 1], R_h[b, j, best[b, j]], atol=1e-6)
            assert torch.allclose(t[b, j + 1], t_h[b, j, best[b, j]], atol=1e-6)
    assert torch.allclose(prob[:, 1:], torch.softmax(s, -1).max(-1).values, atol=1e-6)


def test_aden_mean_selection_is_the_chordal_mean_of_the_hypotheses() -> None:
    torch.manual_seed(0)
    net = AdenNet(AdenConfig(**TINY)).eval()
    images = torch.rand(2, 3, 3, 32, 32)
    R, t, prob = net.predict(images, seed=5, select="mean")
    with torch.no_grad():
        fused = net.encode(images)
        R_h, t_h = net.generate(fused, 12, generator=torch.Generator().manual_seed(5))
    for b in range(2):
        for j in range(2):
            # the rotation nearest (Frobenius) to the hypotheses' mean, found by search:
            # it minimises sum_k ||R - R_k||^2, so no rotation does better than R
            hyp = R_h[b, j].double()
            best = R[b, j + 1].double()
            assert torch.allclose(best @ best.T, torch.eye(3, dtype=torch.float64), atol=1e-5)
            assert float(torch.det(best)) == pytest.approx(1.0, abs=1e-5)
            cost = ((best - hyp) ** 2).sum()
            for k in range(8):
                other = random_rotation((), generator=torch.Generator().manual_seed(k),
                                        dtype=torch.float64)
                nudged = axis_angle_to_matrix(torch.randn(3, dtype=torch.float64,
                                                          generator=torch.Generator()
                                                          .manual_seed(k)) * 0.05) @ best
                for cand in (other, nudged):
                    assert float(((cand - hyp) ** 2).sum()) >= float(cost) - 1e-6
            assert torch.allclose(t[b, j + 1], t_h[b, j].mean(0), atol=1e-6)
            angles = torch.stack([torch.arccos(((best.T @ h).trace().clamp(-1, 3) - 1) / 2)
                                  for h in hyp])
            share = float((angles < math.radians(15.0)).double().mean())
            assert float(prob[b, j + 1]) == pytest.approx(share, abs=1e-6)
    assert torch.equal(prob[:, 0], torch.ones(2))
    with pytest.raises(ValueError, match="select"):
        net.predict(images, select="median")


def test_cli_selection_choices_are_the_models() -> None:
    from typing import get_args

    from pose.camera.aden.cli import Selection
    from pose.camera.aden.model import SELECTIONS

    assert get_args(Selection) == SELECTIONS


def test_negatives_near_the_truth_are_left_out() -> None:
    torch.manual_seed(0)
    net = AdenNet(AdenConfig(**{**TINY, "random_negatives": 0, "local_negatives": 0}))
    batch = batch_from(_sequences(), 2, 2, np.random.default_rng(0))
    fused = net.encode(batch["images"])
    R_h, t_h = net.generate(fused)
    batch["R_rel"], batch["t_rel"] = R_h[:, :, 0].detach(), t_h[:, :, 0].detach()
    # hypothesis 0 is the GT itself: left out, so it does not count as its own negative
    calls = {}
    original = net.score

    def spy(f, R, t):
        calls["R"] = R
        return original(f, R, t)

    net.score = spy
    aden_loss(net, batch)
    assert calls["R"].shape[2] == 1 + 4  # GT + the 4 generated (one masked)


def test_ranking_loss_keeps_the_hypotheses_near_the_truth() -> None:
    torch.manual_seed(0)
    cfg = {**TINY, "random_negatives": 0, "local_negatives": 0, "rank_temperature_deg": 5.0}
    net = AdenNet(AdenConfig(**cfg))
    batch = batch_from(_sequences(), 2, 2, np.random.default_rng(0))
    fused = net.encode(batch["images"])
    noise = torch.Generator().manual_seed(batch["seed"] + 1)  # aden_loss's noise
    R_h, t_h = net.generate(fused, generator=noise)
    batch["R_rel"], batch["t_rel"] = R_h[:, :, 0].detach(), t_h[:, :, 0].detach()
    calls = {}
    original = net.score

    def spy(f, R, t):
        calls["R"], calls["t"], calls["s"] = R, t, original(f, R, t)
        return calls["s"]

    net.score = spy
    out = aden_loss(net, batch)
    # every generated hypothesis is a candidate, the one equal to the truth too, and the
    # loss is the soft-target cross entropy (the contrastive loss would mask it out)
    assert calls["R"].shape[2] == 1 + 4
    q = ranking_targets(calls["R"], calls["t"], batch["R_rel"], batch["t_rel"], 5.0, 0.1)
    assert q[..., 0].allclose(q[..., 1], atol=1e-4)  # the truth and its copy weigh the same
    want = ranking_discriminator_loss(calls["s"], q)
    assert out["disc"].item() == pytest.approx(want.item(), abs=1e-5)
    masked = contrastive_discriminator_loss(
        calls["s"], torch.tensor([True, False, True, True, True]).expand_as(calls["s"]))
    assert abs(out["disc"].item() - masked.item()) > 1e-3


class _Perturbed:
    """A predictor returning the GT rotated by 10 degrees (about z, in the first camera's
    frame) for every non-first view."""

    def __init__(self, sequences: list[PoseSequence]) -> None:
        self.sequences = sequences

    def eval(self) -> _Perturbed:
        return self

    def predict(self, images, seed=0, select="argmax", mirror_views=False):
        assert not mirror_views  # (a stand-in for the plain estimate only)
        Rs, ts = [], []
        for im in images:
            Rb, tb = [torch.eye(3)], [torch.zeros(3)]
            seq, idx = self.find(im)
            R, t, _ = relative_poses(seq.T_world_cam[idx])
            for j in range(len(R)):
                Rb.append(_rz(10).double() @ R[j])
                tb.append(t[j])
            Rs.append(torch.stack([r.float() for r in Rb]))
            ts.append(torch.stack([x.float() for x in tb]))
        return torch.stack(Rs), torch.stack(ts), torch.ones(len(images), images.shape[1])

    def find(self, im):
        for s in self.sequences:
            idx = []
            for view in im:
                hits = [k for k in range(len(s.images))
                        if torch.equal((view * 255).round().to(torch.uint8), s.images[k])]
                if not hits:
                    break
                idx.append(hits[0])
            else:
                return s, torch.tensor(idx)
        raise AssertionError("frames not found")


def test_evaluate_reference_values() -> None:
    seqs = _sequences(n=2, frames=4)
    model = _Perturbed(seqs)
    m = evaluate(model, seqs, (2, 3), seed=0)
    # V = 2: one pair (0, 1) off by 10 deg; V = 3: pairs (0,1), (0,2) off, (1,2) exact
    assert m["views"]["2"]["rra5"] == 0.0 and m["views"]["2"]["rra15"] == 1.0
    assert m["views"]["3"]["rra5"] == pytest.approx(1 / 3)
    assert m["views"]["3"]["rra15"] == 1.0 and m["views"]["3"]["pairs"] == 6
    assert set(m["groups"]["3"]) == {"category:cube", "category:cylinder", "symmetry:axis",
                                     "symmetry:none"}


# ----------------------------------------------------------------------------- CLI


def _tiny_checkpoint(folder: Path, kind: str = "aden") -> Path:
    torch.manual_seed(0)
    cfg = AdenConfig(**TINY)
    save_checkpoint(folder, AdenNet(cfg), kind, {"model": cfg.to_dict()})
    return folder


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            folder / f"view{k}.png")
    return folder


def _user_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        pose_main(["aden", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pose: error: ") and "\n" not in err, err
    return err


def test_predict_writes_cameras(tmp_path: Path) -> None:
    from geometry.io.colmap import read_colmap_model
    from geometry.io.transforms_json import read_transforms_json
    from pose.camera.aden.predict import AdenEstimator
    from pose.camera.aden.train import load_model

    ck = _tiny_checkpoint(tmp_path / "ck")
    photos = _photos(tmp_path / "photos", [(48, 40)] * 3)
    pose_main(["aden", "predict", "--checkpoint", str(ck), "--images", str(photos),
               "--out", str(tmp_path / "out"), "--threads", "1"])
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert [v["name"] for v in scores["views"]] == ["view0.png", "view1.png", "view2.png"]
    assert scores["views"][0]["score"] == 1.0
    tj = read_transforms_json(tmp_path / "out" / "transforms.json").cameras
    model = read_colmap_model(tmp_path / "out" / "sparse" / "0")
    from pose.camera.aden.data import load_photos

    want = AdenEstimator(load_model(ck)).estimate(load_photos(photos)[1]).cameras
    assert torch.allclose(tj.T_world_cam.double(), want.T_world_cam.double(), atol=1e-5)
    assert torch.allclose(tj.K.double(), want.K.double())
    assert int(tj.width[0]) == 48 and int(tj.height[0]) == 40
    assert float(tj.K[0, 0, 0]) == pytest.approx(2.0 * 20)  # focal_ndc * half short side
    assert len(model.images) == 3


def test_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = _tiny_checkpoint(tmp_path / "ck")
    one = _photos(tmp_path / "one", [(32, 32)])
    mixed = _photos(tmp_path / "mixed", [(32, 32), (40, 32)])
    good = _photos(tmp_path / "good", [(32, 32)] * 2)
    other = _tiny_checkpoint(tmp_path / "other", kind="upsrt")
    out = str(tmp_path / "out")
    err = _user_error(["predict", "--checkpoint", str(ck), "--images", str(one), "--out", out],
                      capsys)
    assert "1 photo" in err and "at least 2" in err
    err = _user_error(["predict", "--checkpoint", str(ck), "--images", str(mixed), "--out",
                       out], capsys)
    assert "different sizes" in err
    err = _user_error(["predict", "--checkpoint", str(other), "--images", str(good), "--out",
                       out], capsys)
    assert "upsrt" in err and "aden" in err
    err = _user_error(["eval", "--checkpoint", str(ck), "--co3d", str(good), "--out", out],
                      capsys)
    assert "no camera annotations" in err
    err = _user_error(["train", "--co3d", str(good), "--out", str(tmp_path / "t")], capsys)
    assert "no camera annotations" in err
    err = _user_error(["train", "--synthetic", "--views", "1-3", "--out",
                       str(tmp_path / "t")], capsys)
    assert "--views" in err
    err = _user_error(["train", "--synthetic", "--device", "gpu", "--out",
                       str(tmp_path / "t")], capsys)
    assert "--device gpu is not a device" in err
    err = _user_error(["predict", "--checkpoint", str(ck), "--images", str(good), "--out",
                       out, "--device", "cuda:x"], capsys)
    assert "--device cuda:x is not a device" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "t").exists()


def test_predict_replaces_only_its_own_output(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    ck = _tiny_checkpoint(tmp_path / "ck")
    photos = _photos(tmp_path / "photos", [(32, 32)] * 2)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("keep")
    args = ["predict", "--checkpoint", str(ck), "--images", str(photos), "--threads", "1",
            "--quiet"]
    err = _user_error([*args, "--out", str(notes)], capsys)
    assert "pass --overwrite" in err and (notes / "keep.txt").read_text() == "keep"
    out = tmp_path / "out"
    pose_main(["aden", *args, "--out", str(out)])
    first = (out / "transforms.json").read_text()
    pose_main(["aden", *args, "--out", str(out)])  # its own earlier output is replaced
    assert (out / "transforms.json").read_text() == first
    pose_main(["aden", *args, "--out", str(notes), "--overwrite"])
    assert not (notes / "keep.txt").exists() and (notes / "scores.json").is_file()
    assert capsys.readouterr().out == ""  # --quiet


def test_recon_initialiser_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import reconstruction.init.registry as registry
    from geometry.errors import UserError
    from pose.camera.aden.hook import register_aden

    seen = {}

    def stub(images, work_dir, config, seed, cameras=None):
        seen["cameras"] = cameras
        return SimpleNamespace(stats={})

    monkeypatch.setattr(registry, "INITIALISERS", {**registry.INITIALISERS, "stub": stub})
    with pytest.raises(UserError, match="not an aden checkpoint"):
        register_aden(tmp_path / "missing", base="stub")
    ck = _tiny_checkpoint(tmp_path / "ck")
    assert register_aden(ck, base="stub") == "aden"
    rng = np.random.default_rng(0)
    images = [SimpleNamespace(rgb=torch.from_numpy(rng.random((30, 40, 3), np.float32)),
                              width=40, height=30, path=Path(f"v{k}.png")) for k in range(3)]
    result = registry.INITIALISERS["aden"](images, tmp_path, None, 0)
    Ks, T_cam_world = seen["cameras"]
    assert Ks.shape == (3, 3, 3) and T_cam_world.shape == (3, 4, 4)
    # view 0 at (0, 0, -1) looking along +z: T_cam_world translates the world by +1 along z
    np.testing.assert_allclose(T_cam_world[0], np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1.0]]), atol=1e-12)
    assert result.stats["camera_estimator"] == "AdenEstimator"


def test_co3d_apple_sequence() -> None:
    folder = Path(__file__).parents[2].parent / "shared" / "datasets" / "co3d_apple"
    if not (folder / "gt_cameras.npz").is_file():
        pytest.skip(f"{folder} is absent (shared CO3D apple sequence)")
    from pose.camera.aden.data import co3d_sequences

    (seq,) = co3d_sequences(folder, 32)
    assert seq.images.shape == (20, 3, 32, 32) and seq.category == "co3d_apple"
    # the cameras orbit the apple: the optical axes meet near one point in front of them
    T = seq.T_world_cam
    p = look_at_point(T)
    dirs = T[:, :3, 2]
    to_p = p - T[:, :3, 3]
    cos = (dirs * to_p).sum(-1) / to_p.norm(dim=-1)
    assert float(cos.min()) > 0.95


def test_train_eval_resume_round_trip(tmp_path: Path) -> None:
    ck, ev = tmp_path / "ck", tmp_path / "ev"
    tiny = ["--model.image-size", "32", "--model.widths", "8", "16", "--model.d-model", "16",
            "--model.layers", "1", "--model.heads", "2", "--model.hidden", "32",
            "--model.queries", "4", "--model.hypotheses", "16"]
    train = ["aden", "train", "--synthetic", "--out", str(ck), "--batch", "2", "--views",
             "2-3", "--synth.sequences", "3", "--synth.frames", "3", "--threads", "1",
             "--log-every", "1", *tiny]
    pose_main([*train, "--steps", "2"])
    assert json.loads((ck / "config.json").read_text())["step"] == 2
    pose_main([*train, "--steps", "3", "--resume"])
    history = json.loads((ck / "history.json").read_text())
    assert [row["step"] for row in history] == [1, 2, 3]
    assert (ck / "loss.png").is_file()
    pose_main(["aden", "eval", "--checkpoint", str(ck), "--synthetic", "--seed", "5",
               "--sequences", "2", "--frames", "3", "--view-counts", "2", "3", "--out",
               str(ev), "--threads", "1"])
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["views"]) == {"2", "3"}
    for m in metrics["views"].values():
        assert all(0.0 <= m[k] <= 1.0 for k in ("rra5", "rra15", "rra30", "cc10"))
    assert metrics["views"]["2"]["pairs"] == 2 and metrics["views"]["3"]["pairs"] == 6


def test_grid_inference_is_the_argmax_of_the_grid() -> None:
    from pose.camera.aden.model import rotation_grid

    torch.manual_seed(0)
    net = AdenNet(AdenConfig(mode="grid", **TINY)).eval()
    images = torch.rand(1, 3, 3, 32, 32)
    R, _, prob = net.predict(images, seed=2, chunk=10)  # several chunks of the 64 rotations
    grid = rotation_grid(64, seed=2)
    with torch.no_grad():
        fused = net.encode(images)
        Rg = grid[None, None].expand(1, 2, -1, -1, -1)
        s = net.score(fused, Rg, torch.randn(1, 2, 64, 3))  # translation ignored in grid mode
    best = s.argmax(-1)[0]
    assert torch.allclose(R[0, 1:], grid[best], atol=1e-6)
    assert torch.allclose(prob[0, 1:], torch.softmax(s, -1).max(-1).values[0], atol=1e-5)
    # the grid is spread over SO(3): every rotation has a grid neighbour within 120 deg
    from geometry.pose_metrics import rotation_angle_deg

    probe = random_rotation((50,), generator=torch.Generator().manual_seed(9))
    nearest = rotation_angle_deg(probe[:, None], grid[None]).min(-1).values
    assert float(nearest.max()) < 120.0


def _reprojection_colour_error(images: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                               R: torch.Tensor, t: torch.Tensor) -> float:
    """Median colour difference between view j's object pixels and where view j's depth
    and the relative pose (cam_j -> cam_0: ``x0 = R x_j + t``) put them in view 0."""
    h, w = depth.shape[-2:]
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    errs = []
    for j in range(1, images.shape[0]):
        ok = depth[j] > 0
        z = depth[j][ok].double()
        x = torch.stack([(u[ok] - K[0, 2]) / K[0, 0] * z, (v[ok] - K[1, 2]) / K[1, 1] * z, z], -1)
        x0 = x @ R[j - 1].T + t[j - 1]
        uu = (K[0, 0] * x0[:, 0] / x0[:, 2] + K[0, 2]).floor().long()
        vv = (K[1, 1] * x0[:, 1] / x0[:, 2] + K[1, 2]).floor().long()
        inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
        errs.append((images[0][vv[inside], uu[inside]] - images[j][ok][inside]).abs().sum(-1))
    return float(torch.cat(errs).median())


def test_mirrored_views_match_the_mirrored_relative_poses() -> None:
    # The rendered views, flipped left-right, are consistent with mirror_x's poses
    # (and not with the unmirrored ones): each object pixel of views 1-3, moved by its depth
    # and the relative pose into view 0, lands on the same colour.
    from reconstruction.procedural.objects import ObjectSequenceConfig, object_sequence

    seq = object_sequence(3, ObjectSequenceConfig(image_size=48, views=4, supersample=1,
                                                  azimuth_span_deg=60.0))
    K = seq.cameras.K[0]
    assert float(K[0, 2]) == pytest.approx(24.0)  # the flip is a reflection about cx
    T = seq.cameras.T_world_cam
    rel = torch.linalg.inv(T[:1]) @ T[1:]
    R, t = rel[:, :3, :3], rel[:, :3, 3]
    plain = _reprojection_colour_error(seq.images, seq.depth, K, R, t)
    flipped = (seq.images.flip(-2), seq.depth.flip(-1))  # [V, H, W, 3], [V, H, W]
    Rm, tm = mirror_x(R, t)
    mirrored = _reprojection_colour_error(*flipped, K, Rm, tm)
    wrong = _reprojection_colour_error(*flipped, K, R, t)
    assert plain < 0.2 and mirrored == pytest.approx(plain, abs=1e-6)
    assert wrong > 2.5 * plain
    # batches: a mirrored sequence has its views flipped and its poses mirrored
    seq0 = _sequences(1, frames=3)[0]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(12):
        b = batch_from([seq0], 1, 3, rng, mirror=True)
        flipped = not any(torch.equal(b["images"][0, 0], im.float() / 255) for im in seq0.images)
        views = seq0.images.flip(-1) if flipped else seq0.images
        pick = [next(k for k in range(3) if torch.equal(b["images"][0, i], views[k].float() / 255))
                for i in range(3)]
        R, t, _ = relative_poses(seq0.T_world_cam[pick])
        if flipped:
            R, t = mirror_x(R, t)
        assert torch.allclose(b["R_rel"][0], R.float()) and torch.allclose(b["t_rel"][0], t.float())
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize("mode,select", [("aden", "argmax"), ("aden", "mean"),
                                         ("regression", "argmax")])
def test_mirror_views_averages_the_estimate_and_its_mirror(mode: str, select: str) -> None:
    # mirror_views: the chordal mean of the plain estimate and the mirrored views' estimate
    # mirrored back; so the views mirrored give the estimate mirrored.
    torch.manual_seed(0)
    net = AdenNet(AdenConfig(**{**TINY, "mode": mode})).eval()
    images = torch.rand(2, 3, 3, 32, 32)
    R1, t1, p1 = net.predict(images, seed=5, select=select)
    R2, t2, p2 = net.predict(images.flip(-1), seed=5, select=select)
    R2m, t2m = mirror_x(R2, t2)
    R, t, prob = net.predict(images, seed=5, select=select, mirror_views=True)
    for b in range(2):
        for j in range(1, 3):  # the mean of two rotations: halfway along their geodesic
            half = R1[b, j] @ axis_angle_to_matrix(
                0.5 * matrix_to_axis_angle(R1[b, j].T @ R2m[b, j]))
            assert torch.allclose(R[b, j], half, atol=1e-5)
    assert torch.allclose(R[:, 0], torch.eye(3).expand(2, 3, 3))
    assert torch.allclose(t, (t1 + t2m) / 2, atol=1e-6)
    assert torch.allclose(prob, (p1 + p2) / 2)
    assert not torch.allclose(R1, R2m, atol=1e-3)  # the two estimates differ
    Rf, tf, _ = net.predict(images.flip(-1), seed=5, select=select, mirror_views=True)
    Rfm, tfm = mirror_x(Rf, tf)
    assert torch.allclose(Rfm, R, atol=1e-5) and torch.allclose(tfm, t, atol=1e-6)

