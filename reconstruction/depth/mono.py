"""Monocular relative depth from a local Depth-Anything-V2 checkpoint (never downloaded).

    mono = load_mono_depth(Path("depth_anything_v2_vits.pth"))
    disparity = mono.predict(image)  # [H, W, 3] float in [0, 1] -> [H, W], larger = nearer

Reads the official ``.pth`` state_dicts (``torch.load(weights_only=True)``) and
``.safetensors`` files (ours carry the architecture as JSON metadata; others are matched
to a preset by their tensor shapes). Preprocessing is the official ``image2tensor``:
resize keeping the aspect ratio so that the shorter side is at least ``input_size`` and
both sides are multiples of 14 (bicubic), ImageNet normalisation; the prediction is
upsampled back to the input size (bilinear, ``align_corners=True``, as ``infer_image``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geometry.errors import UserError
from geometry.io.atomic import atomic_path
from reconstruction.depth.depth_anything import (
    DEPTH_ANYTHING_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DepthAnythingConfig,
    DepthAnythingV2,
)

CONFIG_METADATA_KEY = "depth_anything_v2_config"
"""safetensors metadata entry holding the :class:`DepthAnythingConfig` as JSON."""

_CHECKPOINT_HINT = ("pass an official Depth-Anything-V2 checkpoint "
                    "(depth_anything_v2_vits.pth, _vitb.pth or _vitl.pth) or a .safetensors "
                    "file saved from one")


def network_input_size(height: int, width: int, input_size: int = 518,
                       multiple: int = 14) -> tuple[int, int]:
    """The network input ``(height, width)`` for an image, as the official ``Resize``.

    ``keep_aspect_ratio=True, resize_method="lower_bound", ensure_multiple_of=14``: scale
    so that both sides reach at least ``input_size``, round each side to a multiple of
    ``multiple`` (NumPy's round-half-to-even), rounding up instead where that falls short.
    """
    scale = max(input_size / height, input_size / width)

    def constrain(value: float) -> int:
        rounded = int(np.round(value / multiple) * multiple)
        if rounded < input_size:
            rounded = int(np.ceil(value / multiple) * multiple)
        return rounded

    return constrain(scale * height), constrain(scale * width)


@dataclass
class MonoDepth:
    """A loaded Depth-Anything-V2 network with the official pre- and post-processing."""

    model: DepthAnythingV2
    """The network, in eval mode, on its device."""
    input_size: int = 518
    """Target shorter side of the network input, pixels (the official ``--input-size``)."""

    @property
    def config(self) -> DepthAnythingConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.pretrained.pos_embed.device

    def preprocess(self, image: Tensor) -> Tensor:
        """``[H, W, 3]`` RGB in [0, 1] -> ``[1, 3, h, w]`` normalised network input, on device."""
        height, width = image.shape[:2]
        net_h, net_w = network_input_size(height, width, self.input_size,
                                          self.config.patch_size)
        pixels = image.to(self.device, torch.float32).permute(2, 0, 1)[None]
        if (net_h, net_w) != (height, width):
            # cv2.INTER_CUBIC in the official code; PyTorch's bicubic uses the same kernel
            # (a = -0.75, half-pixel centres, clamped borders) and no antialiasing either.
            pixels = F.interpolate(pixels, (net_h, net_w), mode="bicubic", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    @torch.no_grad()
    def predict(self, image: Tensor) -> Tensor:
        """Relative inverse depth at the input resolution.

        Args:
            image: ``[..., H, W, 3]`` RGB, float in [0, 1], any device.

        Returns:
            ``[..., H, W]`` float32 on the image's device: non-negative relative inverse
            depth (disparity-like, larger = nearer), with an unknown scale and shift per
            image, so align it to metric depth before using it as depth.
        """
        if image.ndim < 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an [..., H, W, 3] RGB image, got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"expected a float image in [0, 1], got dtype {image.dtype}")
        lead, (height, width) = image.shape[:-3], image.shape[-3:-1]
        flat = image.reshape(-1, height, width, 3)
        outputs = []
        for single in flat:  # one at a time: memory stays that of one 518 px image
            disparity = self.model(self.preprocess(single))  # [1, h, w]
            disparity = F.interpolate(disparity[:, None], (height, width), mode="bilinear",
                                      align_corners=True)[0, 0]
            outputs.append(disparity.to(image.device))
        return torch.stack(outputs).reshape(*lead, height, width)


@functools.cache
def expected_shapes(config: DepthAnythingConfig) -> dict[str, tuple[int, ...]]:
    """``{state_dict key: shape}`` of a model with ``config``, built without allocating."""
    with torch.device("meta"):
        model = DepthAnythingV2(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _natural(key: str) -> list:
    """Sort key that puts ``blocks.2`` before ``blocks.10``."""
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def _examples(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def _mismatch(state_shapes: dict[str, tuple[int, ...]],
              config: DepthAnythingConfig) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, keys whose shapes differ), each sorted."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state_shapes), key=_natural)
    unexpected = sorted(set(state_shapes) - set(expected), key=_natural)
    # pos_embed first: its shape says the encoder width and training resolution.
    wrong = sorted((key for key in set(expected) & set(state_shapes)
                    if expected[key] != state_shapes[key]),
                   key=lambda key: (key != "pretrained.pos_embed", _natural(key)))
    return missing, unexpected, wrong


def _describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str],
                       state_shapes: dict[str, tuple[int, ...]],
                       config: DepthAnythingConfig) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} keys missing ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if wrong:
        key = wrong[0]
        parts.append(f"{len(wrong)} tensors of another shape ({key}: "
                     f"{list(state_shapes[key])} instead of {list(expected_shapes(config)[key])})")
    return ", ".join(parts)


def _read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors of a checkpoint file and its safetensors metadata (empty for .pth)."""
    if not path.exists():
        raise UserError(f"Monocular depth checkpoint {path} does not exist; {_CHECKPOINT_HINT}.")
    if not path.is_file():
        raise UserError(f"Monocular depth checkpoint {path} is not a file; {_CHECKPOINT_HINT}.")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as reader:
                metadata = dict(reader.metadata() or {})
                tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
        except Exception as err:  # the reader's errors are not one documented class
            raise UserError(f"Cannot read {path} as safetensors ({type(err).__name__}: "
                            f"{str(err)[:120]}); {_CHECKPOINT_HINT}.") from None
        return tensors, metadata
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unpickling, zip and EOF errors all mean "unreadable" here
        # Never quote torch's message: it advises loading with weights_only=False.
        raise UserError(f"Cannot read {path} as a PyTorch checkpoint (not a PyTorch file, "
                        "damaged, or holding Python objects other than tensors); "
                        f"{_CHECKPOINT_HINT}.") from None
    # Training scripts often wrap the weights; the official files are the bare state_dict.
    if isinstance(loaded, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(loaded.get(wrapper), dict):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, dict) or not all(
            isinstance(key, str) and isinstance(value, Tensor) for key, value in loaded.items()):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state_dict of named "
                        f"tensors; {_CHECKPOINT_HINT}.")
    if loaded and all(key.startswith("module.") for key in loaded):  # saved from DDP
        loaded = {key[len("module."):]: value for key, value in loaded.items()}
    return loaded, {}


