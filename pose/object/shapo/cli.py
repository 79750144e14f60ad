"""``pose shapo train-priors|mesh|train|predict|eval``: the command dataclasses (tyro). Heavy
modules are imported inside ``run`` so that ``pose --help`` stays fast."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Union

import tyro

from geometry.threads import set_threads
from pose.object.shapo.network import NetConfig, NetTrainConfig
from pose.object.shapo.priors import PriorConfig, PriorTrainConfig
from pose.object.shapo.refine import RefineConfig


@dataclass
class ShapoTrainPriors:
    """Train ShAPO's shape (DeepSDF) and appearance priors as auto-decoders on generated
    instances of the six NOCS categories; writes a checkpoint folder. Under torchrun every
    process trains on its own batches (DDP)."""

    out: Path
    """Checkpoint folder (model.safetensors with the decoders and the instances' codes,
    config.json, trainer_state.pt, history.json, loss.png)."""
    synthetic: bool = False
    """Train on the generated categories (bottle, bowl, camera, can, laptop, mug)."""
    max_minutes: float | None = None
    """Stop after this many minutes (with a checkpoint)."""
    resume: bool = False
    """Continue the checkpoint in --out (same options)."""
    overwrite: bool = False
    """Replace a checkpoint already in --out."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (under torchrun: one process per GPU)."""
    quiet: bool = False
    """No progress bar or stage lines."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    model: PriorConfig = field(default_factory=PriorConfig)
    train: Annotated[PriorTrainConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=PriorTrainConfig)

    def run(self) -> None:
        from pose.object.shapo.train import run_train_priors

        set_threads(self.threads)
        result = run_train_priors(self.out, self.synthetic, self.model, self.train,
                                  max_minutes=self.max_minutes, resume=self.resume,
                                  overwrite=self.overwrite, quiet=self.quiet,
                                  device=self.device)
        last = result.history[-1] if result.history else {}
        if os.environ.get("RANK", "0") != "0":
            return
        print(f"priors: {result.step} steps ({result.stopped_by}), sdf L1 "
              f"{last.get('sdf', float('nan')):.4f}, colour L1 "
              f"{last.get('color', float('nan')):.4f} -> {self.out}")


@dataclass
class ShapoMesh:
    """Meshes of trained priors (marching cubes of the SDF, vertex colours from the
    appearance decoder): each category's mean codes and some training instances."""

    priors: Path
    """Checkpoint folder written by 'pose shapo train-priors'."""
    out: Path
    """Output folder: <category>_mean.ply, instance_<k>_<category>.ply, meshes.json."""
    resolution: int = 64
    """Grid cells per side of the marching cubes."""
    instances: int = 0
    """Also mesh the first this many training instances."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder this command did not write."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (the decoders)."""
    quiet: bool = False
    """No progress bar."""
    threads: int | None = None
    """CPU threads (default: all cores)."""

    def run(self) -> None:
        from pose.object.shapo.export import run_mesh

        set_threads(self.threads)
        record = run_mesh(self.priors, self.out, self.resolution, self.instances,
                          self.overwrite, self.quiet, device=self.device)
        made = sum(1 for m in record["meshes"].values() if m["faces"])
        print(f"{made} of {len(record['meshes'])} meshes -> {self.out}")


