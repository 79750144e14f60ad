"""NeO 360 with its source views as a ray field (what :class:`FieldSceneModel` renders).

The state dict holds the network and the source views (images, intrinsics, field-frame
poses), so a ``recon fit --method neo360`` output folder renders on its own; the encoding
(triplanes and feature maps) is computed once per loaded model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reconstruction.field.rays import Rays
from reconstruction.neo360.config import NeO360Config
from reconstruction.neo360.model import Encoding, NeO360


class NeO360Field(nn.Module):
    """A NeO 360 network conditioned on source views (field frame)."""

    def __init__(self, model: NeO360, images: Tensor, K: Tensor, T_world_cam: Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("src_images", images.float())  # [V, H, W, 3]
        self.register_buffer("src_K", K.float())  # [V, 3, 3]
        self.register_buffer("src_T_world_cam", T_world_cam.float())  # [V, 4, 4]
        self._encoding: Encoding | None = None

    def config_dict(self) -> dict:
        V, H, W, _ = self.src_images.shape
        return {"model": self.model.config.to_dict(), "num_sources": V, "height": H,
                "width": W}

    def encoding(self) -> Encoding:
        if self._encoding is None or self.training:
            enc = self.model.encode(self.src_images, self.src_K, self.src_T_world_cam)
            if self.training:
                return enc
            self._encoding = enc
        return self._encoding

    def train(self, mode: bool = True) -> NeO360Field:
        self._encoding = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._encoding = None
        return super()._apply(fn, *args, **kwargs)

    def render_rays(self, rays: Rays) -> dict[str, Tensor]:
        """Field-frame rays ``[N]`` -> ``rgb [N, 3]`` (premultiplied), ``depth``, ``alpha``."""
        out = self.model.render_rays(self.encoding(), rays.to(dtype=self.src_K.dtype))
        return {"rgb": out["rgb"], "depth": out["depth"], "alpha": out["alpha"]}


def build_neo360_field(config: dict) -> NeO360Field:
    """The builder of the ``neo360`` field kind (placeholders the state dict overwrites)."""
    model = NeO360(NeO360Config.from_dict(dict(config["model"])))
    V, H, W = int(config["num_sources"]), int(config["height"]), int(config["width"])
    return NeO360Field(model, torch.zeros(V, H, W, 3), torch.eye(3).expand(V, 3, 3).clone(),
                       torch.eye(4).expand(V, 4, 4).clone())
