"""``recon fit --aden-checkpoint``: ADen's cameras initialise a fit (a tiny trained
checkpoint, three generated photos); a missing checkpoint is one sentence and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from geometry.training import save_checkpoint
from pose.camera.aden.config import AdenConfig
from pose.camera.aden.model import AdenNet

TINY = dict(image_size=32, widths=(8, 16), d_model=16, layers=1, heads=2, hidden=32,
            queries=4, noise_dim=4, hypotheses=12, grid_size=64, random_negatives=4)
FAST = ["--iterations", "3", "--max-size", "160", "--train.checkpoint-every", "0",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_initialisers():
    """``--aden-checkpoint`` registers an initialiser in this process; later tests must see
    the built-in registry."""
    from reconstruction.init.registry import INITIALISERS

    before = dict(INITIALISERS)
    yield
    INITIALISERS.clear()
    INITIALISERS.update(before)


def _recon(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
           *args: str) -> tuple[int, str]:
    from sparseview.cli import recon as cli

    monkeypatch.setattr(sys, "argv", ["recon", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    from reconstruction.procedural import SceneConfig, render, write_photos

    folder = tmp_path_factory.mktemp("aden_fit")
    generated = render(SceneConfig(kind="arc", num_views=3, width=160, height=120, seed=2))
    write_photos(generated, folder / "images")
    return folder / "images", generated


@pytest.fixture(scope="module")
def checkpoint(scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ADen trained (overfitted) on the three photos and their true cameras, with
    their focal length."""
    from pose.camera.aden.data import prepare_images, relative_poses

    _, generated = scene
    cams = generated.cameras
    images = prepare_images([im for im in generated.images], TINY["image_size"])
    R, t, _ = relative_poses(cams.T_world_cam)
    batch = {"images": images[None].float() / 255, "R_rel": R[None].float(),
             "t_rel": t[None].float(), "seed": 0}
    focal = float(cams.K[0, 0, 0]) / (min(int(cams.width[0]), int(cams.height[0])) / 2)
    torch.manual_seed(0)
    cfg = AdenConfig(**TINY, focal_ndc=focal)
    net = AdenNet(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        loss = net(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    folder = tmp_path_factory.mktemp("aden_ck") / "ck"
    save_checkpoint(folder, net.eval(), "aden", {"model": cfg.to_dict()})
    return folder


def test_recon_fit_with_aden_cameras(scene, checkpoint: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    photos, _ = scene
    out = tmp_path / "out"
    code, err = _recon(monkeypatch, capsys, "fit", "--images", str(photos), "--out", str(out),
                       "--aden-checkpoint", str(checkpoint), *FAST)
    assert code == 0, err
    assert "--init aden" in err and "camera initialiser: ADen" in err, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 3
    assert (out / "transforms.json").is_file()


def test_recon_fit_missing_aden_checkpoint(scene, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    photos, _ = scene
    out = tmp_path / "out"
    code, err = _recon(monkeypatch, capsys, "fit", "--images", str(photos), "--out", str(out),
                       "--aden-checkpoint", str(tmp_path / "nope"), *FAST)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("recon: error: "), err
    assert "nope is not an aden checkpoint" in lines[0] and "pose aden train" in lines[0]
    assert not out.exists()


def test_recon_fit_passes_the_aden_selection_on(scene, checkpoint: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    """--aden-select and --aden-mirror-views reach the estimator (the mean of this tiny
    model's spread hypotheses may not fit the matches: the fit then goes on with SfM's own
    cameras, with a warning); an unknown selection is refused before any work."""
    import pose.camera.aden.predict as predict_module
    from geometry.errors import UserError
    from pose.camera.aden.hook import register_aden

    seen = []

    class Recording(predict_module.AdenEstimator):
        def __init__(self, *args, **kwargs) -> None:
            seen.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(predict_module, "AdenEstimator", Recording)
    photos, _ = scene
    out = tmp_path / "out"
    code, err = _recon(monkeypatch, capsys, "fit", "--images", str(photos), "--out", str(out),
                       "--aden-checkpoint", str(checkpoint), "--aden-select", "mean",
                       "--aden-mirror-views", *FAST)
    assert code == 0, err
    assert [(k["select"], k["mirror_views"]) for k in seen] == [("mean", True)]
    assert (out / "transforms.json").is_file()
    with pytest.raises(UserError, match="selection 'median' is not one of argmax, mean"):
        register_aden(checkpoint, select="median")
