"""AMASS motion files: loading, validation and resampling to a common frame rate.

An AMASS sequence is one ``.npz`` with

- ``poses``  ``[T, 156]`` SMPL-H axis-angle (radians): pelvis (global orientation, world
  z up) then 21 body joints then 30 hand joints (ignored here). ``[T, 66]`` (body only)
  is accepted too.
- ``trans``  ``[T, 3]`` SMPL translation (metres); the pelvis is at ``trans + rest[0]``.
- ``betas``  ``[B]`` shape coefficients (used only with SMPL-H model files).
- ``gender`` ``'male' | 'female' | 'neutral'`` (a string array; used with model files).
- ``mocap_framerate`` scalar, frames per second.

Files are opened with ``allow_pickle=False``; AMASS's per-subject ``shape.npz`` files (no
motion) are skipped when a directory is loaded.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from geometry.errors import UserError
from geometry.so3 import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quat,
    quat_slerp,
    quat_to_matrix,
)
from pose.body.egoposer.skeleton import (
    NUM_JOINTS,
    body_scale,
    default_rest_joints,
    find_smplh_model,
    forward_kinematics,
    root_from_trans,
    smplh_rest_joints,
)


@dataclass
class MotionSequence:
    """One motion clip at a fixed frame rate, world z up."""

    name: str
    fps: float
    local_rots: Tensor  # [T, 22, 3, 3] local joint rotations (0: pelvis-to-world)
    root_pos: Tensor  # [T, 3] pelvis position, metres
    rest_joints: Tensor  # [22, 3] the subject's rest joints (model frame)

    @property
    def num_frames(self) -> int:
        return int(self.local_rots.shape[0])

    @property
    def scale(self) -> float:
        """Body scale (standing head height relative to the default skeleton)."""
        return float(body_scale(self.rest_joints.double()))

    def fk(self) -> tuple[Tensor, Tensor]:
        """``(global_rots [T, 22, 3, 3], joints [T, 22, 3])`` in the world."""
        return forward_kinematics(self.local_rots, self.root_pos, self.rest_joints)


FPS_RANGE = (1.0, 1000.0)
"""Frame rates (Hz) accepted in files and options: motion capture runs at 30-250 Hz and
headsets track at 30-120 Hz. Rates outside it are mistakes (a period given as a rate, a
missing scale) and would make resampling allocate terabytes or collapse a clip to a frame."""

MAX_FRAMES = 1_000_000
"""Most frames a resampled sequence may have (9 hours at 30 fps; ~1 GB of rotations)."""


def check_fps(value: float, what: str) -> float:
    """``value`` if it is a frame rate within :data:`FPS_RANGE`; else a :class:`UserError`
    whose sentence starts with ``what`` (e.g. ``"--model.fps"`` or ``"file.npz: 'fps'"``)."""
    lo, hi = FPS_RANGE
    if not (math.isfinite(value) and lo <= value <= hi):
        raise UserError(f"{what} is {value:g} frames per second, outside the {lo:g}-{hi:g} Hz "
                        "that motion capture and headset tracking use; give the rate in Hz.")
    return float(value)


def check_resampled_frames(times_src: int, fps_src: float, fps_dst: float, what: str) -> int:
    """Frames of ``times_src`` frames at ``fps_src`` resampled to ``fps_dst``; refuses a
    clip that would lose all its motion (several frames becoming one) or grow past
    :data:`MAX_FRAMES`. ``what`` names the clip in the message."""
    n_out = int(math.floor((times_src - 1) / fps_src * fps_dst + 1e-6)) + 1
    if times_src > 1 and n_out < 2:
        raise UserError(f"{what} has {times_src} frames at {fps_src:g} fps "
                        f"({(times_src - 1) / fps_src:.3g} s), which is less than one frame "
                        f"at {fps_dst:g} fps; check its frame rate or give a longer clip.")
    if n_out > MAX_FRAMES:
        raise UserError(f"{what} has {times_src} frames at {fps_src:g} fps, which resampled to "
                        f"{fps_dst:g} fps are {n_out} frames, more than {MAX_FRAMES}; check "
                        "its frame rate or split it into shorter clips.")
    return n_out


def resample_frames(times_src: int, fps_src: float, fps_dst: float) -> tuple[Tensor, Tensor,
                                                                              Tensor]:
    """Sample positions of a ``fps_dst`` grid on a ``fps_src`` clip of ``times_src`` frames.

    Returns:
        ``(i0 [T'], i1 [T'], alpha [T'])``: frame ``k`` of the output lies between source
        frames ``i0[k]`` and ``i1[k]`` at fraction ``alpha[k]``.
    """
    duration = (times_src - 1) / fps_src
    n_out = int(math.floor(duration * fps_dst + 1e-6)) + 1
    pos = torch.arange(n_out, dtype=torch.float64) * (fps_src / fps_dst)
    i0 = pos.floor().long().clamp(max=times_src - 1)
    i1 = (i0 + 1).clamp(max=times_src - 1)
    return i0, i1, pos - i0


def resample_rotations(rots: Tensor, fps_src: float, fps_dst: float) -> Tensor:
    """Resample rotation trajectories by slerp. ``rots [T, ..., 3, 3]`` -> ``[T', ..., 3, 3]``."""
    if abs(fps_src - fps_dst) < 1e-9:
        return rots
    i0, i1, alpha = resample_frames(rots.shape[0], fps_src, fps_dst)
    q = matrix_to_quat(rots.double())
    a = alpha.reshape(-1, *([1] * (q.dim() - 2))).expand(-1, *q.shape[1:-1])
    return quat_to_matrix(quat_slerp(q[i0], q[i1], a)).to(rots.dtype)


def resample_positions(pos: Tensor, fps_src: float, fps_dst: float) -> Tensor:
    """Resample position trajectories linearly. ``pos [T, ..., 3]`` -> ``[T', ..., 3]``."""
    if abs(fps_src - fps_dst) < 1e-9:
        return pos
    i0, i1, alpha = resample_frames(pos.shape[0], fps_src, fps_dst)
    a = alpha.reshape(-1, *([1] * (pos.dim() - 1))).to(pos.dtype)
    return pos[i0] * (1 - a) + pos[i1] * a


def read_npz_array(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """``data[key]`` as an array; unreadable members (pickled objects, corrupt zip entries)
    become a :class:`UserError`."""
    try:
        return np.asarray(data[key])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read '{key}' in {path} ({err}); fix or remove the "
                        "file.") from None


def _scalar(data: np.lib.npyio.NpzFile, key: str, path: Path) -> float:
    arr = read_npz_array(data, key, path)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
        raise UserError(f"{path}: '{key}' must be one number; fix or remove the file.")
    value = float(arr.reshape(()))
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{path}: '{key}' is {value}, expected a positive frame rate; "
                        "fix or remove the file.")
    return check_fps(value, f"{path}: '{key}'")


def open_npz(path: Path, what: str, hint: str) -> np.lib.npyio.NpzFile:
    """``np.load(path, allow_pickle=False)`` of an ``.npz`` archive, or a :class:`UserError`
    for a missing, truncated or damaged file or a bare ``.npy`` array under an ``.npz`` name
    (``what``: e.g. ``"an AMASS .npz"``; ``hint``: what to do, ending the sentence)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file; give the path of {what}.")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as err:
        reason = str(err).strip().splitlines()[0].rstrip(".")[:120] if str(err) else ""
        raise UserError(f"cannot read {path} as {what} (a damaged or truncated file"
                        f"{': ' + reason if reason else ''}); {hint}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        if isinstance(data, np.ndarray):
            raise UserError(f"{path} is a bare .npy array, not {what} (a zip of named arrays); "
                            f"{hint}")
        raise UserError(f"{path} is not {what}; {hint}")
    return data


def _gender(data: np.lib.npyio.NpzFile, path: Path) -> str:
    if "gender" not in data:
        return "neutral"
    g = read_npz_array(data, "gender", path).reshape(-1)
    if g.size == 0:
        return "neutral"
    value = g[0]
    if isinstance(value, bytes | np.bytes_):
        value = value.decode("utf-8", "replace")
    return str(value).strip().lower()


def load_amass_npz(path: str | Path, fps: float = 30.0,
                   smplh_dir: Path | None = None) -> MotionSequence:
    """Load one AMASS sequence and resample it to ``fps``.

    Args:
        path: the ``.npz`` file.
        fps: target frame rate.
        smplh_dir: optional folder of SMPL-H ``model.npz`` files; with it the rest joints
            come from the shaped model (exact SMPL-H joints), otherwise the default skeleton
            is used and ``betas`` are ignored.

    Raises:
        UserError: unreadable file, missing keys, wrong shapes, non-finite values.
    """
    path = Path(path)
    check_fps(fps, "the target frame rate")
    data = open_npz(path, "an AMASS .npz", "fix or remove the file.")
    with data:
        rate_key = "mocap_framerate" if "mocap_framerate" in data else "mocap_frame_rate"
        missing = [k for k in ("poses", "trans", rate_key) if k not in data]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)} (has {', '.join(data.files)});"
                            " give AMASS SMPL-H .npz files.")
        poses = read_npz_array(data, "poses", path)
        trans = read_npz_array(data, "trans", path)
        if poses.ndim != 2 or poses.shape[1] not in (156, 66) or poses.shape[0] < 1:
            raise UserError(f"{path}: 'poses' has shape {poses.shape}, expected (T, 156) "
                            "SMPL-H axis-angle; fix or remove the file.")
        if trans.shape != (poses.shape[0], 3):
            raise UserError(f"{path}: 'trans' has shape {trans.shape}, expected "
                            f"({poses.shape[0]}, 3); fix or remove the file.")
        for key, arr in (("poses", poses), ("trans", trans)):
            if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
                raise UserError(f"{path}: '{key}' contains NaN, infinite or non-numeric "
                                "values; fix or remove the file.")
        fps_src = _scalar(data, rate_key, path)
        betas = np.zeros(16)
        if "betas" in data:
            betas = read_npz_array(data, "betas", path).reshape(-1)
            if not np.issubdtype(betas.dtype, np.number) or not np.isfinite(betas).all():
                raise UserError(f"{path}: 'betas' contains NaN or infinite values; fix or "
                                "remove the file.")
        gender = _gender(data, path)

    aa = torch.from_numpy(poses[:, : 3 * NUM_JOINTS].astype(np.float64)).reshape(-1, NUM_JOINTS,
                                                                                  3)
    local_rots = axis_angle_to_matrix(aa)
    trans_t = torch.from_numpy(trans.astype(np.float64))
    if smplh_dir is not None:
        rest = smplh_rest_joints(find_smplh_model(Path(smplh_dir), gender), betas,
                                 dtype=torch.float64)
    else:
        rest = default_rest_joints(torch.float64)
    root_pos = root_from_trans(trans_t, rest)
    check_resampled_frames(local_rots.shape[0], fps_src, fps, f"motion file {path}")
    local_rots = resample_rotations(local_rots, fps_src, fps)
    root_pos = resample_positions(root_pos, fps_src, fps)
    return MotionSequence(name=path.stem, fps=fps, local_rots=local_rots.float(),
                          root_pos=root_pos.float(), rest_joints=rest.float())


def find_amass_files(root: str | Path) -> list[Path]:
    """All motion ``.npz`` files under ``root`` (recursively), sorted; ``shape.npz`` skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"AMASS folder {root} does not exist; give a folder of AMASS .npz "
                        "files.")
    files = sorted(p for p in root.rglob("*.npz") if p.name != "shape.npz")
    if not files:
        raise UserError(f"no .npz files under {root}; give a folder of AMASS .npz files.")
    return files


def load_amass_dir(root: str | Path, fps: float = 30.0,
                   smplh_dir: Path | None = None) -> list[MotionSequence]:
    """Load every AMASS sequence under ``root`` (see :func:`load_amass_npz`)."""
    return [load_amass_npz(p, fps=fps, smplh_dir=smplh_dir) for p in find_amass_files(root)]


def save_amass_npz(seq: MotionSequence, path: str | Path, with_joints: bool = False) -> None:
    """Write a sequence in AMASS's format (hand joints zero, betas zero, gender neutral).

    ``trans`` is written for the default skeleton (``root_pos - default_rest[0]``) so that
    :func:`load_amass_npz` without model files restores the same pelvis trajectory. With
    ``with_joints`` the subject's own FK joints are added as ``joints [T, 22, 3]``.
    """
    from geometry.io.atomic import atomic_path

    poses = np.zeros((seq.num_frames, 156))
    poses[:, : 3 * NUM_JOINTS] = matrix_to_axis_angle(seq.local_rots.double()).reshape(
        seq.num_frames, -1).numpy()
    trans = (seq.root_pos.double() - default_rest_joints(torch.float64)[0]).numpy()
    extra = {"joints": seq.fk()[1].double().numpy()} if with_joints else {}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, poses=poses, trans=trans, betas=np.zeros(16), gender=np.array("neutral"),
                 mocap_framerate=np.array(seq.fps), **extra)
