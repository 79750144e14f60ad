"""Checkpoints: ``model.safetensors`` (weights) + ``config.json`` (the model config), and
``train_state.pt`` (optimizer and progress, read with ``weights_only=True``) to resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from geometry.errors import UserError
from geometry.io.atomic import atomic_path, atomic_write_text
from perception.sparsefusion.config import SparseFusionConfig, config_from_dict, config_to_dict

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "train_state.pt"
RETRAIN_HINT = ("restore the checkpoint folder written by 'perception train' or train the "
                "model again.")


def save_checkpoint(folder: str | os.PathLike, model: torch.nn.Module,
                    config: SparseFusionConfig, extra: dict | None = None) -> None:
    """Write the weights and the config (each atomically)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    payload = {"model": config_to_dict(config), **(extra or {})}
    atomic_write_text(folder / CONFIG, json.dumps(payload, indent=2))


def load_config(folder: str | os.PathLike) -> tuple[SparseFusionConfig, dict]:
    """The model config of a checkpoint folder and the rest of its JSON."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a folder written by 'perception train' "
                        "(it holds config.json and model.safetensors).")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        config = config_from_dict(payload["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} is not a SparseFusion checkpoint config ({err}).") from None
    return config, payload


def load_model(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """Build the model of a checkpoint folder and load its weights (eval mode)."""
    from geometry.io.checkpoints import load_safetensors
    from perception.sparsefusion.model import SparseFusion

    config, _ = load_config(folder)
    config.camera.backbone_weights = None  # the checkpoint holds the trained backbone
    weights = Path(folder) / WEIGHTS
    if not weights.is_file():
        raise UserError(f"{weights} does not exist; the checkpoint is incomplete.")
    state = load_safetensors(weights, "a SparseFusion weights file", RETRAIN_HINT)
    model = SparseFusion(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{weights} does not match its config.json ({str(err)[:200]}).") from None
    return model.to(device).eval()
