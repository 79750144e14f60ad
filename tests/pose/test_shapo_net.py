"""ShAPO's single-shot network: peak decoding, targets <-> decoding, a tiny network that
overfits one scene, and ``pose shapo train|predict|eval`` through the command line."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pose.cli import main as pose_main
from pose.object.shapo.data import SceneConfig, render_scene
from pose.object.shapo.metrics import pose_error
from pose.object.shapo.network import (
    LOG_DIAG_MEAN,
    RAY_SCALE,
    STRIDE,
    Z_SCALE,
    cell_rays,
    decode,
    decode_peaks,
    reference_depth,
    scene_targets,
)
from pose.object.shapo.priors import PriorTrainConfig, prior_shapes
from pose.object.shapo.shapes import CATEGORIES

SIZE = 64
TINY_PRIORS = ["--model.shape-dim", "8", "--model.appearance-dim", "4", "--model.hidden",
               "32", "--model.layers", "2", "--model.appearance-layers", "2",
               "--model.fourier", "1", "--instances-per-category", "1", "--sdf-samples",
               "256", "--color-samples", "64", "--batch-instances", "6", "--points", "128",
               "--steps", "20", "--log-every", "10", "--warmup-steps", "2"]
TINY_NET = ["--model.width", "8", "--model.fpn", "16", "--model.image-size", str(SIZE)]
SCENE_SEED = 100003  # the first training scene of --seed 1


def _gauss(shape, r, c, peak, sigma=1.0):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return peak * np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * sigma**2))


def test_decode_peaks_from_a_hand_made_heatmap():
    heat = np.zeros((6, 12, 14), np.float32)
    heat[2] = _gauss((12, 14), 3, 4, 0.9)
    heat[5] = _gauss((12, 14), 8, 10, 0.6)
    heat[0] = _gauss((12, 14), 8, 10, 0.5)  # another class at the same place: weaker
    heat[1] = _gauss((12, 14), 10, 1, 0.2)  # under the threshold
    peaks = decode_peaks(torch.from_numpy(heat), threshold=0.3)
    assert [(c, r, col) for c, r, col, _ in peaks] == [(2, 3, 4), (5, 8, 10)]
    np.testing.assert_allclose([s for *_, s in peaks], [0.9, 0.6], rtol=1e-6)
    assert len(decode_peaks(torch.from_numpy(heat), threshold=0.15)) == 3
    assert decode_peaks(torch.from_numpy(heat), threshold=0.3, max_objects=1)[0][:3] == (2, 3, 4)
    assert decode_peaks(torch.zeros(6, 5, 5)) == []


def _perfect_outputs(scene, targets, shape_dim=4):
    """The network outputs that encode the ground truth exactly."""
    C = len(CATEGORIES)
    gh, gw = targets.seg.shape
    seg = F.one_hot(torch.from_numpy(targets.seg), C + 1).permute(2, 0, 1).float() * 10
    depth = torch.from_numpy(scene.depth)[None]
    K = torch.from_numpy(scene.K).float()[None]
    clean = torch.from_numpy(targets.depth)[None, None]
    ref = reference_depth(depth, clean)[0]
    rays = cell_rays(K, gh, gw)[0]
    pose = torch.zeros(10, gh, gw)
    codes = torch.zeros(shape_dim, gh, gw)
    for k, o in enumerate(targets.objects):
        cells = torch.from_numpy(targets.owner == o["index"])
        R, t = torch.from_numpy(o["R"]).float(), torch.from_numpy(o["t"]).float()
        r6 = torch.cat([R[:, 1], R[:, 0]])
        ray = t[:2] / t[2]
        pose[:6, cells] = r6[:, None]
        pose[6:8, cells] = RAY_SCALE * (ray[:, None] - rays[:, cells])
        pose[8, cells] = Z_SCALE * (t[2] - ref[cells])
        pose[9, cells] = o["log_diag"] - LOG_DIAG_MEAN
        codes[:, cells] = float(k)
    return {"heatmap": torch.from_numpy(targets.heatmap)[None], "seg": seg[None],
            "depth": clean, "shape": codes[None], "appearance": codes[None],
            "pose": pose[None], "vertex": torch.from_numpy(targets.vertex)[None] / 4.0}


def test_targets_decode_back_to_the_ground_truth():
    scene = render_scene(7, SceneConfig(width=96, height=96))
    targets = scene_targets(scene)
    assert len(targets.objects) >= 2
    out = _perfect_outputs(scene, targets)
    dets = decode(out, torch.from_numpy(scene.depth)[None],
                  torch.from_numpy(scene.K).float()[None], threshold=0.5)[0]
    assert len(dets) == len(targets.objects)
    for det in dets:
        k = int(det.z_shape[0])
        o = targets.objects[k]
        gt = scene.objects[o["index"]]
        assert det.peak == o["peak"] and det.class_name == gt.class_name
        assert det.score == pytest.approx(1.0)
        np.testing.assert_allclose(det.R.numpy(), gt.T_cam_obj[:3, :3], atol=1e-5)
        np.testing.assert_allclose(det.t.numpy(), gt.T_cam_obj[:3, 3], atol=1e-5)
        assert det.scale == pytest.approx(gt.shape.diag, rel=1e-5)
        # the instance mask from the vertex offsets is the object's own pixels
        own = scene.instance == o["index"] + 1
        inter = (det.mask.numpy() & own).sum()
        assert inter / (det.mask.numpy() | own).sum() > 0.75
    # peaks lie on their object, every object cell points at its peak
    for o in targets.objects:
        r, c = o["peak"]
        assert targets.owner[r, c] == o["index"]
        cells = np.argwhere(targets.owner == o["index"])
        np.testing.assert_allclose(cells + targets.vertex[:, cells[:, 0], cells[:, 1]].T,
                                   np.tile([r, c], (len(cells), 1)))
    assert targets.heatmap.max() == pytest.approx(1.0)
    assert STRIDE * targets.seg.shape[0] == 96


# ------------------------------------------------------------------ train / predict / eval


def _user_error(args, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        pose_main(["shapo", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pose: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny priors and a tiny network overfitted on one generated scene."""
    root = tmp_path_factory.mktemp("shapo_net")
    torch.set_num_threads(1)
    pose_main(["shapo", "train-priors", "--synthetic", "--out", str(root / "priors"),
               "--quiet", "--threads", "1", *TINY_PRIORS])
    ck = root / "net"
    pose_main(["shapo", "train", "--synthetic", "--priors", str(root / "priors"), "--out",
               str(ck), "--scenes", "1", "--batch-size", "1", "--steps", "400", "--lr",
               "5e-3", "--jitter", "0", "--warmup-steps", "10", "--log-every", "20",
               "--quiet", "--threads", "1", *TINY_NET])
    return root, ck


