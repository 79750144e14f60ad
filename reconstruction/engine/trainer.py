"""The Gaussian trainer: joint optimisation of Gaussians and camera poses (F-3DGO, from
InstantSplat, CVPR 2025), with pluggable loss terms and densification strategy.

Every view ``v`` has a learnable twist ``xi_v = (rho_v, omega_v)`` that corrects its
initial pose on the left, ``T_cam_world_v = se3_exp(xi_v) @ T_cam_world_init_v``; view 0
is fixed (it sets the gauge). Optionally (``optimise_focal``) the focal lengths get a
learnable log-scale per camera (views with equal initial intrinsics share one). The loss
is 3DGS's ``0.8 L1 + 0.2 (1 - SSIM)`` plus the paper's regulariser that keeps poses near
their initialisation, ``w * mean_v(|rho_v|^2 / s^2 + |omega_v|^2)`` with ``s`` the scene
scale.

The schedule is CPU-minded: ``iterations`` steps of one view each (a seeded permutation
per epoch; ``recon fit`` scales the count with the photos and may shorten it to a time
budget, :mod:`.schedule`), the first ``coarse_fraction`` of iterations at half
resolution, the SH degree raised in equal steps, and a few rounds of densification by the strategy
(:class:`~reconstruction.engine.strategy.DefaultStrategy`: 3DGS's clone/split/prune,
capped at ``max_gaussians`` since few views over-fit easily).

Methods on this engine pass their own ``loss_terms`` (:mod:`.losses`) and ``strategy``
(:mod:`.strategy`); both may carry checkpointed state and metrics
(:class:`~reconstruction.engine.components.TrainerComponent`).

Nothing random is drawn from global state: the view order and split samples come from
generators seeded by ``(seed, epoch)`` and ``(seed, iteration)``, so a run is
deterministic on CPU and a resumed run continues exactly as an uninterrupted one would.
A loss or gradient that is not finite rolls the state back to the last good snapshot and
halves the learning rates; after ``max_rollbacks`` the run stops with a UserError.
"""

from __future__ import annotations

import collections
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from geometry.errors import UserError
from geometry.se3 import se3_exp
from reconstruction.engine.components import GAUSSIAN_FIELDS
from reconstruction.engine.config import TrainConfig
from reconstruction.engine.losses import LossTerm, default_loss_terms, psnr
from reconstruction.engine.strategy import DefaultStrategy, Strategy
from reconstruction.gaussians import GaussianScene

POSE_FIELDS = ("pose_rho", "pose_omega", "log_focal")


class FusedAdam:
    """Adam with one parameter tensor per group, numerically ``torch.optim.Adam(fused=True)``
    (betas 0.9/0.999, no weight decay): the same native kernel, ``torch._fused_adam_``,
    with the same state (``step`` a float32 scalar tensor, ``exp_avg``, ``exp_avg_sq``).

    Why not ``torch.optim.Adam`` itself: its first call imports ``torch._dynamo`` (about 2 s
    of every ``recon fit``) and its Python bookkeeping costs more per step than the kernel
    on the small tensors of the pose groups. The interface is the subset the trainer uses:
    ``param_groups`` (dicts with ``params``, ``name``, ``lr``, ``eps``), ``state`` (by
    parameter), ``zero_grad``, ``step``, ``state_dict`` and ``load_state_dict``.
    """

    betas = (0.9, 0.999)

    def __init__(self, groups: list[dict]) -> None:
        self.param_groups = [dict(group) for group in groups]
        for group in self.param_groups:
            group["params"] = list(group["params"])
        self.state: collections.defaultdict = collections.defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step of every parameter that has a gradient (others keep their state)."""
        beta1, beta2 = self.betas
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                states.append(state)
            steps = [state["step"] for state in states]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(
                params, [p.grad for p in params], [state["exp_avg"] for state in states],
                [state["exp_avg_sq"] for state in states], [], steps, lr=float(group["lr"]),
                beta1=beta1, beta2=beta2, weight_decay=0.0, eps=float(group["eps"]),
                amsgrad=False, maximize=False)

    def state_dict(self) -> dict:
        """The state by parameter index and the groups' settings (as torch's optimisers)."""
        index = {id(p): i for i, p in
                 enumerate(p for group in self.param_groups for p in group["params"])}
        return {
            "state": {index[id(p)]: dict(state) for p, state in self.state.items()
                      if id(p) in index},
            "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                              "params": [index[id(p)] for p in group["params"]]}
                             for group in self.param_groups],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a :meth:`state_dict` of an optimiser over parameters of the same shapes."""
        params = [p for group in self.param_groups for p in group["params"]]
        self.state = collections.defaultdict(dict)
        for i, state in state_dict["state"].items():
            p = params[i]
            self.state[p] = {k: v if k == "step" else v.to(p.device, p.dtype)
                             for k, v in state.items()}
        for group, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})


