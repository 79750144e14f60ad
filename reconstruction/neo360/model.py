"""The NeO 360 network: an image encoder, a voxel volume pooled into triplanes, and
NeRF++-style foreground/background decoders reading triplane and pixel-aligned features.

Encoder (Irshad et al. 2023, sec. 3):

1. a ResNet (torchvision layout; its stem and first three stages) gives per-view feature
   maps at half resolution (the stages upsampled and fused, as pixelNeRF does);
2. a ``G^3`` grid of points over the contracted scene (``contract(x) / 2`` in ``[-1, 1]^3``,
   by default the L-infinity contraction as the reference code: the box fills the cube and
   the unit box takes the inner half of each axis; the voxels reach the background too) is
   projected into every source view; each visible (view, voxel) pair's feature, with the
   voxel's position and the view direction (positional encodings), goes through an MLP
   that returns a feature and a score; a softmax over the views that see the voxel pools
   them into its feature (zero where no view sees it);
3. the volume collapses into the xy, xz and yz planes by a softmax over the third axis
   (learned scores), and a few residual convolutions refine the planes (optionally
   upsampled first).

Decoder: a point ``x`` of the field frame reads the triplanes at ``contract(x) / 2`` and the
source views' feature maps where it projects (mean and variance over the views that see
it); inside the unit sphere the foreground MLP (input: ``x``), outside the background MLP
(input: NeRF++'s inverted-sphere coordinates ``(x/r, 1/r)``) return density and colour.
Coarse and fine decoders: the fine pass resamples each ray by the coarse weights.

Rays are sampled uniformly in distance up to the unit sphere's far side and uniformly in
disparity beyond it, to ``far`` (one set of bins; a sample is decoded by the foreground or
background MLP by where it lies). The switches ``use_triplane`` / ``use_pixel`` give the
ablations (pixel features only: a pixelNeRF-like baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reconstruction.field.contraction import contract, inverted_sphere, uncontract
from reconstruction.field.rays import Rays, intersect_sphere
from reconstruction.field.render import composite, render_weights
from reconstruction.field.sampling import importance_edges, midpoints, stratified
from reconstruction.field.triplane import sample_triplanes
from reconstruction.neo360.config import NeO360Config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def posenc(x: Tensor, freqs: int) -> Tensor:
    """``[..., D]`` -> ``[..., D (1 + 2 freqs)]``: ``x, sin(2^k pi x), cos(2^k pi x)``."""
    if freqs == 0:
        return x
    scales = (2.0 ** torch.arange(freqs, dtype=x.dtype, device=x.device)) * math.pi
    xs = (x[..., None, :] * scales[:, None]).flatten(-2)
    return torch.cat((x, xs.sin(), xs.cos()), -1)


def posenc_dim(d: int, freqs: int) -> int:
    return d * (1 + 2 * freqs)


# ------------------------------------------------------------------ image encoder


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (same parameter names)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


RESNETS = {"resnet18": ((64, 128, 256), (2, 2, 2)), "resnet34": ((64, 128, 256), (3, 4, 6))}


class ImageEncoder(nn.Module):
    """ResNet stem + three stages, fused into ``feature_dim`` channels at half resolution.

    Batch norms always use their running statistics (few images per batch: batch
    statistics would be noise), so a from-scratch encoder starts with identity norms and an
    ImageNet one keeps its statistics.
    """

    def __init__(self, config: NeO360Config) -> None:
        super().__init__()
        if config.backbone == "tiny":
            widths, blocks = tuple(config.backbone_widths), (1,) * len(config.backbone_widths)
            stem = widths[0]
            self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            widths, blocks = RESNETS[config.backbone]
            stem = 64
            self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        self.stages = len(widths)
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            layers = [BasicBlock(cin, w, 1 if i == 0 else 2)]
            layers += [BasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = w
        self.fuse = nn.Conv2d(stem + sum(widths), config.feature_dim, 1)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """``[V, 3, H, W]`` in [0, 1] -> ``[V, feature_dim, ceil(H/2), ceil(W/2)]``."""
        x = ((images - self.mean) / self.std).contiguous()
        x = F.relu(self.bn1(self.conv1(x)))
        maps = [x]
        x = self.maxpool(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
            maps.append(x)
        size = maps[0].shape[-2:]
        ups = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                           for m in maps[1:]]
        return self.fuse(torch.cat(ups, 1))

    def load_backbone(self, state: dict[str, Tensor]) -> list[str]:
        """Load a torchvision ResNet state dict (ImageNet weights) into the stem and
        stages; returns the names loaded. The fusion layer stays as it is."""
        own = self.state_dict()
        loaded = []
        for name, value in state.items():
            if name in own and own[name].shape == value.shape:
                own[name] = value
                loaded.append(name)
        self.load_state_dict(own)
        return loaded


# ------------------------------------------------------------------ views


@dataclass
class Views:
    """Source views in the field frame, encoded."""

    features: Tensor  # [V, C, h, w]
    K: Tensor  # [V, 3, 3] pixels of the images
    T_cam_world: Tensor  # [V, 4, 4] world = field frame
    centres: Tensor  # [V, 3]
    width: int
    height: int
    images: Tensor | None = None  # [V, 3, H, W] in [0, 1] (for voxel_rgb)


def project_views(views: Views, pts: Tensor) -> tuple[Tensor, Tensor]:
    """``grid_sample`` coordinates ``[V, P, 2]`` of field-frame points ``[P, 3]`` in every
    view (zeros where invalid), and ``[V, P]`` bool: in front of the camera and inside the
    image."""
    R, t = views.T_cam_world[:, :3, :3], views.T_cam_world[:, :3, 3]
    pts_cam = torch.einsum("vij,pj->vpi", R, pts) + t[:, None]
    z = pts_cam[..., 2]
    zs = torch.where(z.abs() < 1e-6, torch.full_like(z, 1e-6), z)
    u = views.K[:, None, 0, 0] * pts_cam[..., 0] / zs + views.K[:, None, 0, 2]
    v = views.K[:, None, 1, 1] * pts_cam[..., 1] / zs + views.K[:, None, 1, 2]
    # align_corners=False: -1 and +1 are the image's outer edges (pixel centres at +0.5)
    grid = torch.stack((u / views.width * 2 - 1, v / views.height * 2 - 1), -1)
    valid = (z > 1e-4) & (grid.abs() <= 1).all(-1)
    return torch.where(valid[..., None], grid, torch.zeros_like(grid)), valid


def sample_views(views: Views, pts: Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear features ``[V, P, C]`` of field-frame points ``[P, 3]`` in every view, and
    ``[V, P]`` bool: in front of the camera and inside the image."""
    grid, valid = project_views(views, pts)
    feats = F.grid_sample(views.features, grid[:, :, None].to(views.features.dtype),
                          mode="bilinear", padding_mode="border", align_corners=False)
    return feats[..., 0].permute(0, 2, 1), valid


