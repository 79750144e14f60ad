"""Loading UpFusion's released weights: ``upsrt.pt`` and the torch-hub ``dinov2_vitb14``.

``upsrt.pt`` holds ``{"model_state_dict": ...}`` with the names of the official
``upsrt/model/model.py``; our :class:`~.upsrt.UpSRT` keeps those names, so the mapping is
the identity plus the unwrapping (``model_state_dict``, a ``module.`` prefix from DDP) and
checks: every official key is used, every parameter filled, every shape equal. The DINOv2
weights map to ``encoder.vit.*``; the blocks after the key layer (8), the final norm and the
mask token are never run (UpSRT reads the keys of block 8) and are skipped, by name.

The key lists the tests check against (``keys/upsrt.txt``, ``keys/dinov2_vitb14.txt``) are
written from the published module structure and ``configs/inference.yaml`` (no weights were
downloaded): see their headers.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from geometry.errors import UserError

KEYS_DIR = Path(__file__).with_name("keys")


def read_key_list(name: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a key list in ``keys/`` (``upsrt``, ``dinov2_vitb14``, ...)."""
    keys = {}
    for line in (KEYS_DIR / f"{name}.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split()
        keys[key] = tuple(int(s) for s in shape.split(","))
    return keys


def unwrap_state_dict(state: dict) -> dict[str, Tensor]:
    """The tensors of a checkpoint: ``model_state_dict``/``state_dict`` unwrapped, a
    ``module.`` prefix (DDP) dropped."""
    for wrapper in ("model_state_dict", "state_dict", "model"):
        if wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()
            if isinstance(v, Tensor)}


def _dino_key_needed(key: str, key_layer: int) -> bool:
    """Whether a torch-hub DINOv2 key is read by UpSRT's key-feature encoder."""
    if key in ("norm.weight", "norm.bias", "mask_token"):
        return False
    match = re.match(r"blocks\.(\d+)\.(.*)", key)
    if match is None:
        return True
    block, rest = int(match.group(1)), match.group(2)
    if block < key_layer:
        return True
    if block == key_layer:
        return rest.startswith("norm1.") or rest.startswith("attn.qkv.")
    return False


def convert_official_upsrt(upsrt_state: dict, dino_state: dict | None,
                           key_layer: int = 8) -> tuple[dict[str, Tensor], list[str]]:
    """Official ``upsrt.pt`` (+ torch-hub DINOv2) tensors -> our state dict.

    Returns:
        ``(state_dict, skipped)``: our names -> tensors, and the official DINOv2 keys left
        out on purpose (never run; see the module doc).
    """
    ours = {k: v for k, v in unwrap_state_dict(upsrt_state).items()}
    skipped = []
    if dino_state is not None:
        for key, value in unwrap_state_dict(dino_state).items():
            if _dino_key_needed(key, key_layer):
                ours[f"encoder.vit.{key}"] = value
            else:
                skipped.append(key)
    return ours, skipped


def check_and_load(model: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    """``load_state_dict(strict)`` with one sentence naming what is missing, unexpected or
    mis-shaped (a UserError: the user gave the file)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state)
                   if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: "
                         f"{tuple(state[k].shape)} instead of {tuple(expected[k].shape)})")
        raise UserError(f"{what} does not fit this UpSRT: {', '.join(parts)} parameters; "
                        "give the weights of the same architecture.")
    model.load_state_dict(state, strict=True)


def load_official_upsrt(upsrt_path: Path, dino_path: Path, device: str = "cpu"):
    """The released UpSRT (``upsrt.pt``) on the torch-hub DINOv2 ViT-B/14
    (``dinov2_vitb14_pretrain.pth``), architecture ``official``."""
    from geometry.io.checkpoints import torch_load_weights_only
    from reconstruction.upfusion.upsrt import UpSRT, preset

    upsrt = torch_load_weights_only(upsrt_path, "UpFusion's upsrt.pt",
                                    "give the upsrt.pt of the UpFusion release")
    dino = torch_load_weights_only(dino_path, "a DINOv2 ViT-B/14 checkpoint",
                                   "give dinov2_vitb14_pretrain.pth")
    config = preset("official")
    model = UpSRT(config)
    state, _ = convert_official_upsrt(upsrt, dino, config.encoder_layer)
    check_and_load(model, state, f"{upsrt_path} + {dino_path}")
    return model.to(device).eval()
