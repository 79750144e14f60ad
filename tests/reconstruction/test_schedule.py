"""The ``recon fit`` schedule (issue 22, part 5): the default step count for the number of
photos, ``--time-budget`` (on a fake clock: deterministic), and the flag on views whose
training PSNR stays far below the others'."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from reconstruction.engine.config import FitConfig, TrainConfig
from reconstruction.engine.schedule import (
    TimeBudget,
    default_iterations,
    low_psnr_message,
    low_psnr_views,
)
from reconstruction.methods import fit
from reconstruction.procedural import SceneConfig, render, write_photos

FAST = ["--max-size", "160", "--train.checkpoint-every", "0", "--quiet", "--threads", "1"]


# ---------------------------------------------------------------- the default count

def test_default_iterations_scale_with_the_photos():
    # 2-3 photos keep the schedule (and run time) of before; beyond, 3 photos' share of
    # 83 steps a photo
    assert [default_iterations(v) for v in (1, 2, 3, 4, 5, 7, 11, 12)] == \
        [250, 250, 250, 350, 450, 600, 950, 1000]
    assert FitConfig(images=Path("a"), out=Path("b")).iterations is None  # automatic


# ---------------------------------------------------------------- the time budget

class _Trainer:
    """What TimeBudget reads of a GaussianTrainer."""

    def __init__(self, iterations: int, views: int = 3) -> None:
        self.config = TrainConfig(iterations=iterations)
        self.data = SimpleNamespace(num_views=views)
        self.iteration = 0

    def set_iterations(self, iterations: int) -> None:
        assert iterations >= self.iteration
        self.config.iterations = iterations


def _simulate(budget_s: float, spent_before: float, iterations: int, coarse_s: float,
              fine_s, views: int = 3) -> tuple[_Trainer, TimeBudget, float]:
    """Run a fake schedule on a fake clock: coarse steps take ``coarse_s``, full-resolution
    ones ``fine_s(iteration)``; returns the trainer, the budget and the clock at the end of
    the run (training, then a full-resolution render per view and 1 s of writing)."""
    clock = [100.0]
    trainer = _Trainer(iterations, views)
    budget = TimeBudget(budget_s, spent_before=spent_before, clock=lambda: clock[0])
    start = clock[0] - spent_before
    budget.start()
    while trainer.iteration < trainer.config.iterations:
        coarse = trainer.iteration < trainer.config.coarse_fraction * trainer.config.iterations
        clock[0] += coarse_s if coarse else fine_s(trainer.iteration)
        trainer.iteration += 1
        budget.after_step(trainer, coarse)
    clock[0] += views * fine_s(trainer.iteration) + 1.0
    return trainer, budget, clock[0] - start


def test_time_budget_shortens_the_schedule_to_fit():
    # steps of 0.1 s (coarse) and 0.2 s; 10.05 s spent before training; 60 s in all
    trainer, budget, total = _simulate(60.0, 10.05, 1000, 0.1, lambda it: 0.2)
    first = budget.decisions[0]
    # after 2 unmeasured + 8 measured steps: 57 s (5 % kept free) - 11.05 s spent leaves
    # 45.95 s = 0.1 (ceil(N/2) - 10) + 0.2 floor(N/2) + 3 x 0.2 + 1  ->  N = 302
    assert (first.iteration, first.iterations) == (10, 302)
    assert first.spent_s == pytest.approx(11.05)
    assert first.step_s == pytest.approx(0.2) and first.coarse_step_s == pytest.approx(0.1)
    assert trainer.config.iterations == trainer.iteration == 302  # later looks kept it
    assert [d.iterations for d in budget.decisions] == [302] * len(budget.decisions)
    assert 0.9 * 60.0 < total <= 0.95 * 60.0


def test_time_budget_follows_steps_that_slow_down():
    """Full-resolution steps 3x the coarse ones (the first estimate says 2x), and slower
    as the splats grow: the later looks shorten the schedule further, and the run fits."""
    def fine(it: int) -> float:
        return 0.3 + 0.001 * it

    trainer, budget, total = _simulate(120.0, 5.0, 2000, 0.1, fine)
    counts = [d.iterations for d in budget.decisions]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    assert trainer.iteration == trainer.config.iterations == counts[-1]
    assert total <= 120.0, total
    assert total > 0.8 * 120.0, total  # and not far below it


def test_a_budget_spent_before_training_stops_after_the_first_look():
    trainer, budget, _ = _simulate(30.0, 40.0, 500, 0.1, lambda it: 0.2)
    assert budget.decisions[0].iterations == budget.decisions[0].iteration == 10
    assert trainer.iteration == 10


class _FakeTime:
    """``time`` for reconstruction.engine.fit: a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("schedule")
    generated = render(SceneConfig(kind="arc", num_views=3, width=160, height=120, seed=2))
    write_photos(generated, folder / "images")
    return folder / "images", generated


