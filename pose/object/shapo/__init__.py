"""ShAPO (Irshad et al., ECCV 2022): objects' class, 6D pose, size, shape and appearance
from one RGB-D image, with learned implicit shape and appearance priors refined at test
time.

Modules (import what you need; this package imports nothing heavy):

- :mod:`~pose.object.shapo.metrics`: the NOCS benchmark metrics (3D IoU 25/50, 5°2cm,
  5°5cm, 10°5cm, 10°10cm mAP with the symmetric-category handling);
- :mod:`~pose.object.shapo.shapes` and :mod:`~pose.object.shapo.data`: the six parametric
  categories as exact SDFs and generated tabletop RGB-D scenes with NOCS ground truth;
- :mod:`~pose.object.shapo.nocs`: the NOCS REAL275/CAMERA reader;
- :mod:`~pose.object.shapo.priors` and :mod:`~pose.object.shapo.train`: the DeepSDF shape
  and appearance decoders, auto-decoded (``pose shapo train-priors``);
- :mod:`~pose.object.shapo.surface`: octree surface points and marching-cubes meshes
  (``pose shapo mesh``);
- :mod:`~pose.object.shapo.refine`: the test-time optimisation of pose, scale and codes;
- :mod:`~pose.object.shapo.network` and :mod:`~pose.object.shapo.train`: the single-shot
  RGB-D network (centre heatmaps, segmentation, depth, codes, pose, size;
  ``pose shapo train``);
- :mod:`~pose.object.shapo.predict`: ``pose shapo predict`` (one frame, or REAL275
  frames) and ``pose shapo eval`` (NOCS metrics, single shot vs refined).
"""
