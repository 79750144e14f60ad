"""What keeps `recon fit`'s start reproducible and sane: COLMAP numbers the photos in order
and its mapper runs on one thread (the same cameras on every run), and opacities outside
(0, 1) are refused up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reconstruction.engine.config import FitConfig
from reconstruction.engine.fit import initial_scene

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "recon_sample"


def test_initial_scene_opacities_of_points_and_coverage_seeds():
    config = FitConfig(images=Path("in"), out=Path("out"))
    gen = torch.Generator().manual_seed(0)
    state = {"init.points": torch.rand(5, 3, generator=gen),
             "init.colors": torch.rand(5, 3, generator=gen),
             "init.fill_points": torch.rand(2, 3, generator=gen),
             "init.fill_colors": torch.rand(2, 3, generator=gen),
             "init.fill_scales": torch.full((2,), 0.01)}
    scene = initial_scene(config, state)
    expected = torch.tensor([config.train.initial_opacity] * 5
                            + [config.init_options.fill_opacity] * 2)
    torch.testing.assert_close(torch.sigmoid(scene.logit_opacities), expected)
    torch.testing.assert_close(scene.means[5:], state["init.fill_points"])
    torch.testing.assert_close(scene.log_scales[5:], torch.full((2, 3), 0.01).log())


@pytest.mark.parametrize("flag", ["--init-options.fill-opacity", "--train.initial-opacity"])
@pytest.mark.parametrize("value", ["0", "1", "1.5"])
def test_an_opacity_outside_0_1_is_refused(flag, value, tmp_path, run_recon):
    images = tmp_path / "images"
    images.mkdir()
    code, err = run_recon("fit", "--images", str(images), "--out", str(tmp_path / "out"),
                          flag, value, "--quiet")
    assert code == 2
    assert f"{flag} {float(value):g} must be an opacity strictly between 0 and 1." in err
    assert not (tmp_path / "out").exists()


def test_colmap_mapper_runs_on_one_thread_whatever_the_fit_uses(monkeypatch, tmp_path,
                                                                run_recon):
    # COLMAP's bundle adjustment gives slightly different cameras from run to run on more
    # threads: the fit's --threads reaches feature extraction and matching only.
    from geometry.errors import UserError
    from reconstruction.init import cgi

    def fake_sfm(images, work_dir, config, seed):
        raise UserError(f"SfM threads {config.threads}, mapper {config.mapper_threads}.")

    monkeypatch.setattr(cgi, "run_sfm", fake_sfm)
    code, err = run_recon("fit", "--images", str(SAMPLE), "--out", str(tmp_path / "out"),
                          "--threads", "2", "--quiet")
    assert code == 2 and "SfM threads 2, mapper 1." in err
    code, err = run_recon("fit", "--images", str(SAMPLE), "--out", str(tmp_path / "out"),
                          "--threads", "1", "--init-options.sfm.mapper-threads", "2", "--quiet")
    assert code == 2 and "SfM threads 1, mapper 2." in err
    assert not (tmp_path / "out").exists()


def test_photos_are_numbered_in_order_before_the_parallel_extraction(tmp_path):
    # Parallel extraction numbers the images as its threads finish; the database ids (which
    # order the pairs and RANSAC's random streams) must follow the photos' order instead.
    import pycolmap

    from reconstruction.images import load_images
    from reconstruction.init.config import SfmConfig
    from reconstruction.init.sfm import extract_and_match, image_file_name

    images = load_images(SAMPLE, max_size=200)
    for run in range(3):
        database = extract_and_match(images, tmp_path / str(run), SfmConfig(threads=4), 0, {})
        db = pycolmap.Database.open(str(database))
        try:
            ids = {im.name: im.image_id for im in db.read_all_images()}
        finally:
            db.close()
        assert ids == {image_file_name(i): i + 1 for i in range(len(images))}
