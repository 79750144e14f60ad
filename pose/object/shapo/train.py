"""Training of ShAPO's priors (``pose shapo train-priors``) through the shared loop.

Runs :func:`geometry.training.train_loop` (one process, or one per rank under
``torchrun``: gloo on the CPU, NCCL on GPUs; every rank generates the same instances, draws
its own batches, and the gradients are averaged). The checkpoint folder holds the decoders
and every training instance's codes (``kind = "shapo_priors"``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from geometry.errors import UserError
from geometry.training import check_checkpoint_out
from pose.object.shapo.priors import (
    KIND,
    PriorConfig,
    PriorModel,
    PriorTrainConfig,
    build_model,
    make_batch_fn,
    make_prior_data,
)

COMMAND = "pose shapo train-priors"

__all__ = ["ShapoSystem", "load_priors", "load_system", "make_net_batch", "make_net_data",
           "run_train_net", "run_train_priors"]


def run_train_priors(out: Path, synthetic: bool, model: PriorConfig, train: PriorTrainConfig,
                     max_minutes: float | None = None, resume: bool = False,
                     overwrite: bool = False, quiet: bool = False,
                     device: str | None = "cpu"):
    """Train the priors on ``device`` (``cpu``, ``cuda``, ``cuda:N``; under ``torchrun``
    each process takes the GPU of its local rank) into the checkpoint folder ``out``;
    returns the :class:`geometry.training.TrainResult`."""
    from geometry.training import ddp_cleanup, ddp_setup

    if not synthetic:
        raise UserError("give --synthetic: the priors train on the generated categories "
                        "(training on NOCS's object models is not supported yet).")
    if train.instances_per_category < 1 or train.sdf_samples < 10 or train.color_samples < 1:
        raise UserError("--instances-per-category, --sdf-samples and --color-samples must be "
                        "at least 1, 10 and 1.")
    check_checkpoint_out(Path(out), resume, overwrite)
    dist = ddp_setup(device)
    try:
        return _train_priors(out, model, train, max_minutes, resume, quiet, dist)
    finally:
        ddp_cleanup()


def _train_priors(out: Path, model: PriorConfig, train: PriorTrainConfig,
                  max_minutes: float | None, resume: bool, quiet: bool, dist):
    """:func:`run_train_priors` after its checks, inside the process group."""
    from geometry.progress import log_stage
    from geometry.training import TrainLoop, train_loop

    log_stage(f"sampling {6 * train.instances_per_category} generated shapes…",
              quiet=quiet or not dist.is_main)
    data = make_prior_data(train, quiet=quiet or not dist.is_main)
    net = build_model(model, data.instance_class, train.seed).to(dist.device)
    decoders = [p for n, p in net.named_parameters() if not n.endswith("_codes.weight")]
    codes = [net.shape_codes.weight, net.app_codes.weight]
    optimizer = torch.optim.Adam([{"params": decoders, "lr": train.lr},
                                  {"params": codes, "lr": train.code_lr}])
    config = {"model": model.to_dict(), "train": asdict(train),
              "num_instances": len(data.instance_class)}
    loop = TrainLoop(out=Path(out), kind=KIND, config=config, steps=train.steps,
                     max_minutes=max_minutes, resume=resume,
                     checkpoint_every_s=train.checkpoint_every_s, log_every=train.log_every,
                     warmup_steps=train.warmup_steps, grad_clip=None,
                     desc="ShAPO priors", quiet=quiet)
    return train_loop(net, optimizer, make_batch_fn(data, train, dist.device),
                      lambda m, batch: m.losses(batch, train.code_reg), loop, dist=dist)


def load_priors(folder: str | Path, device: str | torch.device = "cpu") -> PriorModel:
    """The priors in a checkpoint folder written by ``pose shapo train-priors`` (eval mode,
    on ``device``).

    Raises:
        UserError: not such a checkpoint (one sentence).
    """
    from geometry.training import load_weights, read_checkpoint_config

    record = read_checkpoint_config(folder, KIND, COMMAND)
    try:
        config = PriorConfig(**record["config"]["model"])
        num = int(record["config"]["num_instances"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder}/config.json does not describe ShAPO priors; give the "
                        f"folder written by '{COMMAND}'.") from None
    net = PriorModel(config, torch.zeros(num, dtype=torch.long))
    load_weights(folder, net, KIND, COMMAND)
    return net.to(device).eval()


# ------------------------------------------------------------------ the single-shot network

NET_COMMAND = "pose shapo train"


class ShapoSystem(torch.nn.Module):
    """The single-shot network and the (frozen) priors it predicts codes for: one
    checkpoint holds both, so ``predict`` and ``eval`` need one folder."""

    def __init__(self, net_config, prior_config: PriorConfig, num_instances: int):
        from pose.object.shapo.network import ShapoNet

        super().__init__()
        self.net = ShapoNet(net_config, prior_config.shape_dim, prior_config.appearance_dim)
        self.priors = PriorModel(prior_config, torch.zeros(num_instances, dtype=torch.long))
        for p in self.priors.parameters():
            p.requires_grad_(False)


class NetData:
    """Rendered training scenes of one rank and their targets."""

    def __init__(self, scenes: list, targets: list):
        import numpy as np

        self.rgb = torch.from_numpy(np.stack([s.rgb for s in scenes]))  # [N, H, W, 3]
        self.depth = torch.from_numpy(np.stack([s.depth for s in scenes]))  # [N, H, W]
        self.K = torch.from_numpy(np.stack([s.K for s in scenes])).float()
        self.targets = targets
        self.heatmap = torch.from_numpy(np.stack([t.heatmap for t in targets]))
        self.seg = torch.from_numpy(np.stack([t.seg for t in targets]))
        self.clean = torch.from_numpy(np.stack([t.depth for t in targets]))
        self.owner = torch.from_numpy(np.stack([t.owner for t in targets]))
        self.vertex = torch.from_numpy(np.stack([t.vertex for t in targets]))

    def __len__(self) -> int:
        return len(self.targets)


def make_net_data(train, net_config, pool, rank: int = 0, world_size: int = 1,
                  quiet: bool = True) -> NetData:
    """Render this rank's share of the training scenes (scene ``k`` of seed
    ``seed * 100003 + k`` for ``k % world_size == rank``) from the priors' instances."""
    from geometry.progress import progress_bar
    from pose.object.shapo.data import SceneConfig, render_scene
    from pose.object.shapo.network import scene_targets

    cfg = SceneConfig(width=net_config.image_size, height=net_config.image_size,
                      fov_x_deg=net_config.fov_x_deg)
    mine = [k for k in range(train.scenes) if k % world_size == rank]
    scenes, targets = [], []
    with progress_bar("rendering scenes", quiet=quiet) as bar:
        task = bar.add_task("", total=len(mine))
        for k in mine:
            scene = render_scene(train.seed * 100003 + k, cfg, pool)
            scenes.append(scene)
            targets.append(scene_targets(scene))
            bar.advance(task)
    return NetData(scenes, targets)


