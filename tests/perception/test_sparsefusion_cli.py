"""SparseFusion end to end: ``train`` and ``detect`` through the CLI on the tiny synthetic
dataset (results checked and scored by the devkit), and inference on the real nuScenes
fixture (one camera + LiDAR)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.cli import main as perception_main
from perception.sparsefusion.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _tiny_checkpoint(folder: Path, modality: str = "fusion") -> Path:
    from perception.sparsefusion.checkpoint import save_checkpoint
    from perception.sparsefusion.model import SparseFusion

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sparsefusion import tiny_config

    torch.manual_seed(0)
    config = tiny_config(modality)
    config.voxel.point_range = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    config.voxel.voxel_size = (3.2, 3.2, 1.0)
    save_checkpoint(folder, SparseFusion(config), config)
    return folder


def test_cli_train_detect_and_devkit_score(synth_root: Path, tmp_path: Path):
    """One training step of the small preset, then detection on mini_val through the
    ``perception`` CLI; the results file passes the checks and the devkit scores it."""
    ckpt = tmp_path / "ckpt"
    perception_main(["train", "--dataroot", str(synth_root), "--out", str(ckpt),
                     "--preset", "small", "--modality", "fusion", "--epochs", "1",
                     "--limit", "1"])
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["model"]["modality"] == "fusion" and saved["step"] == 1
    assert saved["model"]["voxel"]["voxel_size"] == [0.8, 0.8, 0.5]
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "train_state.pt").is_file()
    # Resuming after the last epoch trains nothing more and keeps the step count.
    main(["train", "--dataroot", str(synth_root), "--out", str(ckpt), "--preset", "small",
          "--modality", "fusion", "--epochs", "1", "--limit", "1", "--resume"])
    assert json.loads((ckpt / "config.json").read_text())["step"] == 1

    results = tmp_path / "results.json"
    perception_main(["detect", "--dataroot", str(synth_root), "--detector", "sparsefusion",
                     "--checkpoint", str(ckpt), "--out", str(results)])
    from perception.data import open_nuscenes, split_sample_tokens
    from perception.evaluation import evaluate
    from perception.results import load_results

    nusc = open_nuscenes(synth_root, "v1.0-mini")
    tokens = split_sample_tokens(nusc, "mini_val")
    data = load_results(results, tokens, "mini_val")
    assert data["meta"]["use_lidar"] and data["meta"]["use_camera"]
    assert all(0 < len(boxes) <= 300 for boxes in data["results"].values())
    summary = evaluate(synth_root, "v1.0-mini", "mini_val", results, tmp_path / "eval",
                       plots=False, nusc=nusc)
    assert 0.0 <= summary["mean_ap"] <= 1.0 and 0.0 <= summary["nd_score"] <= 1.0


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "perception.sparsefusion.cli", "train",
                           "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--modality" in proc.stdout and "--max-minutes" in proc.stdout


def test_cli_errors_are_one_line(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["detect", "--dataroot", str(tmp_path), "--checkpoint", str(tmp_path / "none"),
              "--out", str(tmp_path / "r.json")])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "config.json" in message


@pytest.mark.parametrize("args, expected", [
    (["--detector", "sparsefusion"], "needs --checkpoint"),
    (["--detector", "oracle", "--checkpoint", "ckpt"], "takes none"),
    (["--detector", "sparsefusion", "--checkpoint", "ckpt", "--device", "cuda:7"],
     "needs a CUDA GPU"),
])
def test_perception_detect_checkpoint_errors(tmp_path: Path, capsys, args, expected):
    if "cuda:7" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _tiny_checkpoint(tmp_path / "ckpt")
    args = [str(tmp_path / "ckpt") if a == "ckpt" else a for a in args]
    with pytest.raises(SystemExit) as err:
        perception_main(["detect", "--dataroot", str(tmp_path), "--out",
                         str(tmp_path / "r.json"), *args])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and expected in message
    assert not (tmp_path / "r.json").exists()


def test_runs_on_real_nuscenes_fixture(fixture_root: Path, tmp_path: Path):
    """The real fixture: 100-point LiDAR files and one CAM_BACK_LEFT image (the other five
    cameras' files are absent and are dropped)."""
    from perception.data import InfoDataset, load_image
    from perception.detectors import run_detector
    from perception.results import validate_results
    from perception.sparsefusion.infer import SparseFusionDetector

    detector = SparseFusionDetector(_tiny_checkpoint(tmp_path / "ckpt"))
    dataset = InfoDataset(fixture_root / "nus_info.pkl", fixture_root, load_images=False)
    image_path = next((fixture_root / "samples" / "CAM_BACK_LEFT").glob("*.jpg"))
    samples = []
    for i in range(len(dataset)):
        sample = dataset[i]
        camera = sample.cameras["CAM_BACK_LEFT"]
        image = load_image(image_path)
        camera = replace(camera, image=image, image_path=image_path,
                         image_size=(image.shape[1], image.shape[0]))
        samples.append(replace(sample, cameras={"CAM_BACK_LEFT": camera}))
    results = run_detector(detector, samples)
    assert validate_results({"meta": {"use_camera": True, "use_lidar": True, "use_radar": False,
                                      "use_map": False, "use_external": False},
                             "results": results}, [s.token for s in samples], "fixture") == []
    for sample in samples:
        boxes = results[sample.token]
        assert len(boxes) == detector.config.lidar.num_queries + detector.config.camera.num_queries
        assert np.all(np.isfinite([b["translation"] for b in boxes]))


class _NotWeights:
    """Pickled into a .pt/.pth: torch.load(weights_only=True) refuses it."""


def _no_torch_internals(message: str) -> None:
    assert "`weights_only`" not in message and "Re-running" not in message
    assert "SafetensorError" not in message and "\n" not in message


def test_detect_with_a_corrupt_checkpoint_is_one_sentence(tmp_path: Path, capsys) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_text("not a safetensors file, just text")
    with pytest.raises(SystemExit) as err:
        perception_main(["detect", "--dataroot", str(tmp_path), "--detector", "sparsefusion",
                         "--checkpoint", str(ckpt), "--out", str(tmp_path / "r.json")])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"perception: error: {ckpt / 'model.safetensors'} is not a "
                              "SparseFusion weights file")
    _no_torch_internals(message)
    assert not (tmp_path / "r.json").exists()


