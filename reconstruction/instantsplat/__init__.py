"""InstantSplat (CVPR 2025) on CPU: coarse geometric initialisation, then F-3DGO, the joint
optimisation of Gaussians and camera poses. ``recon fit`` runs :func:`pipeline.fit`."""
