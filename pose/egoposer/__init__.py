"""EgoPoser (Jiang et al., ECCV 2024): full-body pose from sparse, intermittent head and
hand tracking.

Modules (imported where used, so ``import pose.egoposer`` stays cheap):

- :mod:`pose.egoposer.skeleton` — the SMPL-H body kinematic tree (22 joints), the default
  skeleton with average adult proportions, forward kinematics, SMPL-H model-file joints.
- :mod:`pose.egoposer.amass` — the AMASS ``.npz`` loader (validation, resampling).
- :mod:`pose.egoposer.synth` — a licence-clean motion synthesiser (walk, turn, reach,
  crouch, sit) over the same tree.
- :mod:`pose.egoposer.tracking` — headset trajectories from FK, the field-of-view
  simulation and tracking files.
- :mod:`pose.egoposer.features` — the global motion decomposition and the network inputs.
- :mod:`pose.egoposer.model` — the SlowFast EgoPoser network and the per-frame MLP baseline.
- :mod:`pose.egoposer.train`, :mod:`pose.egoposer.infer`, :mod:`pose.egoposer.metrics` —
  losses and training, prediction and baselines, the standard metrics.

World frame: AMASS's, z up, metres; the floor is ``z = 0``. Joint frames are SMPL's
(model frame: x to the subject's left, y up, z forward)::

          y (up)
          |
          |____ x (subject's left)
         /
        z (forward, where the subject looks)
"""
