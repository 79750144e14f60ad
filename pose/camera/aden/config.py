"""Configuration dataclasses of ADen (no torch import, so the CLI starts fast).

:class:`AdenConfig` is the architecture (stored in the checkpoint's ``config.json`` and
read back by predict/eval); :class:`AdenTrainConfig` the optimisation; :class:`SynthData`
the synthetic object sequences trained and evaluated on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from geometry.errors import UserError

#: How ADen picks each view's pose among its hypotheses (the choices of ``--select`` and
#: ``recon fit --aden-select``): the discriminator's argmax, or the hypotheses' mean.
Selection = Literal["argmax", "mean"]
#: The same choices as a tuple (:meth:`~pose.camera.aden.model.AdenNet.predict`'s).
SELECTIONS: tuple[str, ...] = get_args(Selection)


def check_selection(select: str, option: str) -> None:
    """Refuse a selection that is not one of :data:`SELECTIONS` (``option`` names where
    it came from, for the message).

    Raises:
        UserError: ``select`` is not one of :data:`SELECTIONS`.
    """
    if select not in SELECTIONS:
        raise UserError(f"{option} {select!r} is not one of {', '.join(SELECTIONS)}.")


AdenMode = Literal["aden", "regression", "grid"]
"""aden: generator + discriminator (adaptive density); regression: the generator with one
hypothesis and no discriminator (direct regression, M = 1); grid: the discriminator alone
scoring a fixed uniform rotation grid (RelPose-style), translation regressed."""


@dataclass
class AdenConfig:
    """Architecture of the ADen network (and of its two baselines)."""

    mode: AdenMode = "aden"
    """aden (generator + discriminator), regression (M = 1, no discriminator) or grid
    (uniform rotation grid scored by the discriminator, RelPose-style)."""
    image_size: int = 64
    """Side (pixels) of the square crops the encoder sees."""
    widths: tuple[int, ...] = (24, 48, 96, 192)
    """Channels of the ResNet stages (each stage halves the resolution; a stride-2 stem
    comes first)."""
    blocks: int = 1
    """Residual blocks per stage."""
    backbone_weights: str | None = None
    """Optional local .safetensors file with ImageNet-initialised encoder weights (keys as
    in this encoder's state dict, prefix ``encoder.``); from scratch otherwise."""
    d_model: int = 128
    """Width of the view tokens and of the fusion transformer."""
    patch_tokens: int = 4
    """P > 0: every view also gives ``P x P`` tokens of its last feature map (pooled) to the
    fusion transformer (on synthetic objects the view frames learned only with them); 0: one
    token per view."""
    layers: int = 2
    """Transformer encoder layers fusing the views."""
    heads: int = 4
    """Attention heads."""
    hidden: int = 256
    """Hidden width of the generator and discriminator MLPs."""
    queries: int = 32
    """M: learnable queries, one pose hypothesis each per non-first view in training (1 in
    regression mode)."""
    noise_dim: int = 16
    """Dimension of the Gaussian noise added to each query (0 in regression mode)."""
    hypotheses: int = 500
    """Hypotheses per non-first view at inference (queries x noise draws), argmax score."""
    grid_size: int = 20000
    """Rotations of the uniform grid scored at inference in grid mode."""
    view_frames: bool = True
    """Every view also predicts its camera in a learned frame of the sequence; relative
    poses are composed from them (generator hypotheses as residuals around the composed
    pose, the discriminator reads the residual too) and the frames are trained on all view
    pairs. False: pair features only (the generator's MLP must learn the composition)."""
    frame_weight: float = 1.0
    """Weight of the all-pairs loss of the view frames (chordal rotation + weighted
    translation error of every ordered pair's composed pose)."""
    pose_frequencies: int = 4
    """Fourier frequencies of the pose encoding the discriminator reads."""
    translation_weight: float = 0.5
    """Weight of the squared translation error against the chordal rotation error in the
    hypothesis-nearest loss (and in choosing the nearest hypothesis)."""
    temperature: float = 1.0
    """Softmax temperature of the contrastive discriminator loss."""
    random_negatives: int = 32
    """Uniformly random rotations added as negatives to the discriminator's candidates (in
    grid mode the only negatives, with the GT translation)."""
    negative_margin_deg: float = 5.0
    """Generated hypotheses closer than this to the GT rotation are not negatives."""
    generated_negatives: bool = True
    """The generator's hypotheses (farther than the margin from the GT) are negatives of the
    discriminator too (the paper's scheme); False: random and local negatives only."""
    local_negatives: int = 32
    """Hard negatives per pair for the discriminator: the GT rotation turned about a random
    axis by ``negative_margin_deg`` to ``local_negative_max_deg`` degrees (teach it to rank
    the hypotheses near the truth, not only to reject far ones)."""
    local_negative_max_deg: float = 45.0
    """Largest turn of the local negatives (degrees)."""
    rank_temperature_deg: float = 0.0
    """> 0: train the discriminator to rank its candidates by their distance to the truth
    (soft targets ``softmax(-(angle / this + |dt| / rank_temperature_t))``, no margin)
    instead of the paper's contrastive loss with the truth as the only positive (0).
    ADen mode only: grid scoring keeps the contrastive loss."""
    rank_temperature_t: float = 0.1
    """Translation temperature of the ranking targets (units of the first camera's
    distance to the object)."""
    focal_ndc: float = 2.0
    """Focal length assumed for predicted cameras, in units of half the shorter image side
    (CO3D's isotropic NDC); the network does not estimate intrinsics."""

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.mode == "regression":
            self.queries, self.noise_dim, self.hypotheses = 1, 0, 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (``from_dict`` reads it back)."""
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdenConfig:
        """The config of a ``to_dict`` dict; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class AdenTrainConfig:
    """Optimisation of ADen."""

    steps: int = 20000
    """Training steps (the run also stops at --max-minutes, with a checkpoint)."""
    batch: int = 8
    """Sequences per step (per process under DDP)."""
    views: str = "2-8"
    """Views per sequence: a range 'A-B' drawn uniformly each step, or one number."""
    lr: float = 1e-3
    """AdamW learning rate (from scratch at 32 px, 1e-3 learned where 2e-3 and 3e-4 stalled)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up (then a cosine decay over the steps or the time)."""
    checkpoint_every_s: float = 120.0
    """Seconds between checkpoints."""
    log_every: int = 20
    """Steps between progress/log updates."""
    seed: int = 0
    """Seed of the model initialisation and of the batch sampling."""
    mirror: bool = True
    """Mirror each training sequence left-right with probability 1/2 (its relative poses
    conjugated by diag(-1, 1, 1)): twice the distinct sequences (+5 to +8 points Acc@15 at
    5 views for ADen and the regression after 10 minutes)."""

    def view_range(self) -> tuple[int, int]:
        """``(min, max)`` views parsed from :attr:`views` (ValueError when malformed)."""
        text = str(self.views).strip()
        lo, _, hi = text.partition("-")
        lo_i = int(lo)
        hi_i = int(hi) if hi else lo_i
        if lo_i < 2 or hi_i < lo_i:
            raise ValueError(f"views {self.views!r}: need 2 <= A <= B")
        return lo_i, hi_i


@dataclass
class SynthData:
    """Synthetic object sequences (reconstruction.procedural.objects), rendered once and
    cached in memory."""

    sequences: int = 400
    """Training sequences (objects), each rendered from ``frames`` cameras."""
    frames: int = 10
    """Cameras per sequence; each batch draws its views among them."""
    render_size: int | None = None
    """Side (pixels) of the rendered views (default: the model's image size)."""
    supersample: int = 1
    """Colour rays per pixel along each axis (anti-aliasing; the time grows with its
    square)."""
    seed: int = 0
    """Seed of the training objects (sequence seeds seed * 100000 + k); evaluate on
    another."""
    background: bool = True
    """Textured ground and sky (they can give away the pose of a symmetric object);
    False: a plain grey backdrop."""
    cache: str | None = None
    """Folder caching the rendered sequences (read when it holds the same ones, else
    written)."""
    workers: int = 0
    """Rendering processes (0: this one)."""
