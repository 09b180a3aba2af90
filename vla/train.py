"""The generic training loop: one ``Trainer`` for policies, critics and post-training.

``Trainer(model, loss_fn, dataset, cfg, out_dir).fit()`` trains ``model`` (an nn.Module
with a JSON-able ``config`` and ``save_pretrained(dir)``) on ``loss_fn(model, batch) ->
(loss, logs)`` with AdamW, a warm-up and cosine schedule (LambdaLR),
gradient clipping, EMA weights (``EMA``, warm-up as in Diffusion Policy), mixed precision
on GPU and data parallelism through ``accelerate`` (one process by default;
``accelerate launch --multi_gpu --num_processes N scripts/train.py ...`` for several GPUs,
or several CPU processes over gloo where there is no GPU, with no code change).

Checkpoints follow the layout in ``vla.checkpoint`` and are written atomically;
``resume=True`` continues a killed run where its last checkpoint stopped, bit for bit:
the data order is a pure function of (seed, epoch) and the position inside the epoch,
and the RNG, optimiser, scheduler and EMA states are restored.

Hooks for the stages that reuse the loop: ``frozen`` modules (a reference policy, the
policy a critic bootstraps with) are moved to the device and never trained;
``extra_state`` objects (``state_dict``/``load_state_dict``) are checkpointed with the
rest; ``on_step(trainer, step, logs)`` runs after every optimiser step (Polyak target
updates, say); ``sampler`` replaces the default shuffling (stratified batches).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vla import checkpoint as ckpt
from vla.errors import CheckpointError, ConfigError
from vla.types import to_device

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 10_000
    batch_size: int = 64  # per process; one optimiser step uses batch_size * processes samples
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    adam_eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | constant, both after a linear warm-up
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0  # where the cosine ends, as a fraction of lr
    grad_clip: float = 10.0  # max gradient norm; 0 disables clipping
    ema: bool = True
    ema_decay: float = 0.9999  # ceiling of the decay; it warms up as 1 - (1 + step) ** -ema_power
    ema_power: float = 0.75
    mixed_precision: str = "auto"  # auto (bf16 on a CUDA device that has it, else off) | no | bf16 | fp16
    cpu: bool = False  # train on the CPU even where CUDA is available
    threads: int = 0  # torch intra-op threads per process; 0: 1 on the CPU (see set_threads), torch's choice on GPU
    save_every: int = 1000
    keep_last: int = 0  # checkpoints to keep; 0 keeps all
    log_every: int = 50
    num_workers: int = 0
    seed: int = 0
    resume: bool = False
    progress: bool = True
    find_unused_parameters: bool = False  # DDP: set when the loss leaves some parameters unused

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        defaults = cls()
        try:
            for k, v in d.items():  # YAML reads 1e-4 as a string; coerce to the field's type
                kind = type(getattr(defaults, k))
                if k == "betas":
                    d[k] = tuple(float(b) for b in v)
                elif kind is float:
                    d[k] = float(v)
                elif kind is int and not isinstance(v, bool):
                    if float(v) != int(float(v)):
                        raise ValueError
                    d[k] = int(float(v))
        except (TypeError, ValueError):
            what = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise ConfigError(f"training option {k}={v!r} is not {what}") from None
        return cls(**d)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"training option {name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "keep_last", "num_workers", "grad_clip", "weight_decay", "min_lr_ratio", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training option {name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"training option lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"training option ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ConfigError(f"training option mixed_precision must be auto|no|bf16|fp16, got {self.mixed_precision!r}")


class _LossModule(nn.Module):
    """Routes ``loss_fn`` through ``forward``: DDP synchronises gradients only for work done
    inside the wrapped module's forward, and policies compute their loss in ``.loss()``."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        out = self.loss_fn(self.model, batch)
        return out if isinstance(out, tuple) else (out, {})


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, dict], tuple[Tensor, dict]],
        dataset: Dataset,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        sampler: Iterable[int] | None = None,
        collate_fn: Callable | None = None,
        frozen: Iterable[nn.Module] = (),
        extra_state: Mapping[str, Any] | None = None,
        on_step: Callable[[Trainer, int, dict], None] | None = None,
        param_groups: list[dict] | None = None,
        run_config: Mapping | None = None,
    ):
        """``sampler`` yields the sample indices of one epoch (all processes together) and must
        yield the same ones for the same epoch (call ``set_epoch`` if it has it, seed from it):
        that is what makes a resumed run see the data an uninterrupted one would. Every epoch
        must have the same length. ``param_groups`` replaces the default single group of all
        trainable parameters (e.g. a lower learning rate for a pretrained encoder)."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        cfg.validate()
        for attr in ("config", "save_pretrained"):
            if not hasattr(model, attr):
                raise ConfigError(f"the model to train ({type(model).__name__}) has no '{attr}'")
        self.cfg, self.out = cfg, Path(out_dir)
        self.dataset, self.sampler, self.collate_fn = dataset, sampler, collate_fn
        self.extra_state = dict(extra_state or {})
        self.on_step = on_step
        self.run_config = dict(run_config or {})
        self.step = 0

        # several processes and no CUDA (accelerate launch on a CPU box): accelerate forms a gloo
        # group only when told cpu=True; otherwise every process would think it is alone
        multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
        self.accelerator = Accelerator(
            cpu=cfg.cpu or multi_cpu,
            mixed_precision=_mixed_precision(cfg),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
        )
        set_seed(cfg.seed, device_specific=True)  # different noise per process, same across runs
        device = self.accelerator.device
        set_threads(cfg.threads, device)
        self.model = model.to(device)
        for m in frozen:
            m.to(device).eval().requires_grad_(False)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"{type(model).__name__} has no trainable parameters")
        optimizer = torch.optim.AdamW(
            param_groups or self.params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay
        )
        if cfg.warmup_steps >= cfg.steps:
            log.warning("warmup_steps (%d) >= steps (%d): the learning rate never peaks", cfg.warmup_steps, cfg.steps)
        # Not passed through accelerate.prepare: its scheduler wrapper steps once per process.
        self.scheduler = lr_schedule(optimizer, cfg.scheduler, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        self.loss_module, self.optimizer = self.accelerator.prepare(_LossModule(model, loss_fn), optimizer)
        self.ema = EMA(self.params, cfg.ema_decay, cfg.ema_power) if cfg.ema else None
        world = self.accelerator.num_processes
        self.batch_size = cfg.batch_size
        n = len(self._epoch_order(0))
        if n < cfg.batch_size * world:
            self.batch_size = max(1, n // world)
            log.warning("batch_size %d x %d processes > %d samples: using %d", cfg.batch_size, world, n, self.batch_size)
        self.steps_per_epoch = n // (self.batch_size * world)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training data has {n} samples, fewer than one per process ({world})")

    # --- data ----------------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[int]:
        if self.sampler is None:
            return np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.dataset)).tolist()
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        return [int(i) for i in self.sampler]

    def _loader(self, epoch: int, first_step: int) -> DataLoader:
        """This process's batches of ``epoch`` from step ``first_step`` of the epoch on."""
        order, world, rank = self._epoch_order(epoch), self.accelerator.num_processes, self.accelerator.process_index
        B = self.batch_size
        batches = [order[(i * world + rank) * B:(i * world + rank + 1) * B]
                   for i in range(first_step, self.steps_per_epoch)]
        worker_seed = int(np.random.SeedSequence([self.cfg.seed, epoch, rank]).generate_state(1)[0])
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate_fn,
            num_workers=self.cfg.num_workers,
            pin_memory=self.accelerator.device.type == "cuda",
            generator=torch.Generator().manual_seed(worker_seed),
        )

    # --- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train to ``cfg.steps``; returns the last logged values."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        self.step = self._start()
        writer = SummaryWriter(self.out / "tensorboard", purge_step=self.step or None) if acc.is_main_process else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not (acc.is_main_process and cfg.progress))
        last: dict[str, float] = {}
        self.loss_module.train()
        try:
            while self.step < cfg.steps:
                epoch, first = divmod(self.step, self.steps_per_epoch)
                for batch in self._loader(epoch, first):
                    loss, logs, grad_norm = self._update(to_device(batch, acc.device))
                    self.step += 1
                    if self.on_step is not None:
                        self.on_step(self, self.step, logs)
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        last = self._log(writer, bar, loss, logs, grad_norm)
                    bar.update(1)
                    if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                        self.save_checkpoint()
                    if self.step >= cfg.steps:
                        break
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        return last

    def _update(self, batch: dict) -> tuple[Tensor, dict, Tensor | None]:
        loss, logs = self.loss_module(batch)
        self.accelerator.backward(loss)
        grad_norm = None
        if self.cfg.grad_clip > 0:
            grad_norm = self.accelerator.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return loss.detach(), logs, grad_norm

    def _log(self, writer, bar, loss: Tensor, logs: dict, grad_norm) -> dict[str, float]:
        values = {"loss": float(loss), "lr": float(self.scheduler.get_last_lr()[0])}
        if grad_norm is not None:
            values["grad_norm"] = float(grad_norm)
        values.update({k: float(v) for k, v in logs.items()})
        if not np.isfinite(values["loss"]):
            raise ConfigError(f"training diverged at step {self.step}: loss is {values['loss']} (lower train.lr?)")
        if writer is not None:
            for k, v in values.items():
                writer.add_scalar(f"train/{k}", v, self.step)
        bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{values['lr']:.2g}")
        return values

    # --- checkpoints ------------------------------------------------------------------------------
    def _start(self) -> int:
        last = ckpt.last_checkpoint(self.out)
        if not self.cfg.resume:
            if last is not None:
                raise ConfigError(f"{self.out} already holds checkpoints (last: {last.name}); "
                                  "pass resume=true to continue that run, or choose another out")
            return 0
        if last is None:
            log.info("resume: no checkpoint in %s yet, starting at step 0", self.out)
            return 0
        step = self.load_checkpoint(last)
        log.info("resumed from %s at step %d", last, step)
        return step

    def save_checkpoint(self) -> Path:
        """Write checkpoint ``self.step`` into a temporary folder, then publish it atomically."""
        acc, step = self.accelerator, self.step
        tmp = ckpt.checkpoints_root(self.out) / f"{ckpt.TMP_PREFIX}{ckpt.step_name(step)}"
        if acc.is_main_process:
            tmp = ckpt.temp_checkpoint_dir(self.out, step)
        acc.wait_for_everyone()
        state_dir = tmp / ckpt.TRAINING_STATE
        torch.save(ckpt.rng_state(), state_dir / f"rng_state_{acc.process_index}.pt")
        if acc.is_main_process:
            # users deploy the EMA weights; the raw ones go to training_state
            with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
                self.model.save_pretrained(tmp / ckpt.PRETRAINED)
            meta = {
                "step": step,
                "num_processes": acc.num_processes,
                "train_config": asdict(self.cfg),
                "model_config": _jsonable(self.model.config),
                "run_config": _jsonable(self.run_config),
            }
            ckpt.save_training_state(state_dir, self.model, self.optimizer, self.scheduler, self.ema,
                                     self.extra_state, meta)
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.publish_checkpoint(tmp, self.out, step)
            ckpt.prune_checkpoints(self.out, self.cfg.keep_last)
        acc.wait_for_everyone()
        return ckpt.checkpoints_root(self.out) / ckpt.step_name(step)

    def load_checkpoint(self, path: str | Path) -> int:
        """Restore weights, optimiser, scheduler, EMA, extra state and RNG; returns the step."""
        state_dir = Path(path) / ckpt.TRAINING_STATE
        meta = ckpt.read_json(state_dir / ckpt.TRAINER_STATE)
        saved, current = meta.get("model_config") or {}, _jsonable(self.model.config)
        if saved != current:
            diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise CheckpointError(f"{path}: checkpoint of another model (config differs in {diff})")
        ckpt.load_training_state(state_dir, self.model, self.optimizer, self.scheduler, self.ema,
                                 self.extra_state, self.accelerator.device)
        rng_file = state_dir / f"rng_state_{self.accelerator.process_index}.pt"
        if not rng_file.exists():  # resumed with more processes than saved it
            rng_file = state_dir / "rng_state_0.pt"
        ckpt.set_rng_state(torch.load(rng_file, weights_only=True))
        return int(meta["step"])


