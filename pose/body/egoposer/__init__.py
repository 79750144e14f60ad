"""EgoPoser (Jiang et al., ECCV 2024): full-body pose from sparse, intermittent head and
hand tracking.

Modules (imported where used, so ``import pose.body.egoposer`` stays cheap):

- :mod:`~pose.body.egoposer.config` — the option dataclasses (model, training, FoV, synthesiser).
- :mod:`~pose.body.egoposer.skeleton` — the SMPL-H body tree (22 joints), the default skeleton
  with average adult proportions, forward kinematics, exact joints from SMPL-H model files.
- :mod:`~pose.body.egoposer.amass` — the AMASS ``.npz`` loader (validation, resampling).
- :mod:`~pose.body.egoposer.synth` — a licence-clean motion synthesiser (walk, turn, reach,
  crouch, sit, idle) over the same tree.
- :mod:`~pose.body.egoposer.tracking` — headset trajectories from FK, the field-of-view
  simulation, tracking files.
- :mod:`~pose.body.egoposer.features` — the global motion decomposition and the network's
  inputs and outputs.
- :mod:`~pose.body.egoposer.model` — the SlowFast network and the per-frame MLP baseline.
- :mod:`~pose.body.egoposer.data`, :mod:`~pose.body.egoposer.train` — windows, losses, training,
  checkpoints; :mod:`~pose.body.egoposer.infer` — offline and online prediction, the
  'stand still under the head' baseline; :mod:`~pose.body.egoposer.metrics`;
  :mod:`~pose.body.egoposer.commands` — what ``pose egoposer ...`` runs.

World frame: AMASS's, z up, metres; the floor is ``z = 0``. Joint frames are SMPL's
(model frame: x to the subject's left, y up, z forward)::

          y (up)
          |
          |____ x (subject's left)
         /
        z (forward, where the subject looks)

Where this implementation deviates from the paper, and why:

- Body shape is an *input* (the body scale, i.e. the user's height, which a headset
  knows from calibration) and positions are divided by it, instead of SMPL betas
  regressed by an extra head: the default skeleton (used when the licensed SMPL-H files
  are absent) has no betas.
- Global motion decomposition removes the head's horizontal position *and* heading at the
  current frame (full invariance to where the user stands and faces); height is kept.
- Unseen hands are zeroed as in the paper, and two visibility flags are added so that a
  zero is never mistaken for a hand at the head's feet.
- The network predicts the current and the previous frame (from the last two tokens) so
  that the velocity loss needs no second window; only the current frame is used online.
- The default network is small (d_model 64, 2 layers, about 0.1 M parameters) so that it
  trains in 20 minutes on two shared CPU cores; all sizes are options.
- Exact SMPL-H joints need only the model's joint regressor and shape blend shapes
  (joints do not depend on pose blend shapes), so the ``smplx`` package is not needed:
  ``--smplh-dir`` reads the AMASS-distributed ``model.npz`` files directly.
- MPJRE is the geodesic angle between rotations (some reference code averages absolute
  Euler-angle differences instead).
"""
