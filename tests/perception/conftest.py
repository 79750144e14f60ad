"""Shared fixtures: one tiny synthetic nuScenes dataset per test session, and the real
nuScenes fixture in ../shared/datasets (tests that need it skip where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from perception.synth import SynthSpec, write_dataset

# Two scenes (scene-0103 -> mini_val, scene-0061 -> mini_train) of three keyframes with
# two sweeps between keyframes: the smallest set with both splits, sweep chains and
# moving objects; 480x270 images keep projections meaningful at a few pixels.
TINY_SPEC = SynthSpec(scenes=2, samples_per_scene=3, sweeps_per_sample=2, seed=7,
                      image_width=480, image_height=270)

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "nuscenes_fixture"


@pytest.fixture(scope="session")
def tiny_spec() -> SynthSpec:
    return TINY_SPEC


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "nuscenes"
    write_dataset(TINY_SPEC, root)
    return root


@pytest.fixture(scope="session")
def nusc(synth_root: Path):
    from perception.data import open_nuscenes

    return open_nuscenes(synth_root, TINY_SPEC.version)


@pytest.fixture(scope="session")
def fixture_root() -> Path:
    if not (FIXTURE / "nus_info.pkl").is_file():
        pytest.skip(f"real nuScenes fixture not found at {FIXTURE} (../shared/datasets)")
    return FIXTURE