@dataclass
class ShapoTrain:
    """Train ShAPO's single-shot network (heatmap, segmentation, depth, shape and appearance
    codes, pose, size) on generated tabletop scenes made of the priors' training instances;
    writes a checkpoint folder holding the network and the priors. Under torchrun every
    process renders its share of the scenes and trains on its own batches (DDP)."""

    out: Path
    """Checkpoint folder (model.safetensors, config.json, trainer_state.pt, history.json,
    loss.png)."""
    priors: Path | None = None
    """Checkpoint folder written by 'pose shapo train-priors'."""
    synthetic: bool = False
    """Train on generated scenes."""
    nocs: Path | None = None
    """Train on a NOCS folder (not supported yet: NOCS objects have no codes in our
    priors)."""
    max_minutes: float | None = None
    """Stop after this many minutes (with a checkpoint)."""
    resume: bool = False
    """Continue the checkpoint in --out (same options)."""
    overwrite: bool = False
    """Replace a checkpoint already in --out."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (under torchrun: one process per GPU)."""
    quiet: bool = False
    """No progress bar or stage lines."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    model: NetConfig = field(default_factory=NetConfig)
    train: Annotated[NetTrainConfig, tyro.conf.OmitArgPrefixes] = field(
        default_factory=NetTrainConfig)

    def run(self) -> None:
        from pose.object.shapo.train import run_train_net

        set_threads(self.threads)
        result = run_train_net(self.out, self.synthetic, self.priors, self.model, self.train,
                               max_minutes=self.max_minutes, resume=self.resume,
                               overwrite=self.overwrite, quiet=self.quiet, nocs=self.nocs,
                               device=self.device)
        last = result.history[-1] if result.history else {}
        if os.environ.get("RANK", "0") != "0":
            return
        print(f"network: {result.step} steps ({result.stopped_by}), loss "
              f"{last.get('loss', float('nan')):.4f} -> {self.out}")


@dataclass
class ShapoPredict:
    """Objects' class, 6D pose, size, shape and appearance from one RGB-D frame: the
    single-shot network, then (default) the test-time refinement of each object against
    its masked depth and colours. Writes OUT/detections.json, a mesh per object (camera
    frame) and OUT/overlay.png; prints each object's depth-to-surface distance inside its
    mask before/after refinement and the seconds it took."""

    checkpoint: Path
    """Checkpoint folder written by 'pose shapo train'."""
    out: Path
    """Output folder (replaced atomically)."""
    rgb: Path | None = None
    """Colour image (PNG/JPEG)."""
    depth: Path | None = None
    """Depth image registered to the colour: 16-bit PNG (see --depth-scale)."""
    intrinsics: str | None = None
    """fx,fy,cx,cy in pixels (OpenCV convention: pixel centres at integers), or 'real' /
    'camera' (NOCS's published intrinsics; the default with --real275)."""
    real275: Path | None = None
    """A REAL275/CAMERA frame prefix (scene_1/0000: reads 0000_color.png and
    0000_depth.png) or a folder of frames (one output subfolder per frame)."""
    refine: bool = True
    """Refine pose, scale, shape and appearance codes per object (--no-refine: single
    shot only)."""
    depth_scale: float = 0.001
    """Metres per unit of a 16-bit depth image (REAL275: millimetres)."""
    threshold: float = 0.3
    """Heatmap score an object centre needs."""
    mesh_resolution: int = 48
    """Marching-cubes cells per side of the meshes."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder this command did not write."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (the network and the refinement)."""
    quiet: bool = False
    """No stage lines."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    refinement: RefineConfig = field(default_factory=RefineConfig)

    def run(self) -> None:
        from pose.object.shapo.predict import run_predict

        set_threads(self.threads)
        records = run_predict(self.checkpoint, self.out, self.rgb, self.depth,
                              self.intrinsics, self.real275, self.refine, self.refinement,
                              self.depth_scale, self.threshold, self.mesh_resolution,
                              self.overwrite, self.quiet, device=self.device)
        count = sum(len(r["objects"]) for r in records)
        print(f"{count} object(s) in {len(records)} frame(s) -> {self.out}")


@dataclass
class ShapoEval:
    """NOCS metrics (3D IoU 25/50, 5deg2cm, 5deg5cm, 10deg5cm, 10deg10cm mAP) of the
    single-shot and the refined estimates, on held-out generated scenes (new random
    instances) or NOCS frames; writes OUT/metrics.json when --out is given."""

    checkpoint: Path
    """Checkpoint folder written by 'pose shapo train'."""
    synthetic: bool = False
    """Evaluate on generated scenes of seeds --seed, --seed + 1, ..."""
    nocs: Path | None = None
    """Evaluate on the NOCS frames under this folder (poses from the NOCS maps)."""
    seed: int = 1000
    """First seed of the generated scenes (training scenes use seeds train_seed * 100003 +
    k, so small seeds are unseen ones)."""
    scenes: int = 10
    """Generated scenes to evaluate."""
    out: Path | None = None
    """Folder for metrics.json (replaced as a whole)."""
    refine: bool = True
    """Also evaluate the refined estimates (--no-refine: single shot only)."""
    threshold: float = 0.3
    """Heatmap score an object centre needs."""
    intrinsics: str = "real"
    """Intrinsics of --nocs frames: real, camera or fx,fy,cx,cy."""
    overwrite: bool = False
    """Replace --out even when it is a non-empty folder this command did not write."""
    device: str = "cpu"
    """cpu, cuda or cuda:N (the network and the refinement)."""
    quiet: bool = False
    """No progress bar."""
    threads: int | None = None
    """CPU threads (default: all cores)."""
    refinement: RefineConfig = field(default_factory=RefineConfig)

    def run(self) -> None:
        from pose.object.shapo.predict import run_eval

        set_threads(self.threads)
        run_eval(self.checkpoint, self.synthetic, self.nocs, self.seed, self.scenes,
                 self.out, self.refine, self.refinement, self.threshold, self.intrinsics,
                 self.quiet, self.overwrite, device=self.device)


ShapoSubcommand = Union[  # noqa: UP007 (tyro reads the Union of annotated subcommands)
    Annotated[ShapoTrainPriors, tyro.conf.subcommand("train-priors")],
    Annotated[ShapoMesh, tyro.conf.subcommand("mesh")],
    Annotated[ShapoTrain, tyro.conf.subcommand("train")],
    Annotated[ShapoPredict, tyro.conf.subcommand("predict")],
    Annotated[ShapoEval, tyro.conf.subcommand("eval")],
]


@dataclass
class ShapoCommand:
    """ShAPO: category-level object pose, size, shape and appearance from one RGB-D image
    (train the priors, then the single-shot network; predict, evaluate, mesh the priors)."""

    command: tyro.conf.OmitSubcommandPrefixes[ShapoSubcommand]

    def run(self) -> None:
        self.command.run()
