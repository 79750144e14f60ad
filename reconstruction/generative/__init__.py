"""The generative core: diffusion models from local weights, distilled into Gaussian splats.

Written once, shared by Sparse3D, UpFusion, SparseAGS's optional prior and SpaRP:

- :mod:`.ldm`: the published Stable Diffusion 1.5 / ControlNet / Zero123 LDM configs, their
  diffusers translations, the official (LDM) state-dict key lists and the converters from
  official key names to diffusers' (traced, so a test can check that every key is used
  and every parameter filled); tiny random configurations of the same layouts for tests.
- :mod:`.loading`: UNet / ControlNet / VAE / text encoder / scheduler from a local
  diffusers folder or one official ``.safetensors``/``.ckpt`` file, never from a hub
  (one-sentence :class:`~geometry.errors.UserError` naming what is missing).
- :mod:`.schedule`: the DDPM noise schedule, timestep sampling (uniform or annealed),
  SDS weightings, partial DDIM.
- :mod:`.sds`: score distillation (SDS, multi-view-conditioned SDS, C-SDS) on a
  :class:`~.sds.ScoreModel`.
- :mod:`.cameras`: the camera sampler around the object (elevation band, full azimuth,
  radius from the input cameras).
- :mod:`.distill`: loss terms for the Gaussian engine's trainer that render sampled novel
  views and add score distillation (:class:`~.distill.ScoreDistillationLoss`) or image-space
  distillation (:class:`~.distill.ImageDistillationLoss`: render -> partial DDIM ->
  regress with L2 + LPIPS) on an :class:`~.distill.ImageDenoiser`.
- :mod:`.oracle`: the oracle denoiser (the ground-truth render of a procedural world at the
  sampled camera), which checks the distillation path independently of weights.

Importing this package is light (no torch); import the submodules you need.
"""