def sample_visible(views: Views, pts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Features ``[M, C]`` of the (view, point) pairs where field-frame points ``[P, 3]``
    are visible, with the pairs' view and point indices ``[M]`` (sorted by view): what
    :func:`sample_views` returns at ``valid``, without sampling the invisible pairs."""
    grid, valid = project_views(views, pts)
    vi, pi = valid.nonzero(as_tuple=True)
    counts = valid.sum(1).tolist()
    g = grid[vi, pi].to(views.features.dtype)
    out = []
    for v, part in enumerate(g.split(counts)):
        if len(part):
            f = F.grid_sample(views.features[v:v + 1], part[None, :, None], mode="bilinear",
                              padding_mode="border", align_corners=False)
            out.append(f[0, :, :, 0].T)
    feats = (torch.cat(out) if out else
             views.features.new_zeros(0, views.features.shape[1]))
    if views.images is not None:
        rgb = [F.grid_sample(views.images[v:v + 1], part[None, :, None], mode="bilinear",
                             padding_mode="border", align_corners=False)[0, :, :, 0].T
               for v, part in enumerate(g.split(counts)) if len(part)]
        feats = torch.cat((feats, torch.cat(rgb) if rgb else feats.new_zeros(0, 3)), -1)
    return feats, vi, pi


def _mlp(cin: int, hidden: int, cout: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(cin if i == 0 else hidden, hidden), nn.ReLU()]
    mods.append(nn.Linear(hidden, cout))
    return nn.Sequential(*mods)


class FieldDecoder(nn.Module):
    """Density and colour from point features (one of fg/bg, coarse/fine)."""

    def __init__(self, feat_dim: int, coord_dim: int, config: NeO360Config) -> None:
        super().__init__()
        h = config.mlp_hidden
        self.pos_freqs, self.dir_freqs = config.pos_freqs, config.dir_freqs
        cin = feat_dim + posenc_dim(coord_dim, config.pos_freqs)
        self.trunk = _mlp(cin, h, h, layers=2)
        self.sigma = nn.Linear(h, 1)
        self.rgb = nn.Sequential(nn.Linear(h + posenc_dim(3, config.dir_freqs), h // 2),
                                 nn.ReLU(), nn.Linear(h // 2, 3))

    def forward(self, feats: Tensor, coords: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """``[P, F]``, ``[P, D]``, ``[P, 3]`` -> density ``[P]``, colour ``[P, 3]``."""
        h = F.relu(self.trunk(torch.cat((feats, posenc(coords, self.pos_freqs)), -1)))
        sigma = F.softplus(self.sigma(h)[:, 0] - 1.0)
        rgb = torch.sigmoid(self.rgb(torch.cat((h, posenc(dirs, self.dir_freqs)), -1)))
        return sigma, rgb


@dataclass
class Encoding:
    """A scene as NeO 360 sees it: triplanes and the source views' feature maps."""

    planes: Tensor  # [3, C, G, G] xy, xz, yz (height, width), see field.triplane
    views: Views


class NeO360(nn.Module):
    """Encoder + decoders (see the module doc)."""

    def __init__(self, config: NeO360Config) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = ImageEncoder(c)
        self.project = _mlp(c.feature_dim + (3 if c.voxel_rgb else 0)
                            + posenc_dim(3, c.pos_freqs)
                            + posenc_dim(3, c.dir_freqs), c.mlp_hidden, c.voxel_dim + 1)
        self.plane_score = nn.Linear(c.voxel_dim, 3)
        self.refine = nn.ModuleList(nn.Conv2d(c.voxel_dim, c.voxel_dim, 3, 1, 1)
                                    for _ in range(c.refine_layers))
        tri = c.voxel_dim * (3 if c.triplane_reduce == "concat" else 1)
        feat = (tri if c.use_triplane else 0) + (2 * c.feature_dim if c.use_pixel else 0)
        passes = ("coarse", "fine") if c.num_fine > 0 else ("coarse",)
        self.decoders = nn.ModuleDict({
            f"{p}_{region}": FieldDecoder(feat, 3 if region == "fg" else 4, c)
            for p in passes for region in ("fg", "bg")})

    # -------------------------------------------------------------- encoder

    def voxel_points(self) -> tuple[Tensor, Tensor]:
        """``[G, G, G, 3]`` normalised grid positions in ``[-1, 1]^3`` (indexed x, y, z;
        corners at +-1 as the triplanes' ``align_corners``) and their field-frame points
        (:meth:`grid_coords` inverted; the outermost layer, at infinity, is pulled in to a
        contracted radius of 1.95)."""
        g = self.config.grid
        device = self.plane_score.weight.device
        lin = torch.linspace(-1.0, 1.0, g, device=device)
        p = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1)
        y = 2.0 * p
        norm = self.config.triplane_norm
        n = (y.norm(dim=-1, keepdim=True) if norm == "l2"
             else y.abs().amax(-1, keepdim=True)).clamp_min(1e-9)
        y = torch.where(n > 1.95, y / n * 1.95, y)  # keep the far voxels finite
        return p, uncontract(y, norm)

    def grid_coords(self, pts: Tensor) -> Tensor:
        """Field-frame points ``[..., 3]`` -> their triplane coordinates ``contract(x) / 2``
        in ``[-1, 1]^3`` (contraction norm :attr:`NeO360Config.triplane_norm`)."""
        return contract(pts, self.config.triplane_norm) / 2.0

    def encode(self, images: Tensor, K: Tensor, T_world_cam: Tensor) -> Encoding:
        """Encode source views.

        Args:
            images: ``[V, H, W, 3]`` in [0, 1]; K: ``[V, 3, 3]`` pixels of these images;
            T_world_cam: ``[V, 4, 4]`` in the field frame (OpenCV axes).
        """
        c = self.config
        V, H, W, _ = images.shape
        dtype = self.plane_score.weight.dtype
        # contiguous: a channels-last input crashes this torch build's conv backward (CPU)
        feats = self.encoder(images.permute(0, 3, 1, 2).to(dtype).contiguous())
        T_world_cam = T_world_cam.to(dtype)
        R, t = T_world_cam[:, :3, :3], T_world_cam[:, :3, 3]
        T_cam_world = torch.zeros_like(T_world_cam)
        T_cam_world[:, :3, :3] = R.transpose(1, 2)
        T_cam_world[:, :3, 3] = -(R.transpose(1, 2) @ t[:, :, None])[..., 0]
        T_cam_world[:, 3, 3] = 1.0
        views = Views(feats, K.to(dtype), T_cam_world, t, W, H)
        r = c.grid * c.plane_upsample
        planes = torch.zeros(3, c.voxel_dim, r, r, dtype=dtype, device=feats.device)
        if c.use_triplane:
            if c.voxel_rgb:
                views.images = images.permute(0, 3, 1, 2).to(dtype).contiguous()
            planes = self._triplanes(views)
            views.images = None
        return Encoding(planes, views)

    def voxel_volume(self, views: Views) -> Tensor:
        """The feature volume ``[G, G, G, voxel_dim]`` (indexed x, y, z): every voxel's
        features in the views that see it, pooled by a softmax of their scores (zero where
        no view sees it)."""
        c = self.config
        g = c.grid
        p, x = self.voxel_points()
        p, x = p.reshape(-1, 3), x.reshape(-1, 3)
        V, P = len(views.features), len(p)
        # the projection MLP runs on visible (view, voxel) pairs only: an invisible pair
        # has no weight in the pooling
        f, vi, pi = sample_visible(views, x)  # [M, C]
        dirs = F.normalize(x[pi] - views.centres[vi], dim=-1)
        out = self.project(torch.cat((f, posenc(p, c.pos_freqs)[pi],
                                      posenc(dirs, c.dir_freqs)), -1))
        score = out.new_full((V, P), -1e4).index_put((vi, pi), out[:, -1])
        w = torch.softmax(score, 0)[vi, pi]  # views without the voxel have weight 0
        vol = out.new_zeros(P, c.voxel_dim).index_add(0, pi, w[:, None] * out[:, :-1])
        return vol.reshape(g, g, g, c.voxel_dim)

    def _triplanes(self, views: Views) -> Tensor:
        vol = self.voxel_volume(views)  # [x, y, z, C]
        scores = self.plane_score(vol)  # [x, y, z, 3]
        xy = (torch.softmax(scores[..., 0], 2)[..., None] * vol).sum(2)  # [x, y, C]
        xz = (torch.softmax(scores[..., 1], 1)[..., None] * vol).sum(1)  # [x, z, C]
        yz = (torch.softmax(scores[..., 2], 0)[..., None] * vol).sum(0)  # [y, z, C]
        # plane images are [C, height, width] with width along the first coordinate
        planes = torch.stack([xy.permute(2, 1, 0), xz.permute(2, 1, 0), yz.permute(2, 1, 0)])
        if self.config.plane_upsample > 1:
            r = self.config.grid * self.config.plane_upsample
            planes = F.interpolate(planes, size=(r, r), mode="bilinear", align_corners=True)
        for i, conv in enumerate(self.refine):
            update = conv(planes)
            planes = planes + (F.relu(update) if i < len(self.refine) - 1 else update)
        return planes

    # -------------------------------------------------------------- decoder

    def query(self, enc: Encoding, pts: Tensor, dirs: Tensor, stage: str
              ) -> tuple[Tensor, Tensor]:
        """Density ``[P]`` and colour ``[P, 3]`` of field-frame points ``[P, 3]`` seen along
        unit directions ``[P, 3]`` by the ``stage`` (coarse/fine) decoders."""
        c = self.config
        parts = []
        if c.use_triplane:
            parts.append(sample_triplanes(enc.planes[None], self.grid_coords(pts)[None],
                                          c.triplane_reduce)[0])
        if c.use_pixel:
            f, valid = sample_views(enc.views, pts)
            w = valid.to(f.dtype)[..., None]
            n = w.sum(0).clamp_min(1.0)
            mean = (w * f).sum(0) / n
            var = (w * (f - mean) ** 2).sum(0) / n
            parts.append(torch.cat((mean, var), -1))
        feats = torch.cat(parts, -1)
        inside = pts.norm(dim=-1) < 1.0
        sigma = pts.new_zeros(len(pts))
        rgb = pts.new_zeros(len(pts), 3)
        for region, sel in (("fg", inside), ("bg", ~inside)):
            idx = sel.nonzero()[:, 0]
            if not len(idx):
                continue
            coords = pts[idx] if region == "fg" else inverted_sphere(pts[idx])
            s, col = self.decoders[f"{stage}_{region}"](feats[idx], coords, dirs[idx])
            sigma = sigma.index_put((idx,), s)
            rgb = rgb.index_put((idx,), col)
        return sigma, rgb

    def coarse_edges(self, rays: Rays, perturb: bool = False,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``[N, num_fg + num_bg + 1]`` bins (linear to the unit sphere's far side, then
        linear in disparity to ``far``) and the split distance ``[N]``."""
        c = self.config
        _, t_out = intersect_sphere(rays.origins, rays.directions, 1.0)
        near = torch.full_like(t_out, c.near)
        split = torch.maximum(t_out, near + 1e-2)
        fg = stratified(near, split, c.num_fg, perturb, "linear", generator)
        bg = stratified(split, torch.full_like(split, c.far), c.num_bg, perturb, "inverse",
                        generator)
        return torch.cat((fg, bg[..., 1:]), -1), split

    def normalised_distance(self, t: Tensor, split: Tensor) -> Tensor:
        """The bins' spacing coordinate in [0, 1] (0.5 at ``split``), for the distortion
        loss: linear before ``split``, linear in disparity after it."""
        c = self.config
        split = split[..., None]
        a = 0.5 * (t - c.near) / (split - c.near)
        inv = 1.0 / t.clamp_min(1e-6)
        b = 0.5 + 0.5 * (1.0 / split - inv) / (1.0 / split - 1.0 / c.far)
        return torch.where(t <= split, a, b)

    def _render_pass(self, enc: Encoding, rays: Rays, edges: Tensor, stage: str
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        mids = midpoints(edges)
        pts = rays.points(mids)
        N, S = mids.shape
        dirs = rays.directions[:, None].expand(N, S, 3)
        sigma, rgb = self.query(enc, pts.reshape(-1, 3), dirs.reshape(-1, 3), stage)
        weights, _ = render_weights(sigma.reshape(N, S), edges[:, 1:] - edges[:, :-1])
        return weights, composite(weights, rgb.reshape(N, S, 3), mids)

    def render_rays(self, enc: Encoding, rays: Rays, perturb: bool = False,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Render field-frame rays ``[N]``: ``rgb``, ``depth`` (distance), ``alpha`` of the
        last pass, ``coarse_rgb``, and ``s_edges``/``weights`` for the distortion loss."""
        edges, split = self.coarse_edges(rays, perturb, generator)
        weights, out = self._render_pass(enc, rays, edges, "coarse")
        result = {"coarse_rgb": out["rgb"]}
        if self.config.num_fine > 0:
            edges = importance_edges(edges, weights, self.config.num_fine, perturb, generator)
            weights, out = self._render_pass(enc, rays, edges, "fine")
        result.update(out)
        result["s_edges"] = self.normalised_distance(edges, split)
        result["weights"] = weights
        return result
