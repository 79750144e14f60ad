"""Camera, object and body pose from sparse views or trackers; the `pose` CLI.

One seam per kind of estimator, each a protocol in its sub-package:

- :mod:`pose.camera` — camera pose from images (:class:`~pose.camera.CameraPoseEstimator`);
  :mod:`pose.camera.refine` refines cameras against a scene model by render-and-compare,
  :mod:`pose.camera.initialiser` turns any estimator into a ``recon fit`` initialiser;
- :mod:`pose.object` — object pose from RGB-D (:class:`~pose.object.ObjectPoseEstimator`);
- :mod:`pose.body` — body pose from trackers (:class:`~pose.body.BodyPoseEstimator`),
  EgoPoser in :mod:`pose.body.egoposer`.

Camera-pose metrics are :mod:`geometry.pose_metrics`.
"""