# --- helpers ----------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of parameters, with Diffusion Policy's warm-up (as in diffusers'
    ``EMAModel``): the decay after k updates is ``min(max_decay, 1 - (1 + k) ** -power)``, so early
    averages forget the random initialisation quickly. Written here rather than imported because
    importing ``diffusers.training_utils`` pulls in diffusers' whole model zoo (seconds per process).
    """

    def __init__(self, params: Iterable[nn.Parameter], max_decay: float = 0.9999, power: float = 0.75):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.max_decay, self.power, self.updates = max_decay, power, 0

    def decay(self) -> float:
        k = self.updates - 1  # the first update copies the weights
        return 0.0 if k <= 0 else min(self.max_decay, 1.0 - (1.0 + k) ** -self.power)

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        weight = 1.0 - self.decay()
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), weight)

    @contextlib.contextmanager
    def swapped_in(self):
        """The averaged weights in the model for the duration (to save or evaluate them)."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "max_decay": self.max_decay, "power": self.power}

    def load_state_dict(self, state: dict) -> None:
        if [s.shape for s in state["shadow"]] != [s.shape for s in self.shadow]:
            raise ValueError("EMA state holds parameters of other shapes")
        with torch.no_grad():
            for s, saved in zip(self.shadow, state["shadow"], strict=True):
                s.copy_(saved)
        self.updates, self.max_decay, self.power = int(state["updates"]), state["max_decay"], state["power"]