@dataclass
class TrainData:
    """The training views: images and initial cameras, in one normalised world frame."""

    images: list[Tensor]  # V x [H_v, W_v, 3] in [0, 1]
    Ks: Tensor  # [V, 3, 3] pixels (corner-at-0 convention)
    T_cam_world_init: Tensor  # [V, 4, 4]
    scene_scale: float  # typical camera distance to the scene centre
    background: tuple[float, float, float] | None = None
    """The colour behind the Gaussians where ``TrainConfig.background`` is None (recon fit:
    :func:`training_background`); None: black."""

    @property
    def num_views(self) -> int:
        return len(self.images)


def training_background(background: tuple[float, float, float] | None,
                        images: list[Tensor], transparent: bool = False
                        ) -> tuple[float, float, float]:
    """The colour behind the Gaussians: ``background`` where given, else black for photos
    with transparency (``transparent``: they were composited on black), else the mean
    colour of the photos ``V x [H, W, 3]`` (every pixel counted once), rounded to 1/1000."""
    if background is not None:
        return (float(background[0]), float(background[1]), float(background[2]))
    if transparent or not images:
        return (0.0, 0.0, 0.0)
    total = sum(im.double().reshape(-1, 3).sum(0) for im in images)
    count = sum(im.shape[0] * im.shape[1] for im in images)
    mean = (total / count).clamp(0, 1)
    return tuple(round(float(c), 3) for c in mean)  # type: ignore[return-value]


def _downsample(image: Tensor, scale: float) -> tuple[Tensor, float, float]:
    """Area-resampled ``[h, w, 3]`` image and the exact x/y scale factors used."""
    h, w = image.shape[:2]
    h2, w2 = max(1, round(h * scale)), max(1, round(w * scale))
    small = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(h2, w2),
                                            mode="area")[0].permute(1, 2, 0).contiguous()
    return small, w2 / w, h2 / h


