"""Gaussian-splat reconstruction from sparse views: scenes, splatting, methods, the `recon` CLI."""
