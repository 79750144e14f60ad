"""Single-view fits: ``Method.min_images`` (fewer photos refused with one sentence, exit 2) and
InstantSplat from ONE photo (identity camera, monocular depth guess of
:mod:`reconstruction.engine.single_view`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geometry.errors import UserError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def object_photo():
    """A generated object on white (32 px) and its mask."""
    from reconstruction.upfusion.data import synthetic_sequence

    seq = synthetic_sequence(3, num_views=2, size=32, supersample=1)
    return seq.images[0], seq.masks[0]


def _write(folder, images) -> None:
    from geometry.io.images import write_png

    folder.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(images):
        write_png(folder / f"{k:03d}.png", im)


def test_single_view_init_domes_the_silhouette(object_photo):
    """The cloud covers exactly the foreground pixels, nearer in the middle than at the rim,
    from an identity camera; a photo without plain background becomes a plane at depth 1."""
    from reconstruction.engine.single_view import single_view_init
    from reconstruction.images import LoadedImage

    rgb, mask = object_photo
    image = LoadedImage(path=__import__("pathlib").Path("a.png"), rgb=rgb, focal_px=40.0,
                        camera_key=())
    init = single_view_init([image], None, None, seed=0)
    assert np.allclose(init.model.T_cam_world[0], np.eye(4))
    assert init.model.Ks[0, 0, 0] == 40.0 and init.stats["depth"] == "silhouette dome"
    pts = init.points_world
    assert len(pts) == int(mask.sum())
    uv = pts[:, :2] / pts[:, 2:] * 40.0 + 16.0  # back to the pixels they came from
    u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    assert mask.numpy()[v, u].all()
    assert pts[:, 2].max() == pytest.approx(1.0, abs=0.05)  # the rim at distance 1
    assert pts[:, 2].min() == pytest.approx(0.7, abs=0.02)  # the middle 30 % nearer
    assert np.allclose(init.model.points_world, [[0.0, 0.0, 1.0]])
    noise = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (32, 32, 3))).float()
    plane = single_view_init([LoadedImage(path=image.path, rgb=noise, focal_px=None,
                                          camera_key=())], None, None, seed=0)
    assert plane.stats["depth"] == "plane" and len(plane.points_world) == 32 * 32
    assert np.allclose(plane.points_world[:, 2], 1.0)
    assert plane.model.Ks[0, 0, 0] == pytest.approx(1.2 * 32)


def test_instantsplat_fits_one_photo(tmp_path, object_photo):
    """``recon fit`` (InstantSplat, the default method) from one photo writes splats that
    reproduce it."""
    from reconstruction.engine.config import FitConfig
    from reconstruction.methods import fit

    _write(tmp_path / "one", [object_photo[0]])
    out = tmp_path / "out"
    metrics = fit(FitConfig(images=tmp_path / "one", out=out, iterations=60, threads=1,
                            quiet=True))
    assert (out / "splats.ply").stat().st_size > 1000
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 1
    assert metrics["num_gaussians"] > 100
    rgb = object_photo[0]
    blank_psnr = float(-10 * torch.log10(((1.0 - rgb) ** 2).mean()))  # all background
    assert metrics["training_psnr_db"] > max(18.0, blank_psnr + 6.0), metrics


def test_min_images_is_one_sentence_and_exit_2(tmp_path, object_photo, run_recon):
    """A method with min_images=3 given 2 photos: one sentence, exit 2; the default (2)
    refuses one photo for a method that did not opt in."""
    from reconstruction.engine import gaussian_method
    from reconstruction.engine.config import FitConfig
    from reconstruction.methods import register, unregister

    _write(tmp_path / "two", [object_photo[0], object_photo[0]])
    method = register(gaussian_method("needs-three", "test: three photos.", min_images=3))
    try:
        assert method.min_images == 3
        code, err = run_recon("fit", "--method", "needs-three", "--images",
                              str(tmp_path / "two"), "--out", str(tmp_path / "out"))
        assert code == 2
        message = " ".join(err.split())
        assert "has 2 image(s) but at least 3" in message
        assert message.count(". ") == 0 and message.rstrip().endswith(".")
        assert not (tmp_path / "out").exists()
        two = gaussian_method("needs-two", "test: default.")
        assert two.min_images == 2
        _write(tmp_path / "one", [object_photo[0]])
        with pytest.raises(UserError, match="has 1 image"):
            two.fit(FitConfig(images=tmp_path / "one", out=tmp_path / "out1", threads=1,
                              quiet=True))
    finally:
        unregister("needs-three")


def test_instantsplat_single_view_bench_row_sees_the_object():
    """The bench's InstantSplat-from-one-view row: the one-photo cloud in UpSRT's reference
    frame reproduces its input view and, at the held-out cameras, is no worse than the
    all-background prediction (a wrong frame scores far below it: object off-place)."""
    from reconstruction.upfusion.benchmark import instantsplat_single_view_rows
    from reconstruction.upfusion.data import synthetic_sequence
    from reconstruction.upfusion.train import heldout_indices, psnr

    seq = synthetic_sequence(100_007, num_views=12, size=32, supersample=1)
    held = seq.images[torch.as_tensor(heldout_indices(len(seq)))]
    blank = psnr(torch.ones_like(held), held)
    r = instantsplat_single_view_rows([seq], iterations=60)
    assert r["instantsplat_input_psnr_1"] > 22.0, r
    assert r["instantsplat_psnr_1"] > blank, (r, blank)
