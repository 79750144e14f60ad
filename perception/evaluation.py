"""Evaluation with the official nuScenes devkit (``DetectionEval``), unmodified.

:func:`evaluate` checks the results file first (:func:`perception.results.load_results`),
then runs ``DetectionEval`` on the split, and writes into the output folder, atomically:
``metrics.json`` (the devkit's summary: ``mean_ap``, ``nd_score``, ``tp_errors``,
``label_aps``, ... plus ``meta``, ``version`` and ``split``), the devkit's
``metrics_summary.json`` and ``metrics_details.json``, and its PR/TP-curve plots
(``plots/*.pdf``, and a ``.png`` of each to view anywhere). The JSON files are standard
JSON: metrics the devkit leaves undefined (NaN, e.g. the attribute error of barriers) are
``null``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geometry.errors import UserError
from geometry.io.atomic import atomic_directory
from geometry.io.jsonio import dumps_json
from geometry.progress import log_stage
from perception.data.nuscenes import open_nuscenes, split_sample_tokens
from perception.results import load_results

TP_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE",
            "vel_err": "mAVE", "attr_err": "mAAE"}


def detection_config(name: str = "detection_cvpr_2019"):
    """The devkit's detection config by name (``DetectionConfig``)."""
    from nuscenes.eval.common.config import config_factory

    try:
        return config_factory(name)
    except (AssertionError, ValueError):
        raise UserError(f"unknown evaluation config '{name}'; use detection_cvpr_2019.") from None


def evaluate(
    dataroot: str | os.PathLike,
    version: str,
    split: str,
    results_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    plots: bool = True,
    config_name: str = "detection_cvpr_2019",
    nusc=None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Validate ``results_path`` and score it with the devkit on ``split``.

    Args:
        nusc: an already loaded ``NuScenes`` for this dataroot/version (optional).
        quiet: no stage lines on stderr.

    Returns:
        the metrics summary (the devkit's ``DetectionMetrics.serialize()`` plus ``meta``).

    Raises:
        UserError: bad paths, split/version mismatch, or an invalid results file (one
            line per problem).
    """
    from nuscenes.eval.detection.evaluate import DetectionEval

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / "metrics.json").is_file())):
        raise UserError(f"--out {out} exists and is not an earlier evaluation folder; pass a "
                        "new folder (it is replaced as a whole).")
    if Path(results_path).resolve().is_relative_to(out.resolve()):
        raise UserError(f"the results file {results_path} lies inside --out {out}, which is "
                        "replaced; keep it elsewhere.")
    if nusc is None:
        log_stage(f"loading the {version} tables of {dataroot}", quiet)
        nusc = open_nuscenes(dataroot, version)
    config = detection_config(config_name)
    tokens = split_sample_tokens(nusc, split)
    log_stage(f"checking {results_path} ({len(tokens)} samples in {split})", quiet)
    results = load_results(results_path, tokens, split, config.max_boxes_per_sample)
    with atomic_directory(out_dir) as tmp:
        log_stage("matching boxes and scoring with the nuScenes devkit", quiet)
        # The devkit reports progress with print() and tqdm; keep our own output readable.
        with _silenced():
            evaluator = DetectionEval(nusc, config, str(results_path), eval_set=split,
                                      output_dir=str(tmp), verbose=False)
            metrics, metric_data = evaluator.evaluate()
        if plots:
            log_stage("rendering the PR and TP curves (PDF and PNG)", quiet)
            with _silenced():
                with warnings.catch_warnings(), _also_png():
                    # A perfect score makes the devkit's TP-curve axes degenerate.
                    warnings.filterwarnings("ignore", message="Attempting to set identical")
                    evaluator.render(metrics, metric_data)
        summary = metrics.serialize()
        summary["meta"] = dict(results["meta"])
        (tmp / "metrics_summary.json").write_text(dumps_json(summary))
        (tmp / "metrics_details.json").write_text(dumps_json(metric_data.serialize()))
        summary = dict(summary, version=version, split=split,
                       results=str(Path(results_path).resolve()))
        (tmp / "metrics.json").write_text(dumps_json(summary))
    return summary


def _silenced() -> contextlib.ExitStack:
    """Swallow what the devkit prints to stdout and stderr."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


@contextlib.contextmanager
def _also_png() -> Iterator[None]:
    """While active, every ``pyplot.savefig`` of a ``.pdf`` also writes a ``.png`` beside it.

    The devkit saves its curves as PDF only (its ``render`` builds the paths itself); a PNG
    opens in any image viewer and in a browser.
    """
    import matplotlib.pyplot as plt

    original = plt.savefig

    def savefig(fname, *args, **kwargs):
        result = original(fname, *args, **kwargs)
        if isinstance(fname, (str, os.PathLike)) and str(fname).endswith(".pdf"):
            original(str(fname)[:-4] + ".png", *args, **{**kwargs, "dpi": 100})
        return result

    plt.savefig = savefig
    try:
        yield
    finally:
        plt.savefig = original


def plot_files(out_dir: str | os.PathLike) -> list[Path]:
    """The PNG plots of an evaluation folder, the summary first."""
    plots = Path(out_dir) / "plots"
    found = sorted(plots.glob("*.png")) if plots.is_dir() else []
    return sorted(found, key=lambda p: p.name != "summary.png")


def format_metrics(summary: dict[str, Any]) -> str:
    """The headline metrics and the per-class table as text (the devkit's layout)."""
    lines = [f"mAP: {summary['mean_ap']:.4f}"]
    for key, short in TP_NAMES.items():
        lines.append(f"{short}: {summary['tp_errors'][key]:.4f}")
    lines.append(f"NDS: {summary['nd_score']:.4f}")
    lines.append("")
    lines.append(f"{'Object Class':<22}{'AP':>7}{'ATE':>7}{'ASE':>7}{'AOE':>7}{'AVE':>7}{'AAE':>7}")
    for name, ap in summary["mean_dist_aps"].items():
        tps = summary["label_tp_errors"][name]
        cells = [_cell(tps[k]) for k in TP_NAMES]
        lines.append(f"{name:<22}{ap:>7.3f}" + "".join(cells))
    return "\n".join(lines)


def _cell(value: float) -> str:
    return f"{'nan':>7}" if value is None or math.isnan(value) else f"{value:>7.3f}"
