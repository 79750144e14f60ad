"""Neural fields as :class:`~reconstruction.scene_model.SceneModel` s (``recon eval`` /
``recon view`` for field methods).

A *ray field* is an ``nn.Module`` with ``render_rays(rays) -> {"rgb" [N, 3], "depth" [N],
"alpha" [N]}``: colour premultiplied by opacity (no background), expected distance along
the ray of the visible content, opacity. Fields live in a normalised frame
``x_field = (x_world - centre) * scale`` (unbounded-scene methods want the content in the
unit sphere); :class:`FieldSceneModel` maps rays into it and distances back.

Folder layout: ``field.safetensors`` (the module's state dict), ``scene_model.json``
(``{"kind": "field", "field": <field kind>, "config": {...}, "background", "centre",
"scale"}``) and ``transforms.json`` (the training cameras). Field kinds are registered in
:data:`FIELD_KINDS` (name -> ``"module:builder"``, ``builder(config) -> module``), imported
only when a folder of that kind is loaded.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from geometry.cameras import Cameras
from geometry.errors import UserError
from reconstruction.field.rays import Rays, camera_rays
from reconstruction.scene_model import OUTPUTS, RenderOutput, SceneModel, camera_size, check_outputs

#: Field kind -> ``"module:function"`` building the module from its JSON config.
FIELD_KINDS: dict[str, str] = {
    "triplane": "reconstruction.field.triplane_field:build_triplane_field",
    "neo360": "reconstruction.neo360.field:build_neo360_field",
}


def register_field_kind(name: str, target: str) -> None:
    """Register ``"module:function"`` as the builder of field kind ``name``."""
    FIELD_KINDS[name] = target


def _builder(kind: str) -> Callable[[dict], nn.Module]:
    if kind not in FIELD_KINDS:
        raise UserError(f"unknown field kind {kind!r}; known: {', '.join(sorted(FIELD_KINDS))}.")
    module, function = FIELD_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), function)


class FieldSceneModel(SceneModel):
    """A ray field (see the module doc) with its training cameras."""

    differentiable_cameras = False

    def __init__(self, field: nn.Module, cameras: Cameras, kind: str, config: dict,
                 background: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 centre: Sequence[float] = (0.0, 0.0, 0.0), scale: float = 1.0,
                 chunk: int = 4096) -> None:
        self.field = field
        self.cameras = cameras
        self.kind = kind
        self.config = dict(config)
        self.background = tuple(float(c) for c in background)
        self.centre_ = tuple(float(c) for c in centre)
        self.scale = float(scale)
        self.chunk = int(chunk)

    @property
    def device(self) -> torch.device:
        return next(iter(self.field.parameters()), torch.zeros(0)).device

    def centre(self) -> Tensor:
        return torch.tensor(self.centre_, dtype=torch.float64)

    def info(self) -> dict:
        return {"field": self.kind,
                "num_parameters": sum(p.numel() for p in self.field.parameters())}

    def render_rays(self, rays: Rays) -> dict[str, Tensor]:
        """Render world-frame rays ``[N]``: rgb over the background, distance, alpha."""
        device = self.device
        centre = torch.tensor(self.centre_, dtype=torch.float32, device=device)
        bg = torch.tensor(self.background, dtype=torch.float32, device=device)
        out: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "alpha": []}
        for i in range(0, len(rays), self.chunk):
            part = rays[i:i + self.chunk].to(device, torch.float32)
            local = Rays((part.origins - centre) * self.scale, part.directions, part.z_per_t)
            res = self.field.render_rays(local)
            out["rgb"].append(res["rgb"] + (1.0 - res["alpha"][:, None]) * bg)
            out["depth"].append(res["depth"] / self.scale)
            out["alpha"].append(res["alpha"])
        return {k: torch.cat(v) if v else torch.zeros(0, device=device) for k, v in out.items()}

    def render(self, cameras: Cameras, outputs: Sequence[str] = OUTPUTS) -> RenderOutput:
        outputs = check_outputs(outputs)
        width, height = camera_size(cameras)
        rays = camera_rays(cameras.to(dtype=torch.float64)).reshape(-1)
        with torch.no_grad():
            res = self.render_rays(rays)
        C = len(cameras)
        result = RenderOutput()
        if "rgb" in outputs:
            result.rgb = res["rgb"].clamp(0, 1).reshape(C, height, width, 3)
        if "depth" in outputs:
            z = res["depth"] * rays.z_per_t.to(res["depth"])
            result.depth = z.reshape(C, height, width)
        if "alpha" in outputs:
            result.alpha = res["alpha"].reshape(C, height, width)
        return result

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from geometry.io.transforms_json import write_transforms_json

        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.field.state_dict().items()}
        save_file(state, str(folder / "field.safetensors"))
        meta = {"kind": "field", "field": self.kind, "config": self.config,
                "background": list(self.background), "centre": list(self.centre_),
                "scale": self.scale}
        (folder / "scene_model.json").write_text(json.dumps(meta, indent=1) + "\n",
                                                 encoding="utf-8")
        names = self.cameras.names or [f"{k:03d}.png" for k in range(len(self.cameras))]
        write_transforms_json(folder / "transforms.json", self.cameras.to("cpu"),
                              file_paths=list(names))

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> FieldSceneModel:
        from geometry.io.checkpoints import load_safetensors
        from geometry.io.transforms_json import read_transforms_json

        folder = Path(folder)
        for name in ("field.safetensors", "scene_model.json", "transforms.json"):
            if not (folder / name).is_file():
                raise UserError(f"{folder} has no {name}; give the output folder of a "
                                "neural-field method (recon fit --out).")
        try:
            meta = json.loads((folder / "scene_model.json").read_text("utf-8"))
            kind, config = meta["field"], dict(meta["config"])
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{folder / 'scene_model.json'} is unreadable ({err}); "
                            "write it again.") from None
        field = _builder(kind)(config)
        state = load_safetensors(folder / "field.safetensors", "the weights of a neural field")
        try:
            field.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"{folder / 'field.safetensors'} does not fit its "
                            f"scene_model.json ({str(err).splitlines()[0]}).") from None
        field.to(device).eval()
        cameras = read_transforms_json(folder / "transforms.json", dtype=torch.float64,
                                       require_images=False).cameras
        order = sorted(range(len(cameras)), key=lambda i: Path(cameras.names[i]).name)
        return cls(field, cameras[order], kind, config,
                   tuple(meta.get("background", (0.0, 0.0, 0.0))),
                   tuple(meta.get("centre", (0.0, 0.0, 0.0))), float(meta.get("scale", 1.0)))
