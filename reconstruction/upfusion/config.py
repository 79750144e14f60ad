"""Options of ``recon fit --method upfusion`` (``--upfusion.*``). Light: imported for --help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class UpFusionOptions:
    """UpFusion: novel views from UpSRT (and its DF+SLT ControlNet when diffusion weights are
    given), distilled into the splats."""

    upsrt: Path | None = None
    """UpSRT: a checkpoint folder of 'recon upsrt train', or the official upsrt.pt (then
    --upfusion.dino too). Required."""
    dino: Path | None = None
    """DINOv2 ViT-B/14 weights (dinov2_vitb14_pretrain.pth) for the official upsrt.pt."""
    diffusion: Path | None = None
    """UpFusion's diffusion weights (upfusion2d.pt: ControlNet + fine-tuned Stable Diffusion
    1.5; the CLIP text encoder and VAE from --upfusion.sd). None: distil UpSRT's own
    renders (what runs on a CPU)."""
    sd: Path | None = None
    """A local Stable Diffusion 1.5 diffusers folder (CLIP text encoder, tokenizer), with
    --upfusion.diffusion."""
    distill_weight: float = 1.0
    """Weight of the distillation loss of a novel view against the photometric loss."""
    distill_every: int = 1
    """Distil on every this-many iterations."""
    render_size: int = 64
    """Side of the novel-view renders (square); 256 with diffusion weights (the official)."""
    bootstrap_fraction: float = 0.1
    """Share of the iterations distilled at high noise only with weight 1 (official: 300 of
    3000), before the noise level is drawn from the whole range."""
    ddim_steps: int = 30
    """DDIM schedule of the denoiser (official: 30; the noise level is one of its steps)."""
    guidance_scale: float = 9.0
    """Classifier-free guidance scale (official: 9, the 'F1' strategy: prompt and view
    condition dropped together)."""
    lpips_weight: float = 0.1
    """Weight of LPIPS against the target (official: 0.1, VGG); needs --upfusion.lpips."""
    lpips: Path | None = None
    """LPIPS weights (see recon eval --lpips); None: L2 only."""
    opacity_weight: float = 1e-3
    """Weight of the opacity term sqrt(alpha^2 + 0.01) of the novel renders (official)."""
    elevation_margin_deg: float = 30.0
    """Novel views up to this far above/below the inputs' elevations."""
    search_size: int = 24
    """Pose search of the inputs after the first: render side (pixels) ..."""
    search_azimuths: int = 24
    """... azimuths over the full circle ..."""
    search_elevations: tuple[float, ...] = (-30.0, -15.0, 0.0, 15.0, 30.0, 45.0)
    """... and elevations (degrees) relative to the first view, on the unit sphere."""
    fov_deg: float | None = None
    """Horizontal field of view of the photos when they carry no EXIF focal (None: the
    official assumption, focal 4.5 in NDC, about 25 degrees)."""