def _write_real275(folder, scene):
    """A generated scene as a REAL275 frame (colour png, 16-bit depth in mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "0000"
    cv2.imwrite(f"{prefix}_color.png", np.round(scene.rgb[:, :, ::-1] * 255).astype(np.uint8))
    cv2.imwrite(f"{prefix}_depth.png", np.round(scene.depth * 1000).astype(np.uint16))
    K = scene.K
    return prefix, f"{K[0, 0]},{K[1, 1]},{K[0, 2] - 0.5},{K[1, 2] - 0.5}"


def _scene():
    pool = prior_shapes(PriorTrainConfig(instances_per_category=1))
    return render_scene(SCENE_SEED, SceneConfig(width=SIZE, height=SIZE), pool)


def test_tiny_network_overfits_one_scene(trained):
    _, ck = trained
    history = json.loads((ck / "history.json").read_text())
    assert history[-1]["loss"] < 0.2 * history[0]["loss"]
    assert history[-1]["heatmap"] < 0.3 * history[0]["heatmap"]
    config = json.loads((ck / "config.json").read_text())
    assert config["kind"] == "shapo_net" and config["step"] == 400


def test_predict_round_trips_a_real275_frame(trained, tmp_path, capsys):
    _, ck = trained
    scene = _scene()
    prefix, intr = _write_real275(tmp_path / "scene_1", scene)
    out = tmp_path / "pred"
    capsys.readouterr()
    pose_main(["shapo", "predict", "--checkpoint", str(ck), "--rgb", f"{prefix}_color.png",
               "--depth", f"{prefix}_depth.png", "--intrinsics", intr, "--out", str(out),
               "--refinement.iterations", "5", "--mesh-resolution", "16", "--threads", "1",
               "--quiet"])
    printed = capsys.readouterr().out
    record = json.loads((out / "detections.json").read_text())
    assert (out / "overlay.png").is_file()
    np.testing.assert_allclose(record["K"], scene.K, atol=1e-9)
    big = [o for o in scene.objects if o.pixels >= 80]
    assert len(record["objects"]) >= len(big) >= 1
    # every well-seen object is found with its class and a single-shot pose within 10deg10cm
    for gt in big:
        errs = [pose_error(np.array(p["single_shot"]["T_cam_obj"]), gt.T_cam_obj,
                           gt.class_name, gt.handle_visible)
                for p in record["objects"] if p["class"] == gt.class_name]
        assert errs and min(d + c for d, c in errs) < 20, (gt.class_name, errs)
        assert any(d <= 10 and c <= 10 for d, c in errs), (gt.class_name, errs)
    for k, obj in enumerate(record["objects"]):
        assert np.allclose(np.array(obj["T_cam_obj"])[3], [0, 0, 0, 1])
        assert f"object {k} {obj['class']}" in printed
        if obj["refined"]:
            assert "mm refined" in printed and obj["refine_s"] > 0
            assert obj["depth_to_surface_m"]["refined"] is not None
        if obj["mesh"]:
            assert (out / obj["mesh"]).is_file()
    # the same frame through --real275 (intrinsics given): the same single-shot objects
    out2 = tmp_path / "pred2"
    pose_main(["shapo", "predict", "--checkpoint", str(ck), "--real275", str(prefix),
               "--intrinsics", intr, "--out", str(out2), "--no-refine", "--quiet",
               "--mesh-resolution", "16", "--threads", "1"])
    again = json.loads((out2 / "detections.json").read_text())
    assert [o["class"] for o in again["objects"]] == [o["class"] for o in record["objects"]]
    np.testing.assert_allclose([o["single_shot"]["T_cam_obj"] for o in again["objects"]],
                               [o["single_shot"]["T_cam_obj"] for o in record["objects"]],
                               atol=1e-5)
    assert not any(o["refined"] for o in again["objects"])
    # an existing output that is not ours is not replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    err = _user_error(["predict", "--checkpoint", str(ck), "--real275", str(prefix),
                       "--out", str(tmp_path / "other"), "--no-refine"], capsys)
    assert "other" in err


def test_predict_resizes_larger_frames_of_a_real275_folder(trained, tmp_path):
    """The training scene rendered at twice the resolution (twice the focal length) is
    resized to the network's focal length; every frame of the folder gets a subfolder."""
    _, ck = trained
    pool = prior_shapes(PriorTrainConfig(instances_per_category=1))
    scene = render_scene(SCENE_SEED, SceneConfig(width=2 * SIZE, height=2 * SIZE), pool)
    prefix, intr = _write_real275(tmp_path / "scene_1", scene)
    for suffix in ("color", "depth"):
        (tmp_path / "scene_1" / f"0001_{suffix}.png").write_bytes(
            (tmp_path / "scene_1" / f"0000_{suffix}.png").read_bytes())
    out = tmp_path / "pred"
    pose_main(["shapo", "predict", "--checkpoint", str(ck), "--real275",
               str(tmp_path / "scene_1"), "--intrinsics", intr, "--out", str(out),
               "--no-refine", "--quiet", "--mesh-resolution", "16", "--threads", "1"])
    assert json.loads((out / "frames.json").read_text()) == ["0000", "0001"]
    record = json.loads((out / "0000" / "detections.json").read_text())
    assert record["objects"] == json.loads((out / "0001" / "detections.json").read_text()
                                           )["objects"]
    big = [o for o in scene.objects if o.pixels >= 4 * 80]
    assert big
    for gt in big:
        errs = [pose_error(np.array(p["T_cam_obj"]), gt.T_cam_obj, gt.class_name,
                           gt.handle_visible)
                for p in record["objects"] if p["class"] == gt.class_name]
        assert any(d <= 10 and c <= 10 for d, c in errs), (gt.class_name, errs)
    # masks come back at the frame's resolution
    assert all(o["mask_pixels"] > 100 for o in record["objects"]
               if o["class"] in {g.class_name for g in big})


