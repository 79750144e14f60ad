"""``recon fit --method rdggs`` end to end on a tiny generated scene (as test_fit.py makes
them), its ablation switches through the CLI, bad inputs, and ``recon eval`` depth AbsRel
on a tiny synthetic scene with ground-truth depth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reconstruction.procedural import SceneConfig, render, write_photos
from reconstruction.rdggs.config import RDGGSConfig

FAST = ["--max-size", "160", "--train.checkpoint-every", "0", "--quiet", "--threads", "1",
        "--iterations", "40", "--method", "rdggs"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rdggs_fit")
    write_photos(render(SceneConfig(kind="arc", num_views=3, width=160, height=120, seed=2)),
                 folder / "images")
    return folder / "images"


def test_fit_rdggs_end_to_end_and_switches(images, tmp_path, run_recon):
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(out), *FAST)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "rdggs"
    assert metrics["rdggs_prior_source"] == "stereo"
    assert metrics["rdggs_components"] == {"refine_prior": True, "relative_depth": True,
                                           "adaptive_sampling": True}
    # The refined prior agrees with the SfM depths it was fitted to (exact renders: a few %).
    assert max(metrics["rdggs_prior_sparse_absrel"]) < 0.1
    assert all(0.9 < s < 1.1 for s in metrics["rdggs_prior_scale"])  # already metric
    assert metrics["rdggs_depth_loss"] is not None and metrics["rdggs_depth_loss"] >= 0
    assert metrics["training_psnr_db"] > metrics["initial_psnr_db"]
    assert (out / "splats.ply").is_file()

    # Ablations: each switch is seen by the run.
    off = tmp_path / "off"
    code, err = run_recon("fit", "--images", str(images), "--out",
                         str(off), *FAST, "--rdggs.no-relative-depth",
                         "--rdggs.no-adaptive-sampling", "--rdggs.no-refine-prior",
                         "--rdggs.depth-prior", "init")
    assert code == 0, err
    m_off = json.loads((off / "metrics.json").read_text())
    assert m_off["rdggs_components"] == {"refine_prior": False, "relative_depth": False,
                                         "adaptive_sampling": False}
    assert m_off["rdggs_prior_source"] == "init"
    assert m_off["rdggs_depth_loss"] is None and m_off["rdggs_sampling_rounds"] == 0
    assert m_off["rdggs_prior_scale"] == [1.0] * 3  # no fit without refinement
    # The projected init cloud is another prior than stereo's.
    assert m_off["rdggs_prior_coverage"] != metrics["rdggs_prior_coverage"]


def test_fit_rdggs_bad_inputs(images, tmp_path, run_recon, monkeypatch):
    from reconstruction.init.registry import INITIALISERS

    def no_init(*args, **kwargs):
        raise AssertionError("the prior options must be checked before the initialisation")

    monkeypatch.setitem(INITIALISERS, "sfm", no_init)
    out = tmp_path / "bad"
    for extra, text in (
        (["--rdggs.mono-checkpoint", str(tmp_path / "missing.safetensors")], "is not a file"),
        (["--rdggs.depth-prior", "mono"], "needs --rdggs.mono-checkpoint"),
        (["--rdggs.depth-prior", "files", "--rdggs.prior-dir", str(tmp_path)],
         "no depth map for"),
        (["--rdggs.prior-dir", str(tmp_path)], "go together"),
    ):
        code, err = run_recon("fit", "--images", str(images), "--out",
                             str(out), *FAST, *extra)
        assert code == 2, err
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert lines[-1].startswith("recon: error: ") and text in lines[-1], err
        assert "Traceback" not in err
        assert not out.exists()


def test_eval_reports_depth_absrel_in_ground_truth_units(tmp_path):
    from reconstruction.eval.cli import Eval
    from reconstruction.eval.data import load_dataset
    from reconstruction.pose_opt import PoseOptConfig
    from reconstruction.procedural import generate

    scene = generate(SceneConfig(num_views=8, width=128, height=96, supersample=2,
                                 arc_deg=50.0, seed=1), tmp_path / "scene")
    dataset = load_dataset(scene.path)
    assert dataset.has_depth
    depth = dataset.load_depth(1)
    assert depth.shape == (96, 128) and float(depth.max()) > 1.0  # metres, camera ~4 m away
    small = load_dataset(scene.path, max_size=64).load_depth(1)  # shrunk with the images
    assert small.shape == (48, 64)
    assert torch.equal(small, depth[::2, ::2]) or set(small.unique().tolist()) <= set(
        depth.unique().tolist())  # nearest samples, never blended across depth edges
    out = tmp_path / "eval"
    Eval(dataset=scene.path, out=out, views="2,3,4", test_views="1,5", iterations=20,
         init="sfm-sparse", method="rdggs", quiet=True,
         test_pose_options=PoseOptConfig(iterations=4)).run()
    results = json.loads((out / "eval.json").read_text())
    assert results["depth_views"] == 2 and results["depth_missing"] is None
    # The fit's frame has a mean camera distance of 1 and the scene's is 2.5-4 m: without
    # the alignment's scale AbsRel would be over 0.6 (1 - 1/s). 20 steps from a sparse init
    # at 128x96 leave a blurry scene: 0.1-0.32 on the runs seen, depending on the SfM.
    assert results["alignment_scale"] > 2.0
    assert 0.0 <= results["depth_absrel"] < 0.45
    assert 0.3 < results["depth_coverage"] <= 1.0
    assert "| depth AbsRel |" in (out / "report.md").read_text()
    assert results["method_info"]["rdggs_prior_source"] == "stereo"
    # The scene's own depth maps as a file prior, through recon eval and the fit (which
    # view gets which map: test_eval_stages_each_training_view_its_own_prior).
    Eval(dataset=scene.path, out=tmp_path / "eval_files", views="2,3,4", test_views="1,5",
         iterations=5, init="sfm-sparse", method="rdggs", quiet=True, known_poses=True,
         options=RDGGSConfig(depth_prior="files", prior_dir=scene.path / "depth")).run()
    info = json.loads((tmp_path / "eval_files" / "eval.json").read_text())["method_info"]
    assert info["rdggs_prior_source"] == "files"
    # Each map is brought to the fit's frame (the true cameras, normalised to a mean camera
    # distance of 1 from 3.5-4 m): one scale for all views, the scene's.
    scales = info["rdggs_prior_scale"]
    assert max(scales) < 1.05 * min(scales) and 0.2 < min(scales) < 0.35, scales


def test_eval_depth_absrel_of_a_rendered_wall():
    """A wall of Gaussians at z = 2 rendered with protocol's depth render: AbsRel against a
    GT of 2 * s after scaling by s is ~0, against the unscaled GT it is 1 - 1/s."""
    from geometry.cameras import Cameras
    from reconstruction.eval import metrics as M
    from reconstruction.eval.protocol import render_depth
    from reconstruction.gaussians import GaussianScene
    from reconstruction.scene_model import GaussianSceneModel

    xs, ys = torch.meshgrid(torch.linspace(-1.5, 1.5, 90), torch.linspace(-1.2, 1.2, 72),
                            indexing="xy")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((xs.numel(),), 2.0)], 1)
    scene = GaussianScene.from_points(pts, torch.full_like(pts, 0.5), sh_degree=0,
                                      initial_opacity=0.99, scale_factor=1.5)
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    camera = Cameras(K=K[None], T_world_cam=torch.eye(4)[None], width=64, height=48)
    depth, covered = render_depth(GaussianSceneModel(scene, camera), camera)
    assert float(covered.float().mean()) > 0.95
    s = 3.0
    gt = torch.full((48, 64), 2.0 * s)
    assert M.depth_absrel(depth * s, gt, covered) < 1e-3
    assert M.depth_absrel(depth, gt, covered) == pytest.approx(1 - 1 / s, abs=1e-3)


def test_eval_without_depth_says_why(tmp_path):
    from reconstruction.eval.report import summary_rows

    rows = dict(summary_rows({"depth_absrel": None, "depth_coverage": None,
                              "depth_missing": "the dataset has no ground-truth depth for "
                                               "the test views"}))
    assert rows["depth AbsRel"].startswith("- (the dataset has no ground-truth depth")
    assert Path(__file__).name.startswith("test_rdggs")


def test_eval_stages_each_training_view_its_own_prior(tmp_path):
    import numpy as np

    from geometry.errors import UserError
    from reconstruction.methods import get_method

    stage = get_method("rdggs").stage_eval_inputs

    folder = tmp_path / "priors"
    folder.mkdir()
    for k, name in enumerate(("b", "a", "c")):
        np.save(folder / f"{name}.npy", np.full((2, 2), float(k), np.float32))
    images = [tmp_path / "photos" / n for n in ("c.png", "a.png")]  # the training order
    staged = stage(RDGGSConfig(prior_dir=folder), images, tmp_path / "staged").prior_dir
    assert sorted(p.name for p in staged.iterdir()) == ["000_c.npy", "001_a.npy"]
    assert float(np.load(staged / "000_c.npy")[0, 0]) == 2.0
    assert float(np.load(staged / "001_a.npy")[0, 0]) == 1.0
    with pytest.raises(UserError, match="no depth map for d.png"):
        stage(RDGGSConfig(prior_dir=folder), [tmp_path / "d.png"], tmp_path / "staged2")
