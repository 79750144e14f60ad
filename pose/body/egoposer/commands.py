"""What the ``pose egoposer`` subcommands do, as functions (the CLI only parses options).

- :func:`run_train`: motion data -> trained checkpoint folder.
- :func:`run_predict`: checkpoint + tracking file -> full-body pose file.
- :func:`run_eval`: checkpoint + held-out motion -> metrics table and ``metrics.json``.
- :func:`run_simulate`: motion -> the tracking file a headset would have recorded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geometry.errors import UserError
from pose.body.egoposer.amass import (
    MotionSequence,
    check_resampled_frames,
    load_amass_dir,
    load_amass_npz,
    resample_frames,
    resample_positions,
    resample_rotations,
    save_amass_npz,
)
from pose.body.egoposer.config import (
    FovConfig,
    ModelConfig,
    SynthConfig,
    TrainConfig,
    VisibilityMode,
)
from pose.body.egoposer.metrics import GROUPS

EVAL_SEED_OFFSET = 1000
"""Synthetic evaluation uses ``seed + 1000`` by default, so it never sees training data."""


def load_motion(amass: Path | None, synthetic: bool, fps: float, seed: int,
                synth: SynthConfig, num_synthetic: int,
                smplh_dir: Path | None = None) -> list[MotionSequence]:
    """Motion from an AMASS folder or file, or synthesised; exactly one source."""
    from pose.body.egoposer.amass import check_fps
    from pose.body.egoposer.synth import synthesize_dataset

    check_fps(fps, "the model's frame rate (--model.fps, or the checkpoint's)")
    if (amass is None) == (not synthetic):
        raise UserError("give exactly one data source: --amass DIR or --synthetic.")
    if amass is not None:
        if Path(amass).is_file():
            return [load_amass_npz(amass, fps=fps, smplh_dir=smplh_dir)]
        return load_amass_dir(amass, fps=fps, smplh_dir=smplh_dir)
    if num_synthetic < 1:
        raise UserError("--synthetic-sequences must be at least 1.")
    cfg = SynthConfig(**{**synth.__dict__, "fps": fps})
    return synthesize_dataset(num_synthetic, seed=seed, cfg=cfg)


def run_train(out: Path, amass: Path | None, synthetic: bool, model: ModelConfig,
              train_cfg: TrainConfig, fov: FovConfig, synth: SynthConfig,
              num_synthetic: int = 200, smplh_dir: Path | None = None, resume: bool = False,
              overwrite: bool = False, quiet: bool = False,
              device: str = "cpu") -> dict[str, Any]:
    """Train EgoPoser (or the MLP baseline) on ``device`` (``cpu``, ``cuda``, ``cuda:N``),
    in one process or one per rank under ``torchrun``; returns ``{"step", "steps_this_run",
    "stopped_by", "history"}``. ``quiet``: no progress bar nor summary lines."""
    from geometry.device import check_device
    from geometry.training import (
        check_checkpoint_out,
        ddp_cleanup,
        ddp_setup,
        read_checkpoint_config,
    )
    from pose.body.egoposer.data import prepare_sequences
    from pose.body.egoposer.train import COMMAND, KIND, train

    check_device(device)
    check_checkpoint_out(out, resume, overwrite)
    if resume:
        before = int(read_checkpoint_config(out, KIND, COMMAND)["step"])
    else:
        before = 0
    seqs = load_motion(amass, synthetic, model.fps, train_cfg.seed, synth, num_synthetic,
                       smplh_dir)
    data = prepare_sequences(seqs, fov)
    source = {"amass": str(amass)} if amass is not None else {
        "synthetic": {"sequences": num_synthetic, "seed": train_cfg.seed, **synth.__dict__}}
    dist = ddp_setup(device)
    try:
        talk = not quiet and dist.is_main
        if talk:
            print(f"training on {len(seqs)} sequences, {data.num_frames} frames "
                  f"({data.num_frames / model.fps / 60:.1f} min of motion)"
                  + (f", {dist.world_size} processes" if dist.distributed else ""))
        _, result = train(data, model, train_cfg, fov, out_dir=out, resume=resume,
                          show_progress=not quiet, data_source=source, dist=dist)
    finally:
        ddp_cleanup()
    last = result.history[-1]["loss"] if result.history else None
    if talk:
        print(f"saved checkpoint {out} at step {result.step} "
              f"({result.step - before} steps this run"
              + (f", last loss {last:.4f})" if last is not None else ")"))
    return {"step": result.step, "steps_this_run": result.step - before,
            "stopped_by": result.stopped_by, "history": result.history}


def _resample_tracking(tracking: Any, fps: float) -> Any:
    from pose.body.egoposer.amass import check_fps
    from pose.body.egoposer.tracking import Tracking

    if abs(tracking.fps - fps) < 1e-6:
        return tracking
    check_fps(fps, "the checkpoint's frame rate")
    check_resampled_frames(tracking.num_frames, tracking.fps, fps, "the tracking file")
    i0, i1, _ = resample_frames(tracking.num_frames, tracking.fps, fps)
    return Tracking(fps=fps, trk_rot=resample_rotations(tracking.trk_rot, tracking.fps, fps),
                    trk_pos=resample_positions(tracking.trk_pos, tracking.fps, fps),
                    visible=tracking.visible[i0] & tracking.visible[i1],
                    height_m=tracking.height_m)


def run_predict(checkpoint: Path, tracking_path: Path, out: Path | None = None,
                height_m: float | None = None, device: str = "cpu") -> Path:
    """Predict the full body for a tracking file on ``device`` (``cpu``, ``cuda``,
    ``cuda:N``); writes an AMASS-style ``.npz`` (computed on the CPU from the network's
    output).

    The output has ``poses [T, 66]`` (axis-angle: pelvis global orientation then 21 local
    joints), ``trans [T, 3]`` (AMASS convention for the default skeleton: pelvis minus its
    rest position), ``joints [T, 22, 3]`` (world), ``mocap_framerate`` (the model's frame
    rate; the input is resampled to it), ``body_scale`` and ``gender`` ('neutral').
    """
    from geometry.device import check_device
    from geometry.io.atomic import atomic_path
    from geometry.so3 import matrix_to_axis_angle
    from pose.body.egoposer.infer import predict_sequence
    from pose.body.egoposer.skeleton import (
        default_rest_joints,
        forward_kinematics,
        scale_from_height,
        scaled_default_skeleton,
    )
    from pose.body.egoposer.tracking import load_tracking
    from pose.body.egoposer.train import load_checkpoint

    check_device(device)
    model, cfg, _, _ = load_checkpoint(checkpoint, device)
    tracking = _resample_tracking(load_tracking(tracking_path), cfg.fps)
    height = height_m if height_m is not None else tracking.height_m
    scale = scale_from_height(height) if height is not None else 1.0
    rots, root = predict_sequence(model, cfg, tracking.trk_rot, tracking.trk_pos,
                                  tracking.visible, scale)
    _, joints = forward_kinematics(rots, root, scaled_default_skeleton(scale))
    n = rots.shape[0]
    out = out or tracking_path.with_name(tracking_path.stem + "_pose.npz")
    arrays = {
        "poses": matrix_to_axis_angle(rots.double()).reshape(n, -1).numpy(),
        "trans": (root.double() - default_rest_joints(torch.float64)[0]).numpy(),
        "joints": joints.double().numpy(),
        "mocap_framerate": np.array(cfg.fps),
        "body_scale": np.array(scale),
        "betas": np.zeros(16),
        "gender": np.array("neutral"),
    }
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    print(f"predicted {n} frames at {cfg.fps:g} fps (body scale {scale:.3f}) -> {out}")
    return out


def metrics_table(results: dict[str, dict[str, dict[str, float]]], title: str) -> Any:
    """A rich table of per-method, per-group metrics."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "frames", "group", "MPJPE cm", "MPJRE deg", "MPJVE cm/s",
                "Jitter m/s^3", "H-PE cm"):
        table.add_column(col, justify="left" if col in ("method", "group") else "right",
                         no_wrap=True)

    def fmt(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.2f}"

    for method, groups in results.items():
        for group in GROUPS:
            r = groups[group]
            table.add_row(method, str(r["frames"]), group, fmt(r["mpjpe_cm"]),
                          fmt(r["mpjre_deg"]), fmt(r["mpjve_cm_s"]), fmt(r["jitter_m_s3"]),
                          fmt(r["hand_pe_cm"]))
    return table


