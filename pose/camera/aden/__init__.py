"""ADen (Tang et al., ECCV 2024): learned sparse-view camera pose estimation with an
adaptive density: a generator proposes pose hypotheses from learnable queries and noise, a
discriminator scores them against the image features, the best-scored one wins.

Modules: :mod:`.config` (dataclasses), :mod:`.model` (:class:`~.model.AdenNet`, with the
regression (M = 1) and rotation-grid baselines), :mod:`.losses`, :mod:`.data` (sequences,
relative poses, batches), :mod:`.train`, :mod:`.predict`
(:class:`~.predict.AdenEstimator`, a :class:`pose.camera.CameraPoseEstimator`),
:mod:`.evaluate`, :mod:`.hook` (``recon fit`` initialiser) and :mod:`.cli`
(``pose aden train|predict|eval``).
"""
