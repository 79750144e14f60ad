"""Textures of the procedural worlds: image textures (quad world) and solid noise (object world).

Both are deterministic functions of a seed, so every generated scene is reproducible bit for
bit; both are rich in non-repeating detail, so feature matchers find plenty to match.
"""

from __future__ import annotations

import numpy as np


def image_texture(rng: np.random.Generator, tint: np.ndarray, size: int = 1024) -> np.ndarray:
    """``[size, size, 3]`` float64 texture in [0, 1]: tinted value noise under discs and bars.

    Args:
        rng: consumed in a fixed order (the quad world draws its five textures from one rng).
        tint: ``[3]`` colour mixed into the noise.
        size: texels per side.
    """
    import cv2

    tex = np.zeros((size, size, 3), np.float32)
    for octave, weight in ((8, 0.5), (32, 0.3), (128, 0.2)):
        grid = rng.random((octave, octave, 3)).astype(np.float32)
        reps = size // octave
        up = np.kron(grid, np.ones((reps, reps, 1), np.float32))
        k = 2 * max(1, reps // 2) + 1  # blur over about a cell: smooth, not blocky
        tex += weight * cv2.blur(up, (k, k), borderType=cv2.BORDER_REFLECT)
    tex = 0.2 + 0.45 * tex + 0.35 * tint[None, None, :].astype(np.float32)
    tex = np.ascontiguousarray(tex)
    for _ in range(size * size // 2500):  # discs
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        colour = tuple(float(c) for c in rng.random(3))
        cv2.circle(tex, centre, int(rng.integers(3, 14)), colour, -1, cv2.LINE_AA)
    for _ in range(size // 12):  # bars
        x0, y0 = (int(c) for c in rng.integers(0, size, 2))
        w, h = (int(c) for c in rng.integers(2, 16, 2))
        tex[y0:y0 + h, x0:x0 + w] = rng.random(3)
    return np.clip(tex, 0, 1).astype(np.float64)


def sample_bilinear(tex: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
    """``[N, 3]`` bilinear samples of a wrapping texture ``[S, S, 3]`` at texel coordinates
    ``tx, ty [N]`` in ``[0, S)`` (texel ``(i, j)`` sits at integer ``(x, y) = (i, j)``)."""
    size = tex.shape[0]
    x0, y0 = np.floor(tx).astype(int), np.floor(ty).astype(int)
    fx, fy = (tx - x0)[:, None], (ty - y0)[:, None]
    x1, y1 = (x0 + 1) % size, (y0 + 1) % size
    return ((1 - fx) * (1 - fy) * tex[y0, x0] + fx * (1 - fy) * tex[y0, x1]
            + (1 - fx) * fy * tex[y1, x0] + fx * fy * tex[y1, x1])


def _hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, salt: int) -> np.ndarray:
    """Three deterministic pseudo-random values in [0, 1) per integer lattice point, ``[N, 3]``."""
    h = (ix.astype(np.uint64) * np.uint64(73856093)) ^ (iy.astype(np.uint64)
                                                         * np.uint64(19349663))
    h ^= iz.astype(np.uint64) * np.uint64(83492791)
    h ^= np.uint64(salt * 2654435761 % (1 << 32))
    # splitmix64 finaliser: decorrelates neighbouring lattice points
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    mask = np.uint64((1 << 21) - 1)
    parts = [(h >> np.uint64(21 * k)) & mask for k in range(3)]  # three 21-bit fields
    return np.stack(parts, -1).astype(np.float64) / float(1 << 21)


def value_noise(pts: np.ndarray, freq: float, salt: int) -> np.ndarray:
    """Smooth 3D value noise ``[N, 3]`` in [0, 1] at ``pts [N, 3]`` (lattice step ``1/freq``)."""
    p = pts * freq + 1000.0  # keep lattice indices positive
    i0 = np.floor(p).astype(np.int64)
    f = p - i0
    w = f * f * (3.0 - 2.0 * f)  # smoothstep weights
    out = np.zeros((len(pts), 3))
    for dx in (0, 1):
        wx = w[:, 0] if dx else 1.0 - w[:, 0]
        for dy in (0, 1):
            wy = w[:, 1] if dy else 1.0 - w[:, 1]
            for dz in (0, 1):
                wz = w[:, 2] if dz else 1.0 - w[:, 2]
                corner = _hash3(i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz, salt)
                out += (wx * wy * wz)[:, None] * corner
    return out


def solid_albedo(pts: np.ndarray, freq: float, tint: np.ndarray, salt: int) -> np.ndarray:
    """Colourful multi-octave solid texture ``[N, 3]`` in [0, 1] at world points ``[N, 3]``."""
    total = np.zeros((len(pts), 3))
    amplitude, norm = 1.0, 0.0
    for octave in range(3):
        total += amplitude * value_noise(pts, freq * 2.0**octave, salt * 7 + octave)
        norm += amplitude
        amplitude *= 0.5
    n = total / norm
    contrast = np.clip(0.5 + 2.2 * (n - 0.5), 0.0, 1.0)  # stretch the noise's narrow range
    return np.clip(0.08 + 0.92 * contrast * tint, 0.0, 1.0)
