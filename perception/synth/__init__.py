"""A synthetic dataset in the exact nuScenes on-disk format (``perception synth``)."""

from perception.synth.writer import SynthSpec, SynthSummary, scene_names, write_dataset

__all__ = ["SynthSpec", "SynthSummary", "scene_names", "write_dataset"]
