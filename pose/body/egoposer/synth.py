"""A licence-clean motion synthesiser over the SMPL-H body tree (for tests and CI training).

AMASS cannot be shipped, so training and tests use parameterised motion: walking (with
curved paths), turning on the spot, reaching (one or both arms, to targets at all
heights, with the trunk leaning and the head looking at the hand), crouching, sitting and
idle standing (looking around, gesturing). Each activity drives a few joint-angle
channels over a few seconds; consecutive activities are joined by Gaussian smoothing of
the channels, and slow random "look-around" and posture noise is added everywhere.

The root is placed from the feet: the walking path is where the feet's centroid goes, and
the pelvis height keeps the lowest foot joint on the floor (ankles 7.5 cm, toe joints
2 cm above it, scaled with the body). Subjects differ in size (body scale 0.85-1.15)
and in proportions (each of legs, spine, arms, shoulder and hip width +/-5%).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from pose.body.egoposer.amass import MotionSequence
from pose.body.egoposer.config import SynthConfig
from pose.body.egoposer.skeleton import (
    DEFAULT_OFFSETS,
    NUM_JOINTS,
    PARENTS,
    body_scale,
    forward_kinematics,
)

CHANNELS: tuple[str, ...] = (
    "yaw_rate", "speed", "pelvis_pitch", "pelvis_roll",
    "hip_flex_l", "hip_flex_r", "hip_abd_l", "hip_abd_r", "knee_l", "knee_r",
    "ankle_l", "ankle_r", "spine_lean", "spine_twist", "spine_side", "head_yaw", "head_pitch",
    "sh_down_l", "sh_down_r", "sh_flex_l", "sh_flex_r", "sh_add_l", "sh_add_r",
    "elbow_l", "elbow_r", "wrist_l", "wrist_r",
)  # fmt: skip
# Standing values of the channels (radians, m/s, rad/s); everything else is 0.
_REST = {"sh_down_l": np.deg2rad(78.0), "sh_down_r": np.deg2rad(78.0),
         "elbow_l": np.deg2rad(12.0), "elbow_r": np.deg2rad(12.0)}
ACTIVITIES: tuple[str, ...] = ("walk", "turn", "reach", "crouch", "sit", "idle")
_ACTIVITY_WEIGHTS = np.array([0.30, 0.10, 0.22, 0.10, 0.10, 0.18])


def _smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float) -> np.ndarray:
    """Zero-mean, unit-std, smooth random signal of length ``n``."""
    x = gaussian_filter1d(rng.standard_normal(n + 8 * int(sigma_frames) + 8), sigma_frames)
    x = x[4 * int(sigma_frames) + 4: 4 * int(sigma_frames) + 4 + n]
    return (x - x.mean()) / (x.std() + 1e-9)


def _ramp_hold(n: int, fps: float, ramp_s: float) -> np.ndarray:
    """0 -> 1 (smoothstep over ``ramp_s``) -> hold -> 1 -> 0; ``[n]``."""
    t = np.arange(n) / fps
    ramp_s = min(ramp_s, 0.45 * n / fps)
    up = np.clip(t / ramp_s, 0, 1)
    down = np.clip((t[-1] - t) / ramp_s, 0, 1)
    x = np.minimum(up, down)
    return x * x * (3 - 2 * x)


def _activity(rng: np.random.Generator, kind: str, n: int, fps: float,
              scale: float) -> dict[str, np.ndarray]:
    """Channel values for ``n`` frames of one activity (missing channels: rest values)."""
    t = np.arange(n) / fps
    c: dict[str, np.ndarray] = {}
    deg = np.deg2rad
    if kind in ("walk", "turn"):
        freq = rng.uniform(0.8, 1.1) if kind == "walk" else rng.uniform(1.0, 1.4)
        amp = deg(rng.uniform(14, 28)) if kind == "walk" else deg(rng.uniform(6, 12))
        phase = 2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)
        c["hip_flex_l"] = amp * np.sin(phase)
        c["hip_flex_r"] = amp * np.sin(phase + np.pi)
        knee_amp = 2.2 * amp + deg(10)
        c["knee_l"] = deg(5) + knee_amp * np.maximum(0, np.sin(phase + np.pi / 3)) ** 1.5
        c["knee_r"] = deg(5) + knee_amp * np.maximum(0, np.sin(phase + np.pi + np.pi / 3)) ** 1.5
        arm = 0.9 * amp * rng.uniform(0.5, 1.2)
        c["sh_flex_l"] = -arm * np.sin(phase)
        c["sh_flex_r"] = arm * np.sin(phase)
        c["elbow_l"] = _REST["elbow_l"] + 0.6 * arm * (1 - np.sin(phase))
        c["elbow_r"] = _REST["elbow_r"] + 0.6 * arm * (1 + np.sin(phase))
        c["spine_twist"] = -0.3 * amp * np.sin(phase)
        c["pelvis_roll"] = deg(3) * np.sin(phase)
        if kind == "walk":
            # Two steps per gait cycle, each about 2 * leg * sin(amp) long.
            step = 2 * 0.85 * scale * np.sin(amp)
            c["speed"] = np.full(n, 2 * step * freq * rng.uniform(0.85, 1.0))
            c["yaw_rate"] = np.full(n, rng.choice([0.0, rng.uniform(-0.7, 0.7)]))
            c["spine_lean"] = np.full(n, deg(rng.uniform(0, 8)))
        else:
            c["yaw_rate"] = np.full(n, rng.choice([-1, 1]) * rng.uniform(0.8, 1.6))
        return c
    if kind == "reach":
        env = _ramp_hold(n, fps, rng.uniform(0.5, 1.2))
        side = rng.choice(["l", "r", "both"], p=[0.4, 0.4, 0.2])
        height = rng.uniform(0, 1)  # 0: reach low (floor), 1: reach high (overhead)
        flex = deg(30 + 140 * height + rng.uniform(-15, 15))
        lean = deg(50 * max(0.0, 0.45 - height) / 0.45 * rng.uniform(0.3, 1.0))
        wobble = deg(8) * np.sin(2 * np.pi * rng.uniform(0.7, 2.0) * t)
        arms = ("l", "r") if side == "both" else (side,)
        for s in arms:
            c[f"sh_down_{s}"] = _REST["sh_down_l"] + env * (deg(rng.uniform(70, 95))
                                                             - _REST["sh_down_l"])
            c[f"sh_flex_{s}"] = env * (flex + wobble)
            c[f"sh_add_{s}"] = env * deg(rng.uniform(-30, 40))
            c[f"elbow_{s}"] = _REST["elbow_l"] + env * deg(rng.uniform(-10, 60))
            c[f"wrist_{s}"] = env * deg(rng.uniform(-30, 30))
        c["spine_lean"] = env * lean
        c["spine_twist"] = env * deg(rng.uniform(-15, 15))
        c["head_pitch"] = env * deg(30 - 50 * height + rng.uniform(-10, 10))
        sign = {"l": 1.0, "r": -1.0, "both": 0.0}[side]
        c["head_yaw"] = env * sign * deg(rng.uniform(0, 25))
        return c
    if kind in ("crouch", "sit"):
        env = _ramp_hold(n, fps, rng.uniform(0.8, 1.4))
        if kind == "crouch":
            depth = rng.uniform(0.3, 1.0)
            hip, knee = deg(105) * depth, deg(135) * depth
            c["spine_lean"] = env * deg(35) * depth
            c["head_pitch"] = env * deg(rng.uniform(-25, 15)) * depth
            arm_flex, elbow = deg(rng.uniform(0, 60)) * depth, deg(rng.uniform(10, 60))
        else:
            hip, knee = deg(rng.uniform(80, 95)), deg(rng.uniform(80, 100))
            c["spine_lean"] = env * deg(rng.uniform(-10, 12))
            c["head_pitch"] = env * deg(rng.uniform(-5, 30))
            arm_flex, elbow = deg(rng.uniform(15, 45)), deg(rng.uniform(40, 85))
        for s in ("l", "r"):
            c[f"hip_flex_{s}"] = env * hip
            c[f"knee_{s}"] = env * knee
            c[f"hip_abd_{s}"] = env * deg(rng.uniform(0, 12))
            c[f"sh_flex_{s}"] = env * arm_flex
            c[f"elbow_{s}"] = _REST["elbow_l"] + env * (elbow - _REST["elbow_l"])
        return c
    if kind == "idle":
        c["pelvis_roll"] = deg(2) * _smooth_noise(rng, n, 0.8 * fps)
        c["spine_side"] = deg(3) * _smooth_noise(rng, n, 0.8 * fps)
        if rng.uniform() < 0.6:  # a gesture: look at a watch, point, hold a phone
            env = _ramp_hold(n, fps, rng.uniform(0.4, 0.9))
            s = rng.choice(["l", "r"])
            c[f"sh_flex_{s}"] = env * deg(rng.uniform(20, 80))
            c[f"sh_add_{s}"] = env * deg(rng.uniform(0, 50))
            c[f"elbow_{s}"] = _REST["elbow_l"] + env * deg(rng.uniform(30, 110))
            c["head_pitch"] = env * deg(rng.uniform(0, 35))
        return c
    raise ValueError(f"unknown activity {kind}")


def _axis_rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotations by ``angle`` (radians) about a coordinate axis. ``[T]`` -> ``[T, 3, 3]``."""
    c, s = np.cos(angle), np.sin(angle)
    R = np.zeros((*np.shape(angle), 3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    R[..., axis, axis] = 1.0
    R[..., i, i] = c
    R[..., j, j] = c
    R[..., i, j] = -s
    R[..., j, i] = s
    return R


def channels_to_local_rots(ch: dict[str, np.ndarray], yaw: np.ndarray) -> torch.Tensor:
    """Local rotations from channel values (see :data:`CHANNELS`).

    Args:
        ch: channel name -> ``[T]`` radians.
        yaw: ``[T]`` heading of the body about the world z axis (radians).

    Returns:
        ``[T, 22, 3, 3]`` float64 local rotations.
    """
    X, Y, Z = 0, 1, 2
    n = len(yaw)
    R = np.tile(np.eye(3), (n, NUM_JOINTS, 1, 1))
    R[:, 0] = (_axis_rot(Z, yaw) @ _axis_rot(X, np.full(n, np.pi / 2))
               @ _axis_rot(X, ch["pelvis_pitch"]) @ _axis_rot(Z, ch["pelvis_roll"]))
    for s, j_hip, j_knee, j_ankle, sign in (("l", 1, 4, 7, 1.0), ("r", 2, 5, 8, -1.0)):
        R[:, j_hip] = _axis_rot(X, -ch[f"hip_flex_{s}"]) @ _axis_rot(Z, sign * ch[f"hip_abd_{s}"])
        R[:, j_knee] = _axis_rot(X, ch[f"knee_{s}"])
        # Keep the foot flat: undo the shank's pitch.
        R[:, j_ankle] = _axis_rot(X, ch[f"hip_flex_{s}"] - ch[f"knee_{s}"] + ch[f"ankle_{s}"])
    spine = (_axis_rot(X, ch["spine_lean"] / 3) @ _axis_rot(Y, ch["spine_twist"] / 3)
             @ _axis_rot(Z, ch["spine_side"] / 3))
    for j in (3, 6, 9):
        R[:, j] = spine
    R[:, 12] = _axis_rot(Y, 0.4 * ch["head_yaw"]) @ _axis_rot(X, 0.4 * ch["head_pitch"])
    R[:, 15] = _axis_rot(Y, 0.6 * ch["head_yaw"]) @ _axis_rot(X, 0.6 * ch["head_pitch"])
    for s, j_sh, j_el, j_wr, sign in (("l", 16, 18, 20, 1.0), ("r", 17, 19, 21, -1.0)):
        R[:, j_sh] = (_axis_rot(Y, -sign * ch[f"sh_add_{s}"]) @ _axis_rot(X, -ch[f"sh_flex_{s}"])
                      @ _axis_rot(Z, -sign * ch[f"sh_down_{s}"]))
        R[:, j_el] = _axis_rot(Y, -sign * ch[f"elbow_{s}"])
        R[:, j_wr] = _axis_rot(X, ch[f"wrist_{s}"])
    return torch.from_numpy(R)


_GROUPS: dict[str, tuple[int, ...]] = {
    "legs": (4, 5, 7, 8), "spine": (3, 6, 9, 12, 15), "arms": (18, 19, 20, 21),
    "shoulders": (13, 14, 16, 17), "hips": (1, 2),
}


def random_rest_joints(rng: np.random.Generator, cfg: SynthConfig) -> torch.Tensor:
    """A random subject: the default skeleton scaled and with jittered proportions.

    Returns:
        ``[22, 3]`` float64 rest joints (model frame).
    """
    offsets = np.array(DEFAULT_OFFSETS, dtype=np.float64)
    for joints in _GROUPS.values():
        offsets[list(joints)] *= 1 + rng.uniform(-cfg.proportion_jitter, cfg.proportion_jitter)
    offsets *= rng.uniform(*cfg.scale_range)
    rest = np.zeros_like(offsets)
    rest[0] = offsets[0]
    for j in range(1, NUM_JOINTS):
        rest[j] = rest[PARENTS[j]] + offsets[j]
    return torch.from_numpy(rest)


def synthesize_sequence(rng: np.random.Generator, cfg: SynthConfig | None = None,
                        name: str = "synthetic") -> MotionSequence:
    """One random sequence of chained activities by one random subject."""
    cfg = cfg or SynthConfig()
    fps = cfg.fps
    n = max(2, int(round(cfg.seconds * fps)))
    rest = random_rest_joints(rng, cfg)
    scale = float(body_scale(rest))

    pieces: list[tuple[int, dict[str, np.ndarray]]] = []
    total = 0
    while total < n:
        kind = str(rng.choice(ACTIVITIES, p=_ACTIVITY_WEIGHTS))
        dur = rng.uniform(2.5, 6.0) if kind != "turn" else rng.uniform(1.0, 3.0)
        m = max(2, int(dur * fps))
        pieces.append((m, _activity(rng, kind, m, fps, scale)))
        total += m
    ch: dict[str, np.ndarray] = {}
    for name_c in CHANNELS:
        parts = [c.get(name_c, np.full(m, _REST.get(name_c, 0.0))) for m, c in pieces]
        ch[name_c] = gaussian_filter1d(np.concatenate(parts)[:n], cfg.transition_s * fps,
                                       mode="nearest")
    # Everywhere: slow looking around and posture noise.
    ch["head_yaw"] += np.deg2rad(rng.uniform(10, 45)) * _smooth_noise(rng, n, 0.6 * fps)
    ch["head_pitch"] += np.deg2rad(rng.uniform(5, 15)) * _smooth_noise(rng, n, 0.6 * fps)
    for name_c in CHANNELS[2:]:
        ch[name_c] = ch[name_c] + np.deg2rad(2.5) * _smooth_noise(rng, n, 0.4 * fps)

    yaw = rng.uniform(-np.pi, np.pi) + np.cumsum(ch["yaw_rate"]) / fps
    local_rots = channels_to_local_rots(ch, yaw)
    _, joints_rel = forward_kinematics(local_rots, torch.zeros(n, 3, dtype=torch.float64), rest)
    feet = joints_rel[:, [7, 8, 10, 11]]
    clearance = torch.tensor([0.075, 0.075, 0.02, 0.02], dtype=torch.float64) * scale
    root_z = (clearance - feet[..., 2]).amax(-1)
    # The path is where the feet's centroid goes; heading (sin yaw, -cos yaw) is the model's
    # forward axis rotated into the world.
    heading = np.stack([np.sin(yaw), -np.cos(yaw)], -1)
    path = np.cumsum(ch["speed"][:, None] * heading, 0) / fps + rng.uniform(-3, 3, 2)
    root_xy = torch.from_numpy(path) - feet[..., :2].mean(1)
    root_pos = torch.cat([root_xy, root_z[:, None]], -1)
    return MotionSequence(name=name, fps=fps, local_rots=local_rots.float(),
                          root_pos=root_pos.float(), rest_joints=rest.float())


def synthesize_dataset(num_sequences: int, seed: int = 0,
                       cfg: SynthConfig | None = None) -> list[MotionSequence]:
    """``num_sequences`` independent sequences; the same seed gives the same data."""
    rng = np.random.default_rng(seed)
    return [synthesize_sequence(rng, cfg, name=f"synthetic_{seed}_{i:04d}")
            for i in range(num_sequences)]