def _budget_run(images: Path, out: Path, monkeypatch, stop_at: int | None = None,
                resume: bool = False) -> tuple[dict | None, list]:
    """A 60-step fit with a 40 s budget on a fake clock (1 s a step; at 160 px every step
    is full size), checkpoints every 6 steps, Ctrl-C after step ``stop_at``."""
    import reconstruction.engine.fit as engine_fit

    fake = _FakeTime()
    monkeypatch.setattr(engine_fit, "time", fake)
    seen = []

    def tick(trainer, _images):
        seen.append((trainer.iteration, trainer.config.iterations,
                     trainer.sh_degree_at(trainer.iteration)))
        fake.now += 1.0
        if trainer.iteration == stop_at:
            raise KeyboardInterrupt

    config = FitConfig(images=images, out=out, iterations=60, max_size=160, time_budget=40.0,
                       threads=1, quiet=False, seed=3, resume=resume)
    config.train.checkpoint_every = 6
    try:
        return fit(config, callbacks=[tick]), seen
    except KeyboardInterrupt:
        return None, seen


@pytest.fixture(scope="module")
def budget_run(scene, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        out = tmp_path_factory.mktemp("budget") / "out"
        metrics, seen = _budget_run(scene[0], out, monkeypatch)
    return out, metrics, seen


def test_fit_with_a_time_budget_records_what_it_decided(budget_run):
    """A 40 s budget for a 60-step run of 1 s steps: the schedule shrinks, metrics.json says
    so, and the trainer's schedules follow the shorter count."""
    out, metrics, seen = budget_run
    # 40 x 0.95 = 38 s: after 10 steps (9 s on the clock: the first step's tick comes after
    # the look) 29 s are left for N - 10 steps, 3 evaluation renders and 1 s: N = 35
    assert metrics["iterations"] == 35 == seen[-1][0] == len(seen)
    schedule = metrics["schedule"]
    assert schedule["requested"] == 60 and schedule["rule"] == "--iterations"
    assert schedule["time_budget_s"] == 40.0 and schedule["iterations"] == 35
    assert schedule["decisions"][0] == {"iteration": 10, "iterations": 35, "spent_s": 9.0,
                                        "step_s": 1.0, "coarse_step_s": None}
    assert [d["iterations"] for d in schedule["decisions"]] == [35] * 7  # every 4 steps
    # the schedules derive from the new count: the SH degree rises every 35 // 4 = 8 steps
    # (it rose every 15 on the way to 60)
    assert [deg for it, n, deg in seen] == [min(3, it // 15) for it in range(1, 10)] + \
        [min(3, it // 8) for it in range(10, 36)]
    assert metrics["timings_s"]["total"] <= 40.0


def test_a_budget_run_logs_and_resumes_its_decision(budget_run, scene, tmp_path, monkeypatch,
                                                    capsys):
    """Ctrl-C after the budget shortened the schedule; --resume continues the shortened
    schedule (the checkpoint holds it) and ends as the uninterrupted run did."""
    reference, metrics, _ = budget_run
    out = tmp_path / "out"
    done, _ = _budget_run(scene[0], out, monkeypatch, stop_at=14)
    assert done is None
    err = capsys.readouterr().err
    assert "schedule: 60 steps (--iterations)" in err
    assert "time budget 40 s (9 s spent, 1.000 s per step): shortens the schedule from 60 " \
        "to 35 steps" in err
    saved = json.loads((tmp_path / ".out.resume" / "state.json").read_text())
    assert saved["trainer"]["iteration"] == 12 and saved["trainer"]["iterations"] == 35
    assert saved["schedule"]["spent_s"] == 12.0
    resumed, seen = _budget_run(scene[0], out, monkeypatch, resume=True)
    err = capsys.readouterr().err
    assert "schedule: 60 steps (--iterations), shortened to 35 by the time budget" in err
    assert resumed["iterations"] == 35 and seen[0][:2] == (13, 35) and seen[-1][0] == 35
    assert (out / "splats.ply").read_bytes() == (reference / "splats.ply").read_bytes()


def test_default_schedule_is_logged(scene, tmp_path, run_recon, monkeypatch):
    """Without --iterations the rule's count runs (shortened here: its values are tested
    above) and the log and metrics.json say which rule."""
    import reconstruction.engine.fit as engine_fit

    monkeypatch.setattr(engine_fit, "default_iterations", lambda views: 5 * views)
    images, _ = scene
    out = tmp_path / "out"
    fast = [a for a in FAST if a != "--quiet"]
    code, err = run_recon("fit", "--images", str(images), "--out", str(out), *fast)
    assert code == 0, err
    assert "schedule: 15 steps (default for 3 photos: max(250, 250/3 x photos, rounded up " \
        "to 50))" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 15 and metrics["schedule"]["requested"] == 15
    assert metrics["schedule"]["time_budget_s"] is None and metrics["low_psnr_views"] == []


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_budget_that_is_not_positive_is_refused(scene, tmp_path, run_recon, value):
    images, _ = scene
    out = tmp_path / "out"
    code, err = run_recon("fit", "--images", str(images), "--out", str(out),
                          "--time-budget", value, *FAST)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last == f"recon: error: --time-budget {float(value):g} must be a positive number " \
        "of seconds.", err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, lock or checkpoint


# ---------------------------------------------------------------- low-PSNR views

def test_low_psnr_rule_values():
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    # the case: one view at 9.3 dB among views near 18.5
    assert low_psnr_views(names, [18.9, 18.1, 9.3, 19.4, 18.4]) == [
        {"name": "c.jpg", "psnr": 9.3, "median_psnr": 18.4}]
    # below 15 dB and 3 dB under the median: flagged; a hard scene for every view: none
    assert [v["name"] for v in low_psnr_views(names, [17.4, 13.7, 17.0, 16.9, 18.0])] \
        == ["b.jpg"]
    assert low_psnr_views(names, [12.0, 11.1, 13.2, 12.5, 10.9]) == []
    # 4.9 dB below a good median: not far enough
    assert low_psnr_views(names, [25.0, 20.1, 25.2, 24.8, 25.1]) == []
    assert low_psnr_views(["a", "b"], [20.0, 8.0]) == [
        {"name": "b", "psnr": 8.0, "median_psnr": 14.0}]
    message = low_psnr_message(low_psnr_views(names, [18.9, 18.1, 9.3, 19.4, 18.4]))
    assert "c.jpg 9.3 dB" in message and "median 18.4 dB" in message
    assert "remove the photo" in message and "pose" in message


def test_a_wrong_photo_is_flagged_by_name(tmp_path, run_recon):
    """Four photos of a scene, one of them far darker (another exposure: it registers, but
    no scene renders it alongside the others): its training PSNR stays far below the
    others' and it is named, in metrics.json and in the log."""
    import numpy as np
    from PIL import Image

    generated = render(SceneConfig(kind="arc", num_views=4, width=160, height=120, seed=2))
    images = tmp_path / "images"
    write_photos(generated, images)
    dark = np.asarray(Image.open(images / "view_02.png").convert("RGB"), dtype=np.float32)
    Image.fromarray((dark * 0.3).round().astype(np.uint8)).save(images / "view_02.png")
    out = tmp_path / "out"
    fast = [a for a in FAST if a != "--quiet"]
    code, err = run_recon("fit", "--images", str(images), "--out", str(out),
                          "--iterations", "60", *fast)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    per_view = list(metrics["training_psnr_db_per_view"].values())
    (flag,) = metrics["low_psnr_views"]
    assert flag["name"] == "view_02.png"
    assert flag["psnr"] == pytest.approx(per_view[2])
    assert flag["median_psnr"] == pytest.approx(float(np.median(per_view)))
    others = [p for k, p in enumerate(per_view) if k != 2]
    assert flag["psnr"] < min(others) - 5.0, per_view
    warning = " ".join(line.strip() for line in err.splitlines())
    assert "view_02.png" in warning and "remove the photo" in warning
    assert math.isfinite(flag["psnr"])