def _config_from_metadata(path: Path, text: str) -> DepthAnythingConfig:
    try:
        fields = json.loads(text)
        known = {field.name for field in dataclasses.fields(DepthAnythingConfig)}
        if not isinstance(fields, dict) or not set(fields) <= known:
            raise ValueError(f"unknown fields {sorted(set(fields) - known)}")
        fields = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in fields.items()}
        return DepthAnythingConfig(**fields)
    except (ValueError, TypeError) as err:
        raise UserError(f"{path} carries an invalid {CONFIG_METADATA_KEY} metadata entry "
                        f"({err}); save it again with save_mono_depth.") from None


def _resolve_config(path: Path, state_shapes: dict[str, tuple[int, ...]],
                    metadata: dict[str, str], encoder: str | None) -> DepthAnythingConfig:
    """The architecture for a state_dict: forced preset, saved config, or matching shapes."""
    if encoder is not None:
        if encoder not in DEPTH_ANYTHING_PRESETS:
            raise UserError(f"Unknown Depth-Anything encoder {encoder!r}; choose one of "
                            f"{', '.join(DEPTH_ANYTHING_PRESETS)} or leave it unset to infer it.")
        config = DEPTH_ANYTHING_PRESETS[encoder]
        mismatch = _mismatch(state_shapes, config)
        if any(mismatch):
            raise UserError(f"{path} is not a Depth-Anything-V2 {encoder} state_dict: "
                            f"{_describe_mismatch(*mismatch, state_shapes, config)}; check "
                            f"the encoder or leave it unset to infer it from the file.")
        return config
    if CONFIG_METADATA_KEY in metadata:
        config = _config_from_metadata(path, metadata[CONFIG_METADATA_KEY])
        mismatch = _mismatch(state_shapes, config)
        if any(mismatch):
            raise UserError(f"{path} does not match the architecture in its own metadata: "
                            f"{_describe_mismatch(*mismatch, state_shapes, config)}; "
                            f"{_CHECKPOINT_HINT}.")
        return config
    if any(key.startswith("backbone.embeddings.") for key in state_shapes):
        raise UserError(f"{path} is a HuggingFace transformers checkpoint (backbone.*, neck.*, "
                        f"head.* keys), not the official state_dict; {_CHECKPOINT_HINT}.")
    scored = []
    for name, config in DEPTH_ANYTHING_PRESETS.items():
        mismatch = _mismatch(state_shapes, config)
        if not any(mismatch):
            return config
        scored.append((sum(map(len, mismatch)), name, mismatch))
    _, name, mismatch = min(scored)
    raise UserError(f"{path} is not a Depth-Anything-V2 state_dict (closest preset {name}: "
                    f"{_describe_mismatch(*mismatch, state_shapes, DEPTH_ANYTHING_PRESETS[name])}"
                    f"); {_CHECKPOINT_HINT}.")