def run_eval(checkpoint: Path, amass: Path | None, synthetic: bool, out: Path,
             visibility: VisibilityMode, baselines: bool, synth: SynthConfig,
             num_synthetic: int, seed: int | None = None,
             smplh_dir: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """Evaluate a checkpoint (and the stand-still baseline); prints a table, writes JSON.
    The network runs on ``device`` (``cpu``, ``cuda``, ``cuda:N``); metrics on the CPU."""
    from rich.console import Console

    from geometry.device import check_device
    from geometry.io.atomic import atomic_write_text
    from geometry.io.jsonio import dumps_json
    from pose.body.egoposer.data import make_eval_sequences
    from pose.body.egoposer.infer import evaluate, model_predictor, stand_still_baseline
    from pose.body.egoposer.train import load_checkpoint

    check_device(device)
    model, cfg, fov, config = load_checkpoint(checkpoint, device)
    if seed is None:
        seed = int(config["config"].get("train", {}).get("seed", 0)) + EVAL_SEED_OFFSET
    seqs = load_motion(amass, synthetic, cfg.fps, seed, synth, num_synthetic, smplh_dir)
    eval_seqs = make_eval_sequences(seqs, visibility, fov, seed=seed)
    results = {cfg.kind: evaluate(model_predictor(model, cfg), eval_seqs)}
    if baselines:
        results["stand_still"] = evaluate(stand_still_baseline, eval_seqs)
    frames = sum(s.trk_pos.shape[0] for s in eval_seqs)
    title = (f"EgoPoser eval: {len(eval_seqs)} sequences, {frames} frames, hand visibility "
             f"'{visibility}'")
    Console(width=max(110, Console().width)).print(metrics_table(results, title))
    report = {
        "checkpoint": str(checkpoint),
        "data": {"amass": str(amass)} if amass is not None else {
            "synthetic": {"sequences": num_synthetic, "seed": seed, **synth.__dict__}},
        "visibility": visibility,
        "fov": fov.__dict__,
        "sequences": len(eval_seqs),
        "frames": frames,
        "methods": results,
    }
    # Standard JSON: an undefined metric (NaN, e.g. the hand error with no hand visible)
    # is null, which every JSON reader accepts.
    atomic_write_text(out, dumps_json(report))
    print(f"wrote {out}")
    return report


def run_simulate(out: Path, amass: Path | None, synthetic: bool, visibility: VisibilityMode,
                 fov: FovConfig, synth: SynthConfig, seed: int, gt_out: Path | None = None,
                 smplh_dir: Path | None = None, fps: float = 30.0) -> Path:
    """Write the tracking file a headset would record for one motion (AMASS file or
    synthetic), with simulated hand visibility; optionally the motion itself (AMASS
    format) for comparison."""
    from pose.body.egoposer.skeleton import DEFAULT_STATURE_M
    from pose.body.egoposer.tracking import (
        Tracking,
        save_tracking,
        simulate_visibility,
        tracker_trajectories,
    )

    if amass is not None and not Path(amass).is_file():
        raise UserError(f"{amass} is not a file; give one AMASS .npz to simulate.")
    seq = load_motion(amass, synthetic, fps, seed, synth, 1, smplh_dir)[0]
    g, j = seq.fk()
    trk_rot, trk_pos = tracker_trajectories(g, j)
    vis = simulate_visibility(np.random.default_rng(seed), trk_rot[:, 0], trk_pos[:, 0],
                              trk_pos[:, 1:], seq.fps, visibility, fov)
    save_tracking(out, Tracking(fps=seq.fps, trk_rot=trk_rot, trk_pos=trk_pos, visible=vis,
                                height_m=seq.scale * DEFAULT_STATURE_M))
    if gt_out is not None:
        save_amass_npz(seq, gt_out, with_joints=True)
    frac = vis.float().mean(0).tolist()
    print(f"wrote {out}: {seq.num_frames} frames at {seq.fps:g} fps, hands visible "
          f"{frac[0]:.0%} (left) / {frac[1]:.0%} (right)")
    return out