class GaussianTrainer:
    """Holds the optimisation state; :meth:`step` runs one iteration.

    Args:
        data: the training views.
        scene: the initial Gaussians.
        config: schedule, learning rates, densification options.
        seed: seed of every random choice.
        device: where the optimisation runs.
        loss_terms: summands of the loss, added in order (default: F-3DGO's,
            :func:`~reconstruction.engine.losses.default_loss_terms`).
        strategy: densification (default: :class:`DefaultStrategy`).
    """

    def __init__(self, data: TrainData, scene: GaussianScene, config: TrainConfig,
                 seed: int = 0, device: str | torch.device = "cpu",
                 loss_terms: list[LossTerm] | None = None,
                 strategy: Strategy | None = None) -> None:
        self.data = data
        self.config = config
        self.seed = seed
        self.device = torch.device(device)
        self.iteration = 0
        self.last_step_coarse = False  # whether the last step rendered at the coarse scale
        self.lr_scale = 1.0
        self.rollbacks = 0
        v = data.num_views
        self.T_init = data.T_cam_world_init.to(self.device, torch.float32)
        self.Ks = data.Ks.to(self.device, torch.float32)
        colour = config.background if config.background is not None \
            else data.background if data.background is not None else (0.0, 0.0, 0.0)
        self.background = torch.tensor(colour, dtype=torch.float32, device=self.device)
        self.targets = [im.to(self.device, torch.float32) for im in data.images]
        self.coarse_targets = [_downsample(im, config.coarse_scale) for im in self.targets]
        self.params: dict[str, torch.nn.Parameter] = {}
        tensors = scene.to(self.device, torch.float32).tensors()
        for name in GAUSSIAN_FIELDS:
            self.params[name] = torch.nn.Parameter(tensors[name].contiguous().clone())
        # Views with the same initial intrinsics share one focal correction.
        _, self.focal_group = torch.unique(self.Ks.reshape(v, 9), dim=0, return_inverse=True)
        num_groups = int(self.focal_group.max()) + 1
        for name in POSE_FIELDS:
            shape = (num_groups,) if name == "log_focal" else (v, 3)
            self.params[name] = torch.nn.Parameter(torch.zeros(shape, device=self.device))
        self.pose_mask = torch.ones(v, 1, device=self.device)
        self.pose_mask[0] = 0.0  # view 0 fixes the gauge
        self.optimizer = FusedAdam(  # torch.optim.Adam(fused=True), without its overheads
            [{"params": [self.params[name]], "name": name, "lr": 0.0, "eps": 1e-15}
             for name in (*GAUSSIAN_FIELDS, *POSE_FIELDS)])
        self.loss_terms = default_loss_terms(config) if loss_terms is None else loss_terms
        self.strategy = DefaultStrategy(config) if strategy is None else strategy
        self.strategy.reset(self.num_gaussians, self.device)
        for component in self.components:
            component.bind(self)
        self._set_learning_rates()
        self._last_good = self._snapshot()

    @property
    def components(self) -> list:
        """The loss terms and the strategy (their state and metrics are the trainer's)."""
        return [*self.loss_terms, self.strategy]

    @property
    def render_depth(self) -> bool:
        """Render expected depth every step (``meta["depth"]``) for a term that reads it."""
        return any(term.needs_depth for term in self.loss_terms)

    # ------------------------------------------------------------------ parameters

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def scene(self) -> GaussianScene:
        """The current Gaussians (detached, CPU)."""
        return GaussianScene(**{n: self.params[n].detach().cpu().clone()
                                for n in GAUSSIAN_FIELDS})

    def pose_twists(self) -> Tensor:
        """``[V, 6]`` current pose corrections ``(rho, omega)`` (zero for view 0)."""
        return torch.cat([self.params["pose_rho"], self.params["pose_omega"]], 1) * self.pose_mask

    def intrinsics(self) -> Tensor:
        """``[V, 3, 3]`` current ``K`` of every view (focal lengths refined)."""
        scale = torch.exp(self.params["log_focal"])[self.focal_group]
        K = self.Ks.clone()
        K[:, 0, 0] = self.Ks[:, 0, 0] * scale
        K[:, 1, 1] = self.Ks[:, 1, 1] * scale
        return K

    def viewmats(self) -> Tensor:
        """``[V, 4, 4]`` current ``T_cam_world`` of every view."""
        return se3_exp(self.pose_twists()) @ self.T_init

    def set_iterations(self, iterations: int) -> None:
        """Change the length of the schedule (``--time-budget`` shortens it): the learning
        rate decay, SH degree steps, densification window and coarse phase all derive from
        ``config.iterations`` and follow. Never below the steps already done."""
        if iterations < max(1, self.iteration):
            raise ValueError(f"a schedule of {iterations} steps is shorter than the "
                             f"{self.iteration} steps done")
        self.config.iterations = int(iterations)
        self._set_learning_rates()

    def sh_degree_at(self, iteration: int) -> int:
        degree = self.config.sh_degree
        if degree == 0:
            return 0
        interval = max(1, self.config.iterations // (degree + 1))
        return min(degree, iteration // interval)

    def _set_learning_rates(self) -> None:
        c, s = self.config, self.data.scene_scale
        progress = min(1.0, self.iteration / max(1, c.iterations))
        # Log-linear decay from lr_means to lr_means_final (3DGS's schedule).
        lr_means = (c.lr_means * s * (c.lr_means_final / c.lr_means) ** progress
                    if c.lr_means > 0 and c.lr_means_final > 0 else c.lr_means * s)
        rates = {
            "means": lr_means, "quats": c.lr_quats, "log_scales": c.lr_scales,
            "logit_opacities": c.lr_opacities, "sh0": c.lr_sh0, "shN": c.lr_shN,
            "pose_rho": c.lr_pose_translation * s if c.optimise_poses else 0.0,
            "pose_omega": c.lr_pose_rotation if c.optimise_poses else 0.0,
            "log_focal": c.lr_focal if c.optimise_focal else 0.0,
        }
        for group in self.optimizer.param_groups:
            group["lr"] = rates[group["name"]] * self.lr_scale

    # ------------------------------------------------------------------ rendering

    def render(self, view: int, scale: float = 1.0, sh_degree: int | None = None,
               viewmat: Tensor | None = None,
               depth: bool = False) -> tuple[Tensor, Tensor, dict, Tensor]:
        """Render ``view`` at ``scale``; ``(rgb [h, w, 3], alpha [h, w, 1], meta, target)``.

        With ``depth``, ``meta["depth"]`` is the expected camera-frame z ``[h, w, 1]``
        (alpha-weighted mean, differentiable) and ``meta["scale"]`` the resolution scale.
        """
        from reconstruction.splatting import rasterization

        if scale == 1.0:
            target, sx, sy = self.targets[view], 1.0, 1.0
        else:
            target, sx, sy = self.coarse_targets[view]
        h, w = target.shape[:2]
        K = self.intrinsics()[view]
        K = torch.stack([K[0] * sx, K[1] * sy, K[2]])
        if viewmat is None:
            viewmat = se3_exp(self.pose_twists()[view]) @ self.T_init[view]
        p = self.params
        degree = self.sh_degree_at(self.iteration) if sh_degree is None else sh_degree
        colors, alphas, meta = rasterization(
            p["means"], p["quats"], torch.exp(p["log_scales"]), torch.sigmoid(p["logit_opacities"]),
            torch.cat([p["sh0"], p["shN"]], 1), viewmat[None], K[None], w, h,
            sh_degree=degree, backgrounds=self.background[None],
            render_mode="RGB+ED" if depth else "RGB")
        meta["scale"] = scale
        if depth:
            meta["depth"] = colors[0, ..., 3:]
            return colors[0, ..., :3], alphas[0], meta, target
        return colors[0], alphas[0], meta, target

    # ------------------------------------------------------------------ one iteration

    def view_at(self, iteration: int) -> int:
        v = self.data.num_views
        epoch, offset = divmod(iteration, v)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return int(torch.randperm(v, generator=g)[offset])

    def step(self) -> tuple[float, float]:
        """One optimisation step; returns ``(loss, psnr)`` of the rendered view."""
        c = self.config
        it = self.iteration
        view = self.view_at(it)
        scale = c.coarse_scale if it < c.coarse_fraction * c.iterations else 1.0
        if max(self.targets[view].shape[:2]) * c.coarse_scale < c.coarse_min_size:
            scale = 1.0  # small photos: the coarse level would be too small to align poses
        self._set_learning_rates()
        self.last_step_coarse = scale != 1.0
        image, alpha, meta, target = self.render(view, scale, depth=self.render_depth)
        meta["means2d"].retain_grad()
        loss = self.loss(view, image, alpha, meta, target)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self._roll_back(f"the loss became {loss.item()}")
            return float("nan"), float("nan")
        loss.backward()
        # A sum is finite iff every element is (short of an overflow, which is bad too).
        bad = [n for n, p in self.params.items()
               if p.grad is not None and not math.isfinite(float(p.grad.sum()))]
        if bad:
            self._roll_back(f"the gradient of {', '.join(bad)} is not finite")
            return float("nan"), float("nan")
        self.strategy.step_post_backward(self, meta)
        self.optimizer.step()
        self.iteration += 1
        if self.strategy.is_refine_step(self.iteration):
            self.refine()
        if self.iteration % 25 == 0:
            self._last_good = self._snapshot()
        with torch.no_grad():
            value = psnr(image.detach(), target).item()
        return loss.item(), value

    def loss(self, view: int, image: Tensor, alpha: Tensor, meta: dict,
             target: Tensor) -> Tensor:
        """The training loss of one rendered view: the sum of :attr:`loss_terms` (a scalar)."""
        loss = None
        for term in self.loss_terms:
            value = term(self, view, image, alpha, meta, target)
            if isinstance(value, float) and value == 0.0:
                continue
            loss = value if loss is None else loss + value
        return image.sum() * 0.0 if loss is None else loss

    # ------------------------------------------------------------------ NaN/Inf handling

    def _snapshot(self) -> dict:
        return {
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "iteration": self.iteration,
            "stats": self.strategy.snapshot(),
        }

    def _roll_back(self, reason: str) -> None:
        self.rollbacks += 1
        if self.rollbacks > self.config.max_rollbacks:
            raise UserError(f"the optimisation diverged at iteration {self.iteration} ({reason}) "
                            f"{self.config.max_rollbacks} times even after lowering the learning "
                            "rate; rerun with another --seed or fewer --iterations.")
        snap = self._last_good
        self._replace_params({n: t.clone() for n, t in snap["params"].items()})
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        self.iteration = snap["iteration"]
        self.strategy.restore(snap["stats"])
        self.lr_scale *= 0.5
        from reconstruction.images import warn

        warn(f"{reason}; rolled back to iteration {self.iteration} and halved the learning "
             "rates")

    # ------------------------------------------------------------------ densification

    def refine(self) -> dict[str, int]:
        """One densification round of the strategy; counts of what it did."""
        return self.strategy.refine(self)

    @torch.no_grad()
    def append_gaussians(self, values: dict[str, Tensor]) -> None:
        """Add Gaussians (one tensor per :data:`GAUSSIAN_FIELDS` name, raw parameters as in
        :class:`GaussianScene`) with zero optimiser state; statistics restart."""
        n_new = int(values["means"].shape[0])
        keep = torch.ones(self.num_gaussians, dtype=torch.bool, device=self.device)
        self.remap(keep, n_new, {name: values[name].to(self.device, torch.float32)
                                 for name in GAUSSIAN_FIELDS})

    def extra_metrics(self) -> dict:
        """The components' figures for metrics.json (none for F-3DGO)."""
        metrics: dict = {}
        for component in self.components:
            metrics.update(component.metrics())
        return metrics

    def remap(self, keep: Tensor, n_new: int, appended: dict[str, Tensor]) -> None:
        """Keep rows ``keep`` of every Gaussian tensor, append ``appended`` (zero Adam
        state); the strategy's statistics restart."""
        replaced = {}
        for name in GAUSSIAN_FIELDS:
            old = self.params[name]
            replaced[name] = torch.cat([old.detach()[keep], appended[name]])
            state = self.optimizer.state.pop(old, None)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    pad = torch.zeros(n_new, *state[key].shape[1:], device=self.device)
                    state[key] = torch.cat([state[key][keep], pad])
                replaced[name] = (replaced[name], state)
        self._replace_params(replaced)
        self.strategy.reset(self.num_gaussians, self.device)

    def _replace_params(self, values: dict) -> None:
        """Swap parameter tensors (optionally with their Adam state) in place of the old ones."""
        for name, value in values.items():
            tensor, state = value if isinstance(value, tuple) else (value, None)
            old = self.params[name]
            new = torch.nn.Parameter(tensor.contiguous())
            for group in self.optimizer.param_groups:
                if group["params"][0] is old:
                    group["params"][0] = new
            old_state = self.optimizer.state.pop(old, None)
            if state is not None:
                self.optimizer.state[new] = state
            elif old_state is not None and old_state["exp_avg"].shape == tensor.shape:
                self.optimizer.state[new] = old_state
            self.params[name] = new

    # ------------------------------------------------------------------ checkpoints

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to resume, as named tensors (for safetensors)."""
        out = {f"param.{n}": p.detach().cpu().contiguous() for n, p in self.params.items()}
        for group in self.optimizer.param_groups:
            state = self.optimizer.state.get(group["params"][0])
            if state:
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    out[f"adam.{group['name']}.{key}"] = torch.as_tensor(
                        state[key]).detach().cpu().reshape(state[key].shape).contiguous()
        for component in self.components:
            out.update(component.state_tensors())
        return out

    def state_meta(self) -> dict:
        meta = {"iteration": self.iteration, "iterations": self.config.iterations,
                "lr_scale": self.lr_scale, "rollbacks": self.rollbacks, "seed": self.seed}
        for component in self.components:
            meta.update(component.state_meta())
        return meta

    def load_state(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Restore what :meth:`state_tensors` and :meth:`state_meta` saved.

        Raises ``ValueError`` (or ``KeyError`` naming a missing tensor) for a checkpoint
        that does not fit this trainer, before anything is changed.
        """
        self._check_state(tensors, meta)
        values = {}
        for name in (*GAUSSIAN_FIELDS, *POSE_FIELDS):
            tensor = tensors[f"param.{name}"].to(self.device)
            state = None
            if f"adam.{name}.exp_avg" in tensors:
                state = {key: tensors[f"adam.{name}.{key}"].to(self.device)
                         for key in ("exp_avg", "exp_avg_sq")}
                state["step"] = tensors[f"adam.{name}.step"].clone()
            values[name] = (tensor, state) if state is not None else tensor
        for name in values:
            self.optimizer.state.pop(self.params[name], None)
        self._replace_params(values)
        for component in self.components:
            component.load_state(tensors, meta, self.device)
        if "iterations" in meta:  # the schedule's length as decided (--time-budget)
            self.config.iterations = int(meta["iterations"])
        self.iteration = int(meta["iteration"])
        self.lr_scale = float(meta["lr_scale"])
        self.rollbacks = int(meta["rollbacks"])
        self._set_learning_rates()
        self._last_good = self._snapshot()

    def _check_state(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Refuse a checkpoint whose parameters or counters this trainer cannot take."""
        if not isinstance(meta, dict):
            raise ValueError("its trainer state is not a JSON object")
        for name in ("iteration", "rollbacks"):
            value = meta.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"its {name} {value!r} is not a non-negative integer")
        iterations = meta.get("iterations", self.config.iterations)  # older: not saved
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError(f"its iterations {iterations!r} is not a positive integer")
        if iterations > self.config.iterations:
            raise ValueError(f"its schedule of {iterations} iterations is longer than this "
                             f"run's {self.config.iterations}")
        if meta["iteration"] > iterations:
            raise ValueError(f"its iteration {meta['iteration']} is beyond the "
                             f"{iterations} iterations")
        lr_scale = meta.get("lr_scale")
        if not isinstance(lr_scale, (int, float)) or isinstance(lr_scale, bool) \
                or not math.isfinite(lr_scale) or lr_scale <= 0:
            raise ValueError(f"its learning-rate scale {lr_scale!r} is not a positive number")
        count = None
        for name in (*GAUSSIAN_FIELDS, *POSE_FIELDS):
            tensor = tensors.get(f"param.{name}")
            if tensor is None:
                raise ValueError(f"the tensor param.{name} is missing")
            if name in GAUSSIAN_FIELDS:  # any count, the trailing shape of this trainer's
                count = tensor.shape[0] if count is None and tensor.dim() else count
                expected = (count, *self.params[name].shape[1:])
            else:
                expected = tuple(self.params[name].shape)
            if tuple(tensor.shape) != expected:
                raise ValueError(f"the tensor param.{name} has the shape "
                                 f"{tuple(tensor.shape)}, not {expected}")
            for key in ("exp_avg", "exp_avg_sq"):
                state = tensors.get(f"adam.{name}.{key}")
                if state is not None and tuple(state.shape) != expected:
                    raise ValueError(f"the tensor adam.{name}.{key} has the shape "
                                     f"{tuple(state.shape)}, not {expected}")
            if f"adam.{name}.exp_avg" in tensors and f"adam.{name}.step" not in tensors:
                raise ValueError(f"the tensor adam.{name}.step is missing")
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"the tensor {name} holds NaN or infinite values")

    # ------------------------------------------------------------------ the loop

    def train(self, on_step: Callable[[int, float, float], None] | None = None,
              on_checkpoint: Callable[[GaussianTrainer], None] | None = None,
              stop_at: int | None = None) -> None:
        """Run steps until ``config.iterations`` (or ``stop_at``); ``on_step`` may shorten
        the schedule (:meth:`set_iterations`)."""
        every = self.config.checkpoint_every
        while self.iteration < (self.config.iterations if stop_at is None
                                else min(stop_at, self.config.iterations)):
            loss, value = self.step()
            if on_step is not None:
                on_step(self.iteration, loss, value)
            if on_checkpoint is not None and every > 0 and self.iteration % every == 0 \
                    and self.iteration < self.config.iterations:
                on_checkpoint(self)

    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """Full-resolution training PSNR (dB) of every view with the final degree."""
        values = []
        for view in range(self.data.num_views):
            image, _, _, target = self.render(view, 1.0, sh_degree=self.config.sh_degree)
            values.append(psnr(image, target).item())
        return values