def make_net_batch(data: NetData, index, jitter: float = 0.0,
                   generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> dict:
    """A training batch of scenes ``index`` (see
    :func:`pose.object.shapo.network.net_losses`)."""
    from pose.object.shapo.network import make_inputs

    idx = torch.as_tensor(index, dtype=torch.long)
    rgb = data.rgb[idx]
    if jitter > 0:
        g = generator or torch.Generator().manual_seed(0)
        gain = 1 + jitter * (2 * torch.rand(len(idx), 1, 1, 1, generator=g) - 1)
        bias = 0.5 * jitter * (2 * torch.rand(len(idx), 1, 1, 3, generator=g) - 1)
        rgb = (rgb * gain + bias).clamp(0, 1)
    depth, K = data.depth[idx], data.K[idx]
    owner = data.owner[idx].clone()
    rows: dict[str, list] = {"R": [], "t": [], "log_diag": [], "symmetric": [],
                             "code_index": []}
    offset = 0
    for b, k in enumerate(idx.tolist()):
        objs = data.targets[k].objects
        remap = torch.full((int(data.owner[k].max()) + 2,), -1, dtype=torch.long)
        for j, o in enumerate(objs):
            remap[o["index"] + 1] = offset + j
            rows["R"].append(torch.as_tensor(o["R"], dtype=torch.float32))
            rows["t"].append(torch.as_tensor(o["t"], dtype=torch.float32))
            rows["log_diag"].append(o["log_diag"])
            rows["symmetric"].append(o["symmetric"])
            rows["code_index"].append(o["code_index"])
        owner[b] = remap[owner[b] + 1]
        offset += len(objs)
    objects = {
        "R": torch.stack(rows["R"]) if rows["R"] else torch.zeros(0, 3, 3),
        "t": torch.stack(rows["t"]) if rows["t"] else torch.zeros(0, 3),
        "log_diag": torch.tensor(rows["log_diag"], dtype=torch.float32),
        "symmetric": torch.tensor(rows["symmetric"], dtype=torch.bool),
        "code_index": torch.tensor(rows["code_index"], dtype=torch.long)}
    batch = {"inputs": make_inputs(rgb, depth, K), "raw_depth": depth, "K": K,
             "heatmap": data.heatmap[idx], "seg": data.seg[idx], "depth": data.clean[idx],
             "owner": owner, "vertex": data.vertex[idx], "objects": objects}
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict)
                else v.to(device)) for k, v in batch.items()}


def _prior_record(priors_dir: Path) -> tuple[dict, PriorModel]:
    from geometry.training import read_checkpoint_config

    record = read_checkpoint_config(priors_dir, KIND, COMMAND)
    priors = load_priors(priors_dir)
    if "train" not in record["config"]:
        raise UserError(f"{priors_dir}/config.json lacks the priors' training options; give "
                        f"the folder written by '{COMMAND}'.")
    return record, priors