def lr_schedule(optimizer, kind: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the peak, or constant."""
    if kind not in ("cosine", "constant"):
        raise ConfigError(f"train.scheduler must be cosine|constant, got {kind!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_threads(threads: int, device: str | torch.device = "cpu") -> int:
    """Set torch's intra-op thread count; returns it. ``threads=0`` means 1 on the CPU and torch's
    own choice on an accelerator.

    Why 1 on the CPU: these networks are small (batches of 64 x ~20 tokens), so a second thread
    gains little even on an idle machine, and on a machine whose cores are busy (other jobs,
    sim workers, several accelerate processes) OpenMP's spinning threads oversubscribe them:
    one BC step measured 4.6 s with 2 threads against 0.09 s with 1 on a loaded 2-core box
    (benchmarks/results/bc.json). Pass a larger value for a big, otherwise idle CPU.
    """
    threads = int(threads)
    if threads < 0:
        raise ConfigError(f"threads must be >= 0, got {threads}")
    if threads == 0:
        if torch.device(device).type != "cpu":
            return torch.get_num_threads()
        threads = 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _mixed_precision(cfg: TrainConfig) -> str:
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    cuda = torch.cuda.is_available() and not cfg.cpu
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"


def _jsonable(obj: Any) -> Any:
    """A plain JSON round trip: tuples become lists, so saved and live configs compare equal."""
    return json.loads(json.dumps(obj, default=str))


# --- behaviour cloning: the composition behind scripts/train.py -------------------------------------


def bc_loss(model: nn.Module, batch: dict) -> tuple[Tensor, dict]:
    return model.loss(batch), {}


def train_policy(cfg: Mapping, build_policy: Callable) -> Path:
    """Behaviour cloning of a chunk policy on LeRobot datasets; returns the run's out folder.

    ``cfg`` holds ``policy`` (the policy config, with ``chunk_len``), ``data`` (dataset
    folders), ``out``, ``steps``, ``batch_size``, ``resume``, ``seed`` and ``train`` (the
    other ``TrainConfig`` options). ``build_policy(policy_cfg, features, stats)`` comes from
    the caller, so that ``vla`` does not import ``policies``.
    """
    from vla.data import ChunkDataset, compute_stats

    for key in ("policy", "data", "out"):
        if cfg.get(key) in (None, "", "???"):
            raise ConfigError(f"missing config value '{key}' (e.g. {key}=...)")
    policy_cfg = dict(cfg["policy"])
    if "chunk_len" not in policy_cfg:
        raise ConfigError("the policy config has no 'chunk_len'")
    policy = None
    if policy_cfg["chunk_len"] is None:  # a pretrained checkpoint (e.g. LeRobot's) knows its own
        policy = build_policy(policy_cfg, None, None)
        policy_cfg["chunk_len"] = policy.chunk_len
    data = [cfg["data"]] if isinstance(cfg["data"], str) else list(cfg["data"])
    train_cfg = TrainConfig.from_dict({
        **dict(cfg.get("train") or {}),
        **{k: cfg[k] for k in ("steps", "batch_size", "resume", "seed") if cfg.get(k) is not None},
    })
    # only the observations the policy reads (null: the state and every camera)
    dataset = ChunkDataset(data, chunk_len=int(policy_cfg["chunk_len"]), obs_keys=policy_cfg.get("observation_keys"))
    log.info("data: %d frames in %d episodes from %s", len(dataset), dataset.num_episodes, data)
    torch.manual_seed(train_cfg.seed)  # same initial weights for the same seed (and for a resumed run)
    if policy is None:
        policy = build_policy(policy_cfg, dataset.features, compute_stats(dataset))
    else:
        policy.check_compatible(dataset.features, where=f"data {data}")
    trainer = Trainer(policy, bc_loss, dataset, train_cfg, cfg["out"], run_config=cfg)
    trainer.fit()
    return Path(cfg["out"])
