"""The neural-field core: rays of our cameras, scene contraction, stratified and importance
sampling, volume rendering with the distortion loss, occupancy grids, triplanes, and
:class:`~reconstruction.field.scene_model.FieldSceneModel` (fields through the scene-model
protocol, so ``recon eval`` and ``recon view`` work for field methods).

Modules: :mod:`.rays`, :mod:`.contraction`, :mod:`.sampling`, :mod:`.render`,
:mod:`.occupancy`, :mod:`.triplane`, :mod:`.triplane_field`, :mod:`.scene_model`.
"""