def run_train_net(out: Path, synthetic: bool, priors_dir: Path | None, net_config,
                  train, max_minutes: float | None = None, resume: bool = False,
                  overwrite: bool = False, quiet: bool = False, nocs: Path | None = None,
                  device: str | None = "cpu"):
    """Train the single-shot network on generated scenes made of the priors' training
    instances (their codes are the targets) on ``device`` (``cpu``, ``cuda``, ``cuda:N``;
    under ``torchrun`` each process takes the GPU of its local rank) into the checkpoint
    folder ``out``; returns the :class:`geometry.training.TrainResult`."""
    from geometry.training import ddp_cleanup, ddp_setup

    if nocs is not None:
        raise UserError("training on NOCS folders is not supported yet (their objects have "
                        "no codes in our priors); give --synthetic.")
    if not synthetic:
        raise UserError("give --synthetic: the network trains on generated scenes.")
    if priors_dir is None:
        raise UserError("give --priors: the folder written by 'pose shapo train-priors' "
                        "(the network predicts codes of those priors).")
    if net_config.image_size % 16 or net_config.image_size < 32:
        raise UserError(f"--model.image-size {net_config.image_size} must be a multiple of "
                        "16 and at least 32.")
    if train.heatmap_loss not in ("focal", "mse"):
        raise UserError(f"--heatmap-loss {train.heatmap_loss!r} must be focal or mse.")
    if train.scenes < 1 or train.batch_size < 1:
        raise UserError("--scenes and --batch-size must be at least 1.")
    check_checkpoint_out(Path(out), resume, overwrite)
    dist = ddp_setup(device)
    try:
        record, priors = _prior_record(Path(priors_dir))
        return _train_net(out, priors_dir, record, priors, net_config, train, max_minutes,
                          resume, quiet, dist)
    finally:
        ddp_cleanup()


def _train_net(out: Path, priors_dir: Path, record: dict, priors: PriorModel, net_config,
               train, max_minutes: float | None, resume: bool, quiet: bool, dist):
    """:func:`run_train_net` after its checks, inside the process group."""
    from geometry.progress import log_stage
    from geometry.training import TrainLoop, train_loop
    from pose.object.shapo.network import KIND as NET_KIND
    from pose.object.shapo.network import net_losses
    from pose.object.shapo.priors import prior_shapes

    prior_train = PriorTrainConfig(**record["config"]["train"])
    main = dist.is_main
    log_stage(f"rendering {train.scenes} training scenes…", quiet=quiet or not main)
    pool = prior_shapes(prior_train)
    data = make_net_data(train, net_config, pool, dist.rank, dist.world_size,
                         quiet=quiet or not main)
    if len(data) == 0:
        raise UserError(f"--scenes {train.scenes} leaves no scene for rank {dist.rank}; "
                        "give more scenes.")
    torch.manual_seed(train.seed)
    system = ShapoSystem(net_config, priors.config, len(priors.instance_class))
    system.priors.load_state_dict(priors.state_dict())
    system = system.to(dist.device)
    params = [p for p in system.net.parameters()]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    config = {"net": net_config.to_dict(), "train": asdict(train),
              "priors": {"model": priors.config.to_dict(), "train": asdict(prior_train),
                         "num_instances": len(priors.instance_class),
                         "path": str(priors_dir)}}
    loop = TrainLoop(out=Path(out), kind=NET_KIND, config=config, steps=train.steps,
                     max_minutes=max_minutes, resume=resume,
                     checkpoint_every_s=train.checkpoint_every_s, log_every=train.log_every,
                     warmup_steps=train.warmup_steps, grad_clip=5.0,
                     desc="ShAPO network", quiet=quiet)

    def batch_fn(step: int, rank: int, world_size: int) -> dict:
        g = torch.Generator().manual_seed(train.seed * 1_000_003 + step * 1009 + rank)
        idx = torch.randint(0, len(data), (train.batch_size,), generator=g)
        return make_net_batch(data, idx, train.jitter, g, dist.device)

    def loss_fn(m: ShapoSystem, batch: dict) -> dict:
        return net_losses(m.net, batch, m.priors.shape_codes.weight, m.priors.app_codes.weight,
                          train)

    return train_loop(system, optimizer, batch_fn, loss_fn, loop, dist=dist)


def load_system(folder: str | Path,
                device: str | torch.device = "cpu") -> tuple[ShapoSystem, dict]:
    """The network and priors in a checkpoint folder written by ``pose shapo train`` (eval
    mode, on ``device``) and its ``config.json``.

    Raises:
        UserError: not such a checkpoint (one sentence).
    """
    from geometry.training import load_weights, read_checkpoint_config
    from pose.object.shapo.network import KIND as NET_KIND
    from pose.object.shapo.network import NetConfig

    folder = Path(folder)
    if not folder.exists():
        raise UserError(f"checkpoint {folder} does not exist; give the folder written by "
                        f"'{NET_COMMAND}'.")
    record = read_checkpoint_config(folder, NET_KIND, NET_COMMAND)
    try:
        cfg = record["config"]
        system = ShapoSystem(NetConfig(**cfg["net"]), PriorConfig(**cfg["priors"]["model"]),
                             int(cfg["priors"]["num_instances"]))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{folder}/config.json does not describe a ShAPO network; give the "
                        f"folder written by '{NET_COMMAND}'.") from None
    load_weights(folder, system, NET_KIND, NET_COMMAND)
    return system.to(device).eval(), record
