"""ResNet (torchvision's architecture and state_dict key names) and an FPN.

torchvision does not import beside our torch, so the architecture is written here with the
same module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``, ...)
so that an official torchvision checkpoint loads with :func:`load_resnet_weights`.
Weights come only from a local file; without one the network is randomly initialised.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from geometry.errors import UserError

_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride here (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ResNet without the classifier; returns the C3, C4, C5 maps (strides 8,
    16, 32)."""

    def __init__(self, depth: int = 50, width: int = 64, norm_eval: bool = False,
                 checkpoint_stages: bool = False, frozen_stages: int = -1) -> None:
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(_LAYERS)}, got {depth}")
        kind, layers = _LAYERS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.norm_eval = norm_eval
        self.checkpoint_stages = checkpoint_stages
        self.frozen_stages = frozen_stages
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.out_channels = tuple(width * m * block.expansion for m in (2, 4, 8))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

        self._freeze()

    def _frozen_modules(self) -> list[nn.Module]:
        """mmdet's ``frozen_stages``: 0 freezes the stem, ``k`` also layers 1..k."""
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f"layer{i}")
                                         for i in range(1, self.frozen_stages + 1)]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        if mode:
            self._freeze()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def _stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        # Block by block: the backward pass recomputes one block's activations at a time.
        if self.checkpoint_stages and self.training and torch.is_grad_enabled():
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return stage(x)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` normalised images -> ``[C3 [N, c3, H/8, W/8], C4, C5]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self._stage(self.layer1, x)
        c3 = self._stage(self.layer2, x)
        c4 = self._stage(self.layer3, c3)
        c5 = self._stage(self.layer4, c4)
        return [c3, c4, c5]


def load_resnet_weights(model: ResNet, path: str | os.PathLike) -> None:
    """Load a torchvision ResNet checkpoint (``.pth`` state_dict, read with
    ``weights_only=True``, or ``.safetensors``); the classifier (``fc.*``) is ignored."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image backbone weights {path} do not exist; pass a local torchvision "
                        "ResNet checkpoint or leave --image-backbone-weights unset.")
    from geometry.io.checkpoints import load_safetensors, torch_load_weights_only

    what = "a torchvision ResNet weights file"
    hint = ("pass a local torchvision ResNet checkpoint (.pth state_dict or .safetensors) to "
            "--image-backbone-weights, or leave it unset.")
    if path.suffix == ".safetensors":
        state = load_safetensors(path, what, hint)
    else:
        state = torch_load_weights_only(path, what, hint)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"{path} is not {what} (it holds no state_dict of named tensors); "
                        f"{hint}")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    hint = "pass the torchvision checkpoint of the configured depth and width."
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(f"{path} does not fit this ResNet ({first}); {hint}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{path} does not match a ResNet of this depth and width (missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}); {hint}")


class FPN(nn.Module):
    """Feature pyramid: lateral 1x1 + top-down sum + 3x3 output convs; an extra level
    (a stride-2 conv on the last output) when ``num_levels`` exceeds the inputs."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, num_levels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                    for _ in in_channels)
        self.extra = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, 2, 1)
                                   for _ in range(max(0, num_levels - len(in_channels))))
        self.num_levels = num_levels

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, laterals, strict=True)]
        for conv in self.extra:
            outs.append(conv(outs[-1]))
        return outs[: self.num_levels]