def load_mono_depth(path: Path | str, device: str | torch.device = "cpu",
                    encoder: str | None = None, input_size: int = 518) -> MonoDepth:
    """Load a Depth-Anything-V2 checkpoint from a local file; nothing is downloaded.

    Args:
        path: ``.pth`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``
            holding the official state_dict (``pretrained.*``, ``depth_head.*``).
        device: where the network runs.
        encoder: ``vits``, ``vitb``, ``vitl`` (or ``tiny``); inferred from the file when
            ``None`` (saved metadata first, else the preset whose tensor shapes match).
        input_size: target shorter side of the network input, pixels (multiple of 14).

    Raises:
        UserError: the file is missing or unreadable, or is not a Depth-Anything-V2
            state_dict (the message names missing/unexpected keys).
    """
    path = Path(path)
    if input_size < 14:
        raise UserError(f"Monocular depth input size {input_size} is too small; use at least "
                        f"14 pixels (518 is the official default).")
    tensors, metadata = _read_tensors(path)
    state_shapes = {key: tuple(value.shape) for key, value in tensors.items()}
    config = _resolve_config(path, state_shapes, metadata, encoder)
    # float16/bfloat16 exports run in float32: the CPU has no fast half-precision path.
    state = {key: value.float() if value.is_floating_point() else value
             for key, value in tensors.items()}
    with torch.device("meta"):  # no random init of up to 335M parameters to overwrite
        model = DepthAnythingV2(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model = model.to(device).eval()
    return MonoDepth(model=model, input_size=input_size)


def save_mono_depth(model: DepthAnythingV2, path: Path | str) -> Path:
    """Write ``model``'s state_dict atomically with the official key names.

    ``.safetensors`` files also carry the configuration as JSON metadata (so non-preset
    architectures load back); any other suffix is written with ``torch.save`` as the
    official ``.pth`` files are.
    """
    path = Path(path)
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            config_json = json.dumps(dataclasses.asdict(model.config))
            save_file(state, str(tmp), metadata={CONFIG_METADATA_KEY: config_json})
        else:
            torch.save(state, tmp)
    return path