def test_corrupt_training_inputs_are_user_errors(tmp_path: Path) -> None:
    """--init-from, --image-backbone-weights (safetensors and a .pth of Python objects) and
    --resume's train_state.pt: each names its file and says what to do."""
    from geometry.errors import UserError
    from perception.sparsefusion.model import SparseFusion
    from perception.sparsefusion.train import _load_train_state, init_from_checkpoints

    sys.path.insert(0, str(Path(__file__).parent))
    from test_sparsefusion import tiny_config

    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    model = SparseFusion(tiny_config("fusion"))
    (ckpt / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UserError) as info:
        init_from_checkpoints(model, [ckpt])
    assert str(info.value).startswith(f"{ckpt / 'model.safetensors'} is not a SparseFusion "
                                      "weights file") and "--init-from" in str(info.value)
    _no_torch_internals(str(info.value))

    for name in ("backbone.safetensors", "backbone.pth"):
        path = tmp_path / name
        if name.endswith(".pth"):
            torch.save({"conv1.weight": _NotWeights()}, path)
        else:
            path.write_text("garbage")
        config = tiny_config("camera")
        config.camera.backbone_weights = str(path)
        with pytest.raises(UserError) as info:
            SparseFusion(config)
        message = str(info.value)
        assert message.startswith(f"{path} is not a torchvision ResNet weights file"), message
        assert "--image-backbone-weights" in message
        _no_torch_internals(message)

    good = _tiny_checkpoint(tmp_path / "good")
    optimizer = torch.optim.AdamW(model.parameters())
    for content in ("bytes", "objects"):
        state = good / "train_state.pt"
        if content == "bytes":
            state.write_bytes(b"PK\x03\x04 truncated")
        else:
            torch.save({"optimizer": _NotWeights(), "epoch": 1}, state)
        with pytest.raises(UserError) as info:
            _load_train_state(good, model, optimizer)
        message = str(info.value)
        assert message.startswith(f"{state} is not the training state"), message
        assert "without --resume" in message
        _no_torch_internals(message)


def test_a_planted_cache_file_is_refused(synth_root: Path, tmp_path: Path, capsys) -> None:
    """A .pt under the sample cache's name that is not one (was UnpicklingError)."""
    from perception.sparsefusion.config import PRESETS
    from perception.sparsefusion.train import load_samples

    cache = tmp_path / "cache"
    samples = load_samples(synth_root, "v1.0-mini", "mini_train", PRESETS["small"]("fusion"),
                           cache, limit=1)
    (written,) = cache.glob("samples_*.pt")
    again = load_samples(synth_root, "v1.0-mini", "mini_train", PRESETS["small"]("fusion"),
                         cache, limit=1)
    assert again[0].token == samples[0].token
    torch.testing.assert_close(again[0].points, samples[0].points)
    torch.save([{"token": _NotWeights()}], written)
    with pytest.raises(SystemExit) as err:
        perception_main(["train", "--dataroot", str(synth_root), "--out", str(tmp_path / "o"),
                         "--preset", "small", "--modality", "fusion", "--epochs", "1",
                         "--limit", "1", "--cache-dir", str(cache)])
    assert err.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"perception: error: {written} is not a sample cache")
    assert "delete it" in message
    _no_torch_internals(message)
    torch.save([{"token": "x"}], written)  # a tensor file, but not of prepared samples
    with pytest.raises(SystemExit):
        perception_main(["train", "--dataroot", str(synth_root), "--out", str(tmp_path / "o"),
                         "--preset", "small", "--modality", "fusion", "--epochs", "1",
                         "--limit", "1", "--cache-dir", str(cache)])
    assert "its entries are not prepared samples" in capsys.readouterr().err
