"""Diffusion models from local weights only: a diffusers folder or one official checkpoint.

:func:`load_stable_diffusion` reads

- a diffusers folder (``unet/``, ``vae/``, optionally ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``; ``model_index.json`` is not required), every part with
  ``local_files_only=True``; or
- one official ``.safetensors`` / ``.ckpt`` file with the LDM key names
  (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``),
  converted by :mod:`.ldm` onto modules built from the published config (or the config
  passed: tiny test models).

:func:`load_controlnet` reads a diffusers ControlNet folder (``config.json`` + weights) or
one official ControlNet file (``control_model.*`` keys, as released, or without the
prefix). Nothing is ever downloaded. Every problem a user can cause (a missing path, a
folder without ``unet/config.json``, an unreadable or incomplete file, a pickled ``.ckpt``
without ``trust``) is one :class:`~geometry.errors.UserError` sentence naming what is
missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geometry.errors import UserError
from reconstruction.generative import ldm

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pth", ".pt", ".bin")


@dataclass
class StableDiffusion:
    """The loaded parts of a Stable Diffusion model (frozen, eval mode)."""

    unet: torch.nn.Module
    vae: torch.nn.Module | None
    text_encoder: torch.nn.Module | None
    tokenizer: Any | None
    alphas_cumprod: Tensor  # [T] the training schedule
    scaling_factor: float
    source: str
    """Where it came from (for logs and metrics)."""


def read_state_dict(path: Path, what: str, trust: bool = False,
                    hint: str = "pass a complete checkpoint file") -> dict[str, Tensor]:
    """The tensors of one checkpoint file (``state_dict`` unwrapped, EMA copies dropped).

    Args:
        path: ``.safetensors`` or a ``torch.save`` file (``.ckpt``, ``.pth``, ``.bin``).
        what: what it should be, with its article (for the message).
        trust: allow a file that stores Python objects besides the weights (reading it
            runs code from the file).
        hint: the end of the error sentence (what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist ({what} expected); {hint}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
            reason = str(exc).strip().splitlines()[0].rstrip(".")[:120] if str(exc) else "?"
            raise UserError(f"cannot read {path} as {what} ({reason}); {hint}.") from None
    else:
        import pickle

        try:
            state = torch.load(path, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError as exc:
            if "Unsupported global" not in str(exc):
                raise UserError(f"cannot read {path} as {what} (not a PyTorch file, or "
                                f"damaged); {hint}.") from None
            raise UserError(f"{path} stores Python objects besides the weights; convert it to "
                            ".safetensors, or allow it with the trust option if you trust "
                            "the file.") from None
        except Exception:  # noqa: BLE001 - torch raises many types for a damaged file
            raise UserError(f"cannot read {path} as {what} (not a PyTorch file, or damaged); "
                            f"{hint}.") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} holds no state dict ({what} expected); {hint}.")
    return {k: v for k, v in state.items()
            if isinstance(v, Tensor) and not k.startswith("model_ema.")}


def _read_schedule(folder: Path | None, config: dict) -> Tensor:
    from reconstruction.generative.schedule import scaled_linear_alphas_cumprod

    start, end, steps = config["linear_start"], config["linear_end"], config["timesteps"]
    if folder is not None and (folder / "scheduler_config.json").is_file():
        try:
            sched = json.loads((folder / "scheduler_config.json").read_text())
        except (OSError, ValueError):
            raise UserError(f"{folder / 'scheduler_config.json'} is not JSON; repair or remove "
                            "the scheduler folder.") from None
        if sched.get("beta_schedule", "scaled_linear") != "scaled_linear":
            raise UserError(f"{folder} uses the {sched.get('beta_schedule')!r} noise schedule; "
                            "only Stable Diffusion's scaled_linear is supported.")
        start = float(sched.get("beta_start", start))
        end = float(sched.get("beta_end", end))
        steps = int(sched.get("num_train_timesteps", steps))
    return scaled_linear_alphas_cumprod(start, end, steps)


def is_diffusers_folder(path: Path) -> bool:
    """Whether ``path`` looks like a diffusers Stable Diffusion folder (``unet/config.json``)."""
    return (Path(path) / "unet" / "config.json").is_file()


def _frozen(module: torch.nn.Module | None) -> Any:
    if module is not None:
        module.requires_grad_(False)
        module.eval()
    return module


def load_stable_diffusion(path: Path, device: str | torch.device = "cpu",
                          config: dict | None = None, text_encoder: bool = True,
                          trust: bool = False, dtype: torch.dtype = torch.float32
                          ) -> StableDiffusion:
    """Stable Diffusion (1.x layout) from a local diffusers folder or one official file.

    Args:
        path: the folder or file (see the module doc).
        config: the LDM config of a single file (default :data:`.ldm.SD15_LDM_CONFIG`).
        text_encoder: load the text encoder and tokenizer too (when present).
        trust: allow a pickled ``.ckpt`` with Python objects.
        dtype: weights' dtype (float16 on a GPU halves the memory).

    Raises:
        UserError: one sentence naming what is missing or wrong.
    """
    path = Path(path)
    config = ldm.SD15_LDM_CONFIG if config is None else config
    hint = ("pass a diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/) "
            "or one official .safetensors/.ckpt checkpoint")
    if not path.exists():
        raise UserError(f"the diffusion model {path} does not exist; {hint}.")
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise UserError("the diffusion model needs the diffusers package; install it with "
                        "pip install diffusers.") from None
    if path.is_dir():
        model = _load_sd_folder(path, config, text_encoder, hint)
    elif path.suffix in CHECKPOINT_SUFFIXES:
        model = _load_sd_file(path, config, text_encoder, trust, hint)
    else:
        raise UserError(f"{path} is neither a diffusers folder nor a checkpoint file "
                        f"({', '.join(CHECKPOINT_SUFFIXES)}); {hint}.")
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(model, name)
        if module is not None:
            module = module.to(device) if dtype == torch.float32 else module.to(device, dtype)
            setattr(model, name, _frozen(module))
    model.alphas_cumprod = model.alphas_cumprod.to(device)
    return model


def _load_sd_folder(path: Path, config: dict, text_encoder: bool, hint: str) -> StableDiffusion:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if not is_diffusers_folder(path):
        raise UserError(f"the diffusion folder {path} has no unet/config.json; {hint}.")
    modules: dict[str, Any] = {}
    parts = [("unet", UNet2DConditionModel, True), ("vae", AutoencoderKL, True)]
    if text_encoder:
        from transformers import CLIPTextModel

        parts.append(("text_encoder", CLIPTextModel, False))
    for name, cls, required in parts:
        sub = path / name
        if not (sub / "config.json").is_file():
            if required:
                raise UserError(f"the diffusion folder {path} has no {name}/config.json; "
                                f"{hint}.")
            modules[name] = None
            continue
        try:
            modules[name] = cls.from_pretrained(sub, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0].rstrip(".")[:120] if str(exc) else "?"
            raise UserError(f"cannot load {sub} ({reason}); {hint}.") from None
    tokenizer = None
    if text_encoder and (path / "tokenizer").is_dir():
        from transformers import CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        except (OSError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0].rstrip(".")[:120] if str(exc) else "?"
            raise UserError(f"cannot load the tokenizer in {path / 'tokenizer'} ({reason}); "
                            "give the folder CLIP's vocab.json and merges.txt.") from None
    scaling = float(modules["vae"].config.scaling_factor)
    return StableDiffusion(modules["unet"], modules["vae"], modules.get("text_encoder"),
                           tokenizer, _read_schedule(path / "scheduler", config), scaling,
                           str(path))


def _load_sd_file(path: Path, config: dict, text_encoder: bool, trust: bool,
                  hint: str) -> StableDiffusion:
    state = read_state_dict(path, "a Stable Diffusion checkpoint", trust, hint)
    components = ["unet", "vae"] + (["text_encoder"] if text_encoder else [])
    for required in ("unet", "vae"):
        prefix = ldm.SD_PREFIXES[required]
        if not any(k.startswith(prefix) for k in state):
            raise UserError(f"{path} has no {prefix}* weights (the {required}); {hint}.")
    if text_encoder and not any(k.startswith(ldm.SD_PREFIXES["text_encoder"]) for k in state):
        components.remove("text_encoder")
    with torch.device("meta"):
        modules = ldm.build_sd_modules(config, tuple(components))
    try:
        mapping = ldm.sd_mapping({k: tuple(v.shape) for k, v in state.items()}, config)
    except (KeyError, AttributeError, RuntimeError, IndexError) as exc:
        raise UserError(f"{path} does not have the Stable Diffusion 1.x layout ({exc}); "
                        f"{hint}.") from None
    for name, module in modules.items():
        try:
            converted, missing = ldm.convert_state(state, mapping, module, f"{name}.")
        except ValueError as exc:
            raise UserError(f"{path} does not fit Stable Diffusion 1.x: {exc}; {hint}.") from None
        if missing:
            expected = ldm.sd_mapping(ldm.sd_state_dict_shapes(config), config)
            first = expected.get(missing[0], (missing[0],))[0]
            raise UserError(f"{path} lacks {len(missing)} weights of the {name} (first: "
                            f"{first}); {hint}.")
        ldm.materialise(module, converted)
    return StableDiffusion(modules["unet"], modules["vae"], modules.get("text_encoder"), None,
                           _read_schedule(None, config), float(config["scale_factor"]),
                           str(path))


def load_controlnet(path: Path, config: dict | None = None, hint_channels: int = 3,
                    device: str | torch.device = "cpu", trust: bool = False,
                    dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A diffusers ``ControlNetModel`` from a local folder (``config.json`` + weights) or one
    official ControlNet file; ``config``: the LDM config of the UNet it controls (default
    SD 1.5), ``hint_channels``: its conditioning channels (single files)."""
    path = Path(path)
    hint = ("pass a diffusers ControlNet folder (config.json + weights) or one official "
            "ControlNet .safetensors/.pth file")
    if not path.exists():
        raise UserError(f"the ControlNet {path} does not exist; {hint}.")
    if path.is_dir():
        from diffusers import ControlNetModel

        if not (path / "config.json").is_file():
            raise UserError(f"the ControlNet folder {path} has no config.json; {hint}.")
        try:
            model = ControlNetModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0].rstrip(".")[:120] if str(exc) else "?"
            raise UserError(f"cannot load the ControlNet in {path} ({reason}); {hint}.") from None
    else:
        config = ldm.SD15_LDM_CONFIG if config is None else config
        state = read_state_dict(path, "a ControlNet checkpoint", trust, hint)
        control = {**config["unet"], "hint_channels": hint_channels}
        with torch.device("meta"):
            model = ldm.build_controlnet(config, control)
        try:
            mapping = ldm.controlnet_mapping({k: tuple(v.shape) for k, v in state.items()},
                                             config, control)
            converted, missing = ldm.convert_state(state, mapping, model)
        except (KeyError, AttributeError, RuntimeError, IndexError, ValueError) as exc:
            raise UserError(f"{path} does not have the ControlNet layout ({exc}); "
                            f"{hint}.") from None
        if missing:
            expected = ldm.controlnet_mapping(ldm.controlnet_state_dict_shapes(control),
                                              config, control)
            first = expected.get(missing[0], (missing[0],))[0]
            raise UserError(f"{path} lacks {len(missing)} ControlNet weights (first: "
                            f"{first}); {hint}.")
        ldm.materialise(model, converted)
    return _frozen(model.to(device) if dtype == torch.float32 else model.to(device, dtype))