def test_eval_prints_and_writes_metrics(trained, tmp_path, capsys):
    _, ck = trained
    capsys.readouterr()
    pose_main(["shapo", "eval", "--checkpoint", str(ck), "--synthetic", "--seed", "5",
               "--scenes", "1", "--out", str(tmp_path / "ev"), "--refinement.iterations",
               "3", "--quiet", "--threads", "1"])
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(metrics["single_shot"]) == {"iou25", "iou50", "5deg2cm", "5deg5cm",
                                           "10deg5cm", "10deg10cm"}
    assert set(metrics["refined"]) == set(metrics["single_shot"])
    for part in ("single_shot", "refined"):
        assert all(0.0 <= v <= 1.0 for v in metrics[part].values())
    assert "10deg10cm" in printed and "single-shot" in printed
    assert metrics["frames"] == 1 and metrics["objects"] == len(
        render_scene(5, SceneConfig(width=SIZE, height=SIZE)).objects)


def test_eval_out_is_replaced_only_with_overwrite(trained, tmp_path, capsys):
    """``eval --out`` refuses a non-empty folder it did not write (exit 2, one line, the
    folder untouched); ``--overwrite`` replaces it; an earlier eval output is replaced."""
    _, ck = trained
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    base = ["eval", "--checkpoint", str(ck), "--synthetic", "--seed", "5", "--no-refine",
            "--out", str(other), "--quiet", "--threads", "1"]
    err = _user_error([*base, "--scenes", "1"], capsys)
    assert "--overwrite" in err and "other" in err
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]
    assert (other / "keep.txt").read_text() == "keep"
    pose_main(["shapo", *base, "--scenes", "1", "--overwrite"])
    assert sorted(p.name for p in other.iterdir()) == ["metrics.json"]
    first = json.loads((other / "metrics.json").read_text())
    assert first["frames"] == 1 and "refined" not in first
    # an earlier output of eval (it holds metrics.json) is replaced without --overwrite
    pose_main(["shapo", *base, "--scenes", "2"])
    again = json.loads((other / "metrics.json").read_text())
    assert again["frames"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_eval_on_a_nocs_folder(trained, tmp_path):
    """``eval --nocs``: the training scene in NOCS's full layout (mask, meta, NOCS map:
    ground-truth poses by Umeyama); the overfitted network gets its object right."""
    _, ck = trained
    scene = _scene()
    prefix, intr = _write_real275(tmp_path / "real" / "scene_1", scene)
    mask = np.where(scene.instance > 0, scene.instance, 255).astype(np.uint8)
    cv2.imwrite(f"{prefix}_mask.png", np.repeat(mask[:, :, None], 3, -1))
    coord = scene.nocs.copy()
    coord[:, :, 2] = np.where(scene.instance > 0, 1 - coord[:, :, 2], 0)
    cv2.imwrite(f"{prefix}_coord.png", np.round(coord[:, :, ::-1] * 255).astype(np.uint8))
    (tmp_path / "real" / "scene_1" / "0000_meta.txt").write_text("".join(
        f"{k} {o.class_id} model_{k}\n" for k, o in enumerate(scene.objects, start=1)))
    pose_main(["shapo", "eval", "--checkpoint", str(ck), "--nocs", str(tmp_path / "real"),
               "--intrinsics", intr, "--no-refine", "--out", str(tmp_path / "ev"),
               "--quiet", "--threads", "1"])
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["frames"] == 1 and metrics["objects"] == len(scene.objects)
    assert "refined" not in metrics
    assert metrics["single_shot"]["10deg10cm"] == pytest.approx(1.0)


def test_errors_exit_2(trained, tmp_path, capsys):
    root, ck = trained
    scene = render_scene(3, SceneConfig(width=32, height=32))
    prefix, intr = _write_real275(tmp_path / "f", scene)
    rgb, depth = f"{prefix}_color.png", f"{prefix}_depth.png"
    base = ["predict", "--checkpoint", str(ck), "--out", str(tmp_path / "o")]
    err = _user_error([*base, "--rgb", str(tmp_path / "none.png"), "--depth", depth,
                       "--intrinsics", intr], capsys)
    assert "colour" in err and "does not exist" in err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    err = _user_error([*base, "--rgb", rgb, "--depth", str(bad), "--intrinsics", intr], capsys)
    assert "depth" in err and "not a readable image" in err
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((20, 32), 700, np.uint16))
    err = _user_error([*base, "--rgb", rgb, "--depth", str(small), "--intrinsics", intr],
                      capsys)
    assert "differ in size" in err
    metres = tmp_path / "metres.png"  # depth written in 10 um units: an unknown unit
    cv2.imwrite(str(metres), np.full((32, 32), 60000, np.uint16))
    err = _user_error([*base, "--rgb", rgb, "--depth", str(metres), "--intrinsics", intr],
                      capsys)
    assert "unknown unit" in err and "--depth-scale" in err
    err = _user_error([*base, "--rgb", rgb, "--depth", depth], capsys)
    assert "--intrinsics" in err
    err = _user_error([*base, "--rgb", rgb, "--depth", depth, "--intrinsics", "1,2,3"],
                      capsys)
    assert "fx,fy,cx,cy" in err
    err = _user_error(["predict", "--checkpoint", str(tmp_path / "nock"), "--out",
                       str(tmp_path / "o"), "--rgb", rgb, "--depth", depth, "--intrinsics",
                       intr], capsys)
    assert "does not exist" in err and "pose shapo train" in err
    err = _user_error(["predict", "--checkpoint", str(root / "priors"), "--out",
                       str(tmp_path / "o"), "--rgb", rgb, "--depth", depth, "--intrinsics",
                       intr], capsys)
    assert "shapo_net" in err
    err = _user_error(["eval", "--checkpoint", str(ck)], capsys)
    assert "--synthetic" in err
    err = _user_error(["train", "--synthetic", "--out", str(tmp_path / "n")], capsys)
    assert "--priors" in err
    err = _user_error(["train", "--synthetic", "--priors", str(root / "priors"), "--out",
                       str(ck)], capsys)
    assert "--resume" in err
    assert not (tmp_path / "o").exists()
    assert math.isfinite(scene.depth.sum())
