"""SparseFusion (ICCV 2023): LiDAR-camera 3D detection on sparse instance candidates.

Import-light: the model lives in :mod:`perception.sparsefusion.model`, the presets in
:mod:`perception.sparsefusion.config`, the CLI entries in :mod:`perception.sparsefusion.cli`.
"""
