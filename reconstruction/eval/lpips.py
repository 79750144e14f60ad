"""LPIPS (Zhang et al. 2018, v0.1), loaded only from local weight files the user gives.

The network mirrors the official ``lpips`` package module for module, so its state_dict
keys are the official ones and its ``.pth`` files load unchanged:

- ``scaling_layer.shift`` / ``scaling_layer.scale``: input normalisation buffers;
- ``net.slice1 .. net.slice5``: the trunk (AlexNet or VGG-16 ``features``), cut after
  each ReLU the metric reads, with the layer indices of torchvision's ``features``
  (AlexNet convs at ``slice1.0, slice2.3, slice3.6, slice4.8, slice5.10``);
- ``lin0 .. lin4`` (and their aliases ``lins.0 .. lins.4``): ``model.1`` is a 1x1 conv
  without bias from the layer's channels to 1 (``model.0`` is a weightless dropout).

The official ``weights/v0.1/alex.pth`` holds only the ``lin*`` heads: the trunk comes from
torchvision's ImageNet weights (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``, keys
``features.N.*``), which the user passes as a second local file. A full LPIPS state_dict
(``LPIPS().state_dict()`` of the official package, or safetensors with the same keys)
needs nothing else. Nothing is ever downloaded.

Distance: inputs in [0, 1] are mapped to [-1, 1], normalised by the scaling layer; each
layer's features are unit-normalised over channels, their squared difference is weighted
by the linear head and averaged over the image, and the five layers are summed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from geometry.errors import UserError

NetName = Literal["alex", "vgg"]

#: Channels of the five feature layers the metric reads.
CHANNELS: dict[str, tuple[int, ...]] = {
    "alex": (64, 192, 384, 256, 256),
    "vgg": (64, 128, 256, 512, 512),
}

# torchvision ``features`` layout: ("conv", out_channels, kernel, stride, padding), "relu",
# "pool" (with its kernel/stride); slices end after the ReLUs LPIPS reads.
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def _alex_layers(widths: tuple[int, ...]) -> list[nn.Module]:
    c1, c2, c3, c4, c5 = widths
    return [
        nn.Conv2d(3, c1, 11, 4, 2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(),
    ]


def _vgg_layers(widths: tuple[int, ...]) -> list[nn.Module]:
    c1, c2, c3, c4, c5 = widths
    layers: list[nn.Module] = []
    blocks = ((3, c1, 2), (c1, c2, 2), (c2, c3, 3), (c3, c4, 3), (c4, c5, 3))
    for b, (cin, cout, convs) in enumerate(blocks):
        if b > 0:
            layers.append(nn.MaxPool2d(2, 2))
        for k in range(convs):
            layers += [nn.Conv2d(cin if k == 0 else cout, cout, 3, padding=1), nn.ReLU()]
    return layers[:30]


class _Trunk(nn.Module):
    """Five sequential slices named and indexed like torchvision's ``features``."""

    def __init__(self, net: NetName, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers = _alex_layers(widths) if net == "alex" else _vgg_layers(widths)
        bounds = _ALEX_SLICES if net == "alex" else _VGG_SLICES
        for k, (start, stop) in enumerate(bounds, start=1):
            seq = nn.Sequential()
            for index in range(start, stop):
                seq.add_module(str(index), layers[index])
            self.add_module(f"slice{k}", seq)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            outs.append(x)
        return outs


class _ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class _NetLinLayer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """The LPIPS v0.1 network (see the module doc); always in eval mode, no gradients needed.

    Args:
        net: trunk, ``alex`` (the usual choice in sparse-view papers) or ``vgg``.
        widths: channels of the five feature layers; default the real network's. Smaller
            widths build a tiny net of the same architecture (for tests).
    """

    def __init__(self, net: NetName = "alex", widths: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if net not in CHANNELS:
            raise ValueError(f"LPIPS net must be one of {tuple(CHANNELS)}, got {net!r}")
        self.net_name = net
        self.widths = tuple(widths or CHANNELS[net])
        self.scaling_layer = _ScalingLayer()
        self.net = _Trunk(net, self.widths)
        for k, c in enumerate(self.widths):
            self.add_module(f"lin{k}", _NetLinLayer(c))
        self.lins = nn.ModuleList([getattr(self, f"lin{k}") for k in range(5)])
        self.requires_grad_(False)
        self.eval()

    def forward(self, image: Tensor, reference: Tensor) -> Tensor:
        """LPIPS distance of images ``[..., H, W, 3]`` in [0, 1]; returns ``[...]``.

        0 for identical images, larger for more different ones.
        """
        if image.shape != reference.shape or image.shape[-1] != 3:
            raise ValueError(f"LPIPS needs two [..., H, W, 3] images of one shape, got "
                             f"{tuple(image.shape)} and {tuple(reference.shape)}")
        batch = image.shape[:-3]
        dtype = self.scaling_layer.shift.dtype

        def prepare(x: Tensor) -> Tensor:
            x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).to(dtype)
            return self.scaling_layer(2.0 * x - 1.0)

        feats0, feats1 = self.net(prepare(image)), self.net(prepare(reference))
        total = 0.0
        for k in range(5):
            f0 = feats0[k] / (feats0[k].square().sum(1, keepdim=True).sqrt() + 1e-10)
            f1 = feats1[k] / (feats1[k].square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + self.lins[k]((f0 - f1) ** 2).mean((2, 3), keepdim=True)
        return total.reshape(batch)


def _read_tensors(path: Path, what: str = "an LPIPS weights file",
                  hint: str = "give the LPIPS .pth (or .safetensors) file with --lpips-weights."
                  ) -> dict[str, Tensor]:
    """A state_dict from ``.safetensors`` or a ``.pth``/``.pt`` (tensors only, never pickles).

    ``what`` and ``hint`` name the file's role in the messages (the heads or the trunk).
    """
    from geometry.io.checkpoints import load_safetensors, torch_load_weights_only

    if path.suffix == ".safetensors":
        return load_safetensors(path, what, hint)
    data = torch_load_weights_only(path, what, hint)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise UserError(f"{path} is not {what} (it holds no state_dict of tensors); {hint}")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _infer_net(state: dict[str, Tensor], path: Path) -> tuple[NetName, tuple[int, ...]]:
    widths = []
    for k in range(5):
        weight = state.get(f"lin{k}.model.1.weight", state.get(f"lins.{k}.model.1.weight"))
        if weight is None or weight.dim() != 4 or weight.shape[0] != 1:
            raise UserError(f"{path} has no LPIPS linear head lin{k}.model.1.weight [1, C, 1, 1]; "
                            "it is not an LPIPS weights file.")
        widths.append(int(weight.shape[1]))
    for net, channels in CHANNELS.items():
        if tuple(widths) == channels:
            return net, channels  # type: ignore[return-value]
    if "net.slice1.0.weight" in state:
        # A full state_dict of a smaller network of the same architecture (tests).
        first = state["net.slice1.0.weight"]
        return ("alex" if first.shape[-1] == 11 else "vgg"), tuple(widths)
    raise UserError(f"{path} has LPIPS heads for channels {widths}, which match neither "
                    "AlexNet nor VGG-16; use the official alex.pth or vgg.pth.")


def _trunk_from_torchvision(state: dict[str, Tensor], net: NetName) -> dict[str, Tensor]:
    """Map torchvision ``features.N.*`` keys to ``net.sliceK.N.*``."""
    bounds = _ALEX_SLICES if net == "alex" else _VGG_SLICES
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "features":
            continue
        index = int(parts[1])
        for k, (start, stop) in enumerate(bounds, start=1):
            if start <= index < stop:
                out[f"net.slice{k}.{index}.{parts[2]}"] = value
    return out


def load_lpips(weights: str | os.PathLike, backbone: str | os.PathLike | None = None,
               device: str | torch.device = "cpu",
               flags: tuple[str, str] = ("--lpips-weights", "--lpips-backbone")) -> LPIPS:
    """Build :class:`LPIPS` from local files (see the module doc for what each holds).

    Args:
        weights: a full LPIPS state_dict, or the official linear heads (``alex.pth``).
        backbone: torchvision's ImageNet weights of the trunk, needed when ``weights``
            holds only the heads; ignored otherwise.
        device: where the network runs.
        flags: the command-line options of ``weights`` and ``backbone`` (for messages).

    Raises:
        UserError: a missing or unreadable file, or weights that do not fit the network.
    """
    path = Path(weights)
    state = _read_tensors(path, hint=f"give the LPIPS .pth (or .safetensors) file with "
                                     f"{flags[0]}.")
    net, widths = _infer_net(state, path)
    model = LPIPS(net, widths)
    full = dict(model.state_dict())  # defaults: the scaling buffers
    for k in range(5):
        head = state.get(f"lin{k}.model.1.weight", state.get(f"lins.{k}.model.1.weight"))
        full[f"lin{k}.model.1.weight"] = head
        full[f"lins.{k}.model.1.weight"] = head
    trunk = {k: v for k, v in state.items() if k.startswith("net.")}
    if not trunk:
        if backbone is None:
            raise UserError(f"{path} holds only the LPIPS linear heads; also pass the "
                            f"{'AlexNet' if net == 'alex' else 'VGG-16'} trunk weights "
                            f"(torchvision's ImageNet .pth) with {flags[1]} PATH.")
        tv_name = "AlexNet" if net == "alex" else "VGG-16"
        trunk = _trunk_from_torchvision(_read_tensors(
            Path(backbone), f"torchvision's {tv_name} ImageNet weights file",
            f"give torchvision's {'alexnet' if net == 'alex' else 'vgg16'} ImageNet .pth "
            f"with {flags[1]}."), net)
        if not trunk:
            raise UserError(f"{backbone} has no features.N.weight entries; give torchvision's "
                            f"{'alexnet' if net == 'alex' else 'vgg16'} ImageNet weights.")
    for key in full:
        if key.startswith("net."):
            if key not in trunk:
                raise UserError(f"the LPIPS trunk weights lack {key}; give the "
                                f"{'AlexNet' if net == 'alex' else 'VGG-16'} weights that "
                                "match the heads.")
            full[key] = trunk[key]
    for key in ("scaling_layer.shift", "scaling_layer.scale"):
        if key in state:
            full[key] = state[key]
    try:
        model.load_state_dict({k: v.float() for k, v in full.items()}, strict=True)
    except RuntimeError as err:
        raise UserError(f"the LPIPS weights do not fit the {net} network ({err}); use the "
                        "official files.") from None
    return model.to(device)
