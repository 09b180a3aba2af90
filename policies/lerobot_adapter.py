"""A LeRobot policy checkpoint (diffusion, pi0, pi0.5, SmolVLA) behind the ChunkPolicy interface.

The adapter keeps LeRobot's own pre- and post-processors (normalisation, tokenisation, relative
actions), so it takes our RAW batches and returns RAW action chunks, like every other ChunkPolicy.

Loading (offline): ``LeRobotChunkPolicy.from_pretrained(path)`` takes a local directory holding
LeRobot's ``config.json``, ``model.safetensors``, ``policy_preprocessor.json`` and
``policy_postprocessor.json`` (what ``lerobot-train`` writes into ``.../pretrained_model``), or a
LeRobot training run's output dir (its ``checkpoints/last/pretrained_model`` is used). The hub is
never needed for the checkpoint itself; the backbone files a checkpoint names (SmolVLA's
``vlm_model_name``, the PaliGemma tokenizer of pi0/pi0.5) must be in the local Hugging Face cache
or be local directories. Set ``HF_HUB_OFFLINE=1`` to forbid any download.

Dispatch rule for ``policies.load_policy`` (see ``is_lerobot_checkpoint``): a checkpoint directory
is ours when it holds ``vla_adapter.json`` (written by ``save_pretrained``), or when its
``config.json`` has a ``"type"`` other than ``"vla"`` together with the ``"input_features"`` and
``"output_features"`` fields that every LeRobot policy config writes.

What each LeRobot type supports (caller-given noise and time matter for AWM/APO):

| type      | sample(noise=)                        | sample(init=, t_start=)          | loss(noise=, t=, reduction="none")              |
| diffusion | yes: observation encoded once per ctx | yes: DDPM-noised to the timestep | yes: DDPM ``add_noise`` + U-Net at given eps, t |
| pi0, pi05 | yes: predict_action_chunk on N copies | yes: Euler from t_start          | yes: inner flow model ``forward(noise, time)``  |
| smolvla   | yes: predict_action_chunk on N copies | yes: Euler from t_start          | yes: ``forward(noise=, time=, reduction=)``     |
| others    | noise=None only                       | no                               | only if ``forward`` takes ``reduction``         |

So every command serves diffusion, pi0, pi0.5 and SmolVLA; a type without a generative head (ACT,
VQ-BeT...) serves evaluation and deployment without a critic and behaviour cloning, and says so in
one line when given re-ranking, the dual system, AWM or APO (``vla.types.require_generative``).

Partial denoising (``t_start`` < 1, Hume's System 1 refining a chosen chunk): diffusion runs the
scheduler's own steps from the one matching ``t_start`` (``floor(t_start*T)``, as our diffusion head
does) on the chunk noised there by ``add_noise``. The flow types start their Euler integration at
``t_start`` from ``t_start*eps + (1-t_start)*a``: LeRobot's ``sample_actions`` always integrates from
t = 1 through the module-level ``euler_integrate``, so the adapter wraps that function once with one
that starts at the time set for the calling thread (``_partial_time``) and delegates unchanged at
t = 1. ``init=None`` with ``t_start`` < 1 starts from the normalised zero chunk.
The pi0 family recomputes its vision-language prefix for each of the N copies (sharing the prefix
KV cache across candidates would need LeRobot internals; not done yet).

Conventions. ``t`` is in [0, 1] with 1 = pure noise for every type: flow models use it as is
(x_t = t*eps + (1-t)*a); diffusion maps it to the integer timestep ``floor(t*T)`` clipped to
T-1 (an integer tensor is taken as timesteps directly). Noise is in the policy's normalised action
space, shaped (..., H, Da) like our chunks, or exactly the model's own shape (..., Hm, Dm): pi0 and
SmolVLA pad actions to ``max_action_dim``, and diffusion's horizon starts ``n_obs_steps - 1``
steps in the past. The model entries the caller's noise does not cover are drawn from a generator
seeded by that noise, so the same noise always gives the same result and the extra entries still
look like the Gaussian noise the model was trained on (zeros would not). The per-sample loss is
the mean squared error over the chunk's real steps (``action_is_pad`` masked) and real action dims;
padded steps still enter the network as inputs (LeRobot's datasets copy the last real action there).
Diffusion with ``n_obs_steps > 1`` repeats the current observation as its history and treats the
past action slots as padding: this is exactly what LeRobot sees at an episode's first frame.

Shapes: B batch, N candidates, H chunk length (``chunk_len``), Da action size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vla.errors import CheckpointError, ConfigError, DataError, ShapeError
from vla.types import ACTION, IMAGE_PREFIX, STATE, TASK, WITHOUT_GENERATIVE_HEAD, Batch

ADAPTER_FILE = "vla_adapter.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json")
PAD = "action_is_pad"
ENV_STATE = "observation.environment_state"
LANG_TOKENS, LANG_MASK = "observation.language.tokens", "observation.language.attention_mask"
# Types whose sampler is known to honour caller-given noise (others may silently ignore it).
NOISE_TYPES = ("diffusion", "pi0", "pi05", "smolvla")
FLOW_TYPES = ("pi0", "pi05", "smolvla")


def resolve_lerobot_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory for ``path``: itself, ``<path>/pretrained_model`` (a LeRobot step dir)
    or ``<path>/checkpoints/last/pretrained_model`` (a LeRobot training run's output dir)."""
    path = Path(path)
    for cand in (path, path / "pretrained_model", path / "checkpoints" / "last" / "pretrained_model"):
        if (cand / "config.json").is_file():
            return cand
    raise CheckpointError(f"no LeRobot checkpoint at {path}: config.json not found there, in "
                          "pretrained_model/ or in checkpoints/last/pretrained_model/")


def is_lerobot_checkpoint(path: str | Path) -> bool:
    """The dispatch rule for ``policies.load_policy`` (cheap: reads JSON only, imports nothing)."""
    try:
        root = resolve_lerobot_checkpoint(path)
        if (root / ADAPTER_FILE).is_file():
            return True
        cfg = json.loads((root / "config.json").read_text())
    except (CheckpointError, OSError, ValueError):
        return False
    return cfg.get("type") not in (None, "vla") and "input_features" in cfg and "output_features" in cfg


def build_lerobot_policy(cfg: dict, features: dict | None = None, stats: dict | None = None):
    """From the ``configs/policy/lerobot.yaml`` group: load ``cfg["path"]``. The checkpoint keeps its
    own normalisation stats (``stats`` is accepted for a uniform builder signature and not used) and
    chunk length (a ``chunk_len`` in ``cfg`` must match it)."""
    if not cfg.get("path"):
        raise ConfigError("policy=lerobot needs policy.path=<LeRobot checkpoint dir>")
    policy = LeRobotChunkPolicy.from_pretrained(cfg["path"], cfg.get("device", "cpu"), cfg.get("rename_map"))
    if cfg.get("chunk_len") not in (None, policy.chunk_len):
        raise ConfigError(f"policy.chunk_len={cfg['chunk_len']}, but the LeRobot {policy.policy_type} checkpoint "
                          f"{cfg['path']} makes chunks of {policy.chunk_len} (leave it null)")
    if features is not None:
        policy.check_compatible(features, where="the dataset")
    return policy


@dataclass
class LeRobotContext:
    batch: dict                      # preprocessed observation batch (normalised, tokenised), on device
    size: int                        # B
    raw: dict                        # the raw observation batch: init chunks are preprocessed with it
    global_cond: Tensor | None = None  # diffusion only: (B, Dc), the encoded observation
    relative_states: list = field(default_factory=list)  # state cached by relative-action steps


_PARTIAL = threading.local()  # .t_start: where the wrapped euler_integrate starts, for this thread


@contextmanager
def _partial_time(t_start: float):
    _PARTIAL.t_start = float(t_start)
    try:
        yield
    finally:
        _PARTIAL.t_start = 1.0


def _install_partial_euler(module) -> None:
    """Wrap ``module.euler_integrate`` (LeRobot's flow sampler loop) once, so that a sample taken
    under ``_partial_time(t)`` integrates from t instead of 1; at t = 1 the original runs."""
    original = getattr(module, "euler_integrate", None)
    if original is None or getattr(original, "_vla_partial", False):
        return

    def euler_integrate(denoise_fn, noise, num_steps, **kwargs):
        t_start = getattr(_PARTIAL, "t_start", 1.0)
        if t_start >= 1.0:
            return original(denoise_fn, noise, num_steps, **kwargs)
        x, dt = noise, t_start / num_steps  # x is x_{t_start}; same step count as from t = 1
        for i in range(num_steps):
            t = torch.full((x.shape[0],), t_start - i * dt, dtype=torch.float32, device=x.device)
            x = x - dt * denoise_fn(x, t)  # v = eps - a: dx/dt = v, integrated towards t = 0
        return x

    euler_integrate._vla_partial = True
    module.euler_integrate = euler_integrate


def _seeded_generator(noise: Tensor, purpose: bytes) -> torch.Generator:
    """A CPU generator seeded by the bytes of ``noise`` (and ``purpose``, so that two uses of the same
    noise draw independent streams): same noise, same extra draws."""
    data = noise.detach().float().cpu().contiguous().numpy().tobytes()
    digest = hashlib.blake2b(data, digest_size=8, person=purpose)
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


def _repeat(batch: dict, n: int, size: int) -> dict:
    """Each sample's entries n times in a row: (B, ...) -> (B*N, ...), lists likewise."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor) and v.ndim > 0 and v.shape[0] == size:
            out[k] = v.repeat_interleave(n, dim=0)
        elif isinstance(v, list) and len(v) == size:
            out[k] = [x for x in v for _ in range(n)]
        else:
            out[k] = v
    return out


def _masked_mean(err: Tensor, valid: Tensor) -> Tensor:
    """err (B, H, D), valid (B, H) -> (B,) mean over the valid steps."""
    mask = valid.to(err.dtype).unsqueeze(-1)
    return (err * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) * err.shape[-1]).clamp_min(1)


class LeRobotChunkPolicy(nn.Module):
    """ChunkPolicy over a LeRobot ``PreTrainedPolicy`` and its pre/post processors."""

    def __init__(self, policy: nn.Module, preprocessor, postprocessor, source: str | None = None):
        super().__init__()
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        cfg = policy.config
        self.policy_type: str = cfg.type
        self.action_dim: int = int(cfg.output_features[ACTION].shape[0])
        if self.policy_type == "diffusion":
            # The model's chunk starts n_obs_steps - 1 steps in the past; ours starts now.
            self._offset = cfg.n_obs_steps - 1
            self.chunk_len: int = cfg.horizon - self._offset
            self._noise_shape = (cfg.horizon, self.action_dim)
        else:
            self._offset = 0
            self.chunk_len = int(getattr(cfg, "chunk_size", None) or getattr(cfg, "horizon", None)
                                 or cfg.n_action_steps)
            self._noise_shape = (self.chunk_len, int(getattr(cfg, "max_action_dim", self.action_dim)))
        steps = list(getattr(preprocessor, "steps", []))
        self._relative_steps = [s for s in steps if type(s).__name__ == "RelativeActionsProcessorStep"]
        self._needs_task = any(type(s).__name__ == "TokenizerProcessorStep" for s in steps)
        self._device_steps = [s for s in steps if type(s).__name__ == "DeviceProcessorStep"]
        renames = [s.rename_map for s in steps if type(s).__name__ == "RenameObservationsProcessorStep"]
        # the policy's feature key -> the key in our batches (they differ under a rename_map)
        self._our_key = {theirs: ours for m in renames for ours, theirs in m.items()}
        features = {self._our_key.get(k, k): list(v.shape)
                    for k, v in {**cfg.input_features, **cfg.output_features}.items() if ".empty_camera_" not in k}
        self.execute_steps: int = max(1, min(int(getattr(cfg, "n_action_steps", None) or self.chunk_len),
                                             self.chunk_len))
        if self.policy_type in FLOW_TYPES:
            _install_partial_euler(sys.modules[type(policy.model).__module__])
        self.source = source  # provenance only: not in ``config``, which must match on resume
        self.config = {"type": "lerobot", "policy_type": self.policy_type, "chunk_len": self.chunk_len,
                       "action_dim": self.action_dim, "features": features}

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def features(self) -> dict[str, tuple[int, ...]]:
        """{our key: shape} the policy reads and writes (images (3, H, W), as LeRobot records them)."""
        return {k: tuple(v) for k, v in self.config["features"].items()}

    def __str__(self) -> str:
        return f"the LeRobot '{self.policy_type}' policy"

    @property
    def generative(self) -> bool:
        """Whether sampling honours caller-given noise and start times (re-ranking, dual system, AWM, APO)."""
        return self.policy_type in NOISE_TYPES

    def sample_time(self, batch_size: int, device) -> Tensor:
        """t (B,) as the policy trains: the flow types' own Beta draw, uniform timesteps for diffusion."""
        if self.policy_type in FLOW_TYPES:
            return self.policy.model.sample_time(batch_size, device)
        return torch.rand(batch_size, device=device)

    # --- loading and saving --------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        rename_map: dict[str, str] | None = None) -> LeRobotChunkPolicy:
        """Load a LeRobot checkpoint dir (or run dir). ``rename_map`` maps our observation keys to the
        policy's (e.g. {"observation.images.front": "observation.images.top"})."""
        root = resolve_lerobot_checkpoint(path)
        for name in REQUIRED_FILES:
            if not (root / name).is_file():
                raise CheckpointError(f"LeRobot checkpoint {root} lacks {name} (the adapter needs the policy "
                                      "weights and LeRobot's saved processors, as written by lerobot >= 0.4)")
        from lerobot.configs import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        try:
            cfg = PreTrainedConfig.from_pretrained(str(root))
        except Exception as e:  # draccus raises several types for a config it cannot parse
            raise CheckpointError(f"{root / 'config.json'} is not a LeRobot policy config: {e}") from e
        cfg.device = str(device)
        pre_over: dict[str, Any] = {"device_processor": {"device": str(device)}}
        if rename_map:
            pre_over["rename_observations_processor"] = {"rename_map": dict(rename_map)}
        try:
            policy = get_policy_class(cfg.type).from_pretrained(str(root), config=cfg)
            pre, post = make_pre_post_processors(
                cfg, pretrained_path=str(root), preprocessor_overrides=pre_over,
                postprocessor_overrides={"device_processor": {"device": str(device)}})
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"cannot load the LeRobot '{cfg.type}' policy at {root} offline: {e} "
                                  "(backbone/tokenizer files it names must be local or in the HF cache)") from e
        _verify_weights(policy, root / "model.safetensors")
        return cls(policy, pre, post, source=str(root))

    def save_pretrained(self, directory: str | Path) -> None:
        """LeRobot's checkpoint files plus ``vla_adapter.json``, written to a temp dir then renamed."""
        directory = Path(directory)
        tmp, old = (directory.with_name(f".{directory.name}.{s}") for s in ("tmp", "old"))
        shutil.rmtree(tmp, ignore_errors=True)
        self.policy.save_pretrained(tmp)
        self.preprocessor.save_pretrained(tmp)
        self.postprocessor.save_pretrained(tmp)
        (tmp / ADAPTER_FILE).write_text(json.dumps(self.config, indent=2))
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)

    def check_compatible(self, features: dict[str, tuple], where: str = "the data/env") -> None:
        """ShapeError naming the first feature the policy needs that ``features`` (of ``where``) lacks
        or sizes differently. Images are (3, H, W) or (H, W, 3); their size only matters for
        diffusion without ``resize_shape`` (the others resize)."""
        cfg = self.policy.config
        exact_images = self.policy_type == "diffusion" and getattr(cfg, "resize_shape", None) is None
        for theirs, ft in {**cfg.input_features, **cfg.output_features}.items():
            if ".empty_camera_" in theirs:
                continue
            key, want = self._our_key.get(theirs, theirs), tuple(ft.shape)
            if key not in features:
                raise ShapeError(f"the LeRobot {self.policy_type} policy needs '{key}' {want}; {where} "
                                 f"has only {sorted(features)}")
            have = features[key]
            have = tuple(int(x) for x in (have["shape"] if isinstance(have, dict) else have))
            if key.startswith(IMAGE_PREFIX):
                have = (have[2], have[0], have[1]) if len(have) == 3 and have[-1] == 3 != have[0] else have
                if have[:1] != want[:1] or (exact_images and have != want):
                    raise ShapeError(f"'{key}' is {have} in {where} but the LeRobot {self.policy_type} policy "
                                     f"expects {want}")
            elif have != want:
                raise ShapeError(f"'{key}' is {have} in {where} but the LeRobot {self.policy_type} policy "
                                 f"expects {want}")

    # --- ChunkPolicy ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, obs: Batch) -> LeRobotContext:
        """Preprocess once (normalise, tokenise); diffusion also encodes the observation once."""
        batch = self._preprocess(obs, with_action=False)
        size = next(batch[k].shape[0] for k in self.policy.config.input_features if k in batch)
        cond = None
        if self.policy_type == "diffusion":
            with self._eval_mode():
                cond = self.policy.diffusion._prepare_global_conditioning(self._diffusion_obs(batch))
        states = [s.get_cached_state() for s in self._relative_steps]
        raw = {k: v for k, v in obs.items() if k.startswith("observation.") or k == TASK}
        return LeRobotContext(batch=batch, size=size, raw=raw, global_cond=cond, relative_states=states)

    @torch.no_grad()
    def sample(self, ctx: LeRobotContext, n: int = 1, noise: Tensor | None = None, init: Tensor | None = None,
               t_start: float = 1.0) -> Tensor:
        """(B, N, H, Da) raw action chunks; ``noise`` (B, N, H, Da) or (B, N, Hm, Dm) fixes them.
        ``init`` (B, N, H, Da) raw and ``t_start`` < 1: denoise from ``init`` noised to t_start."""
        B, H, Da = ctx.size, self.chunk_len, self.action_dim
        if not 0.0 < t_start <= 1.0:
            raise ConfigError(f"sample: t_start must be in (0, 1], got {t_start}")
        partial = init is not None or t_start < 1.0
        if (noise is not None or partial) and not self.generative:
            what = "caller-given noise" if noise is not None else "a start chunk or time"
            raise ConfigError(f"{self} cannot sample from {what} (re-ranking, the dual system, AWM and APO "
                              f"need that): {WITHOUT_GENERATIVE_HEAD}")
        eps = self._fit_noise(noise, (B, n))
        if partial and eps is None:
            eps = torch.randn((B, n, *self._noise_shape), device=self.device)
        flat = None if eps is None else eps.flatten(0, 1)  # (B*N, Hm, Dm), sample-major
        a0 = self._start_chunk(ctx, n, init) if partial else None  # (B*N, Hm, Dm) normalised
        with self._eval_mode():
            if self.policy_type == "diffusion":
                # Called below predict_action_chunk, which would re-encode the images for every
                # candidate and keep only n_action_steps of the chunk.
                gen = None if noise is None else _seeded_generator(noise, b"ddpm-steps")  # DDPM draws too
                cond = ctx.global_cond.repeat_interleave(n, dim=0)
                if partial:
                    full = self._diffusion_from(a0, flat, t_start, cond, gen)
                else:
                    full = self.policy.diffusion.conditional_sample(B * n, global_cond=cond, generator=gen,
                                                                    noise=flat)
                chunks = full[:, self._offset:self._offset + H]
            elif partial:  # flow: x_{t_start} on the straight path, integrated from t_start
                x = t_start * flat + (1.0 - t_start) * a0
                with _partial_time(t_start):
                    chunks = self.policy.predict_action_chunk(_repeat(ctx.batch, n, B), noise=x)
            else:
                kwargs = {} if flat is None else {"noise": flat}
                chunks = self.policy.predict_action_chunk(_repeat(ctx.batch, n, B), **kwargs)
        if tuple(chunks.shape) != (B * n, H, Da):
            raise ShapeError(f"the LeRobot {self.policy_type} policy returned chunks {tuple(chunks.shape)}, "
                             f"expected {(B * n, H, Da)}")
        for step, state in zip(self._relative_steps, ctx.relative_states, strict=True):
            step._last_state = state  # relative->absolute must use this context's state, not the last seen
        raw = self.postprocessor(chunks.reshape(B, n * H, Da))  # the state offset broadcasts over N*H
        return raw.reshape(B, n, H, Da).to(self.device)

    def _start_chunk(self, ctx: LeRobotContext, n: int, init: Tensor | None) -> Tensor:
        """The chunk to noise to t_start, in the model's normalised space and shape (B*N, Hm, Dm):
        ``init`` through the policy's own preprocessor (normalisation, relative actions), or zeros."""
        B, H, Da = ctx.size, self.chunk_len, self.action_dim
        full = torch.zeros((B * n, *self._noise_shape), device=self.device)
        if init is None:
            return full
        if tuple(init.shape) != (B, n, H, Da):
            raise ShapeError(f"sample init has shape {tuple(init.shape)}, expected (B, N, H, Da) = {(B, n, H, Da)}")
        lb = self._preprocess({**_repeat(ctx.raw, n, B), ACTION: init.reshape(B * n, H, Da)}, with_action=True)
        a = lb[ACTION].to(self.device, torch.float32)  # (B*N, H, Da)
        full[:, self._offset:self._offset + H, :Da] = a
        full[:, :self._offset, :Da] = a[:, :1]  # diffusion's past slots: the first action, as in the loss
        return full

    def _diffusion_from(self, a0: Tensor, eps: Tensor, t_start: float, cond: Tensor, gen) -> Tensor:
        """LeRobot's diffusion sampling loop from the scheduler step matching t_start: (B*N, horizon, Da)."""
        d = self.policy.diffusion
        sched = d.noise_scheduler
        sched.set_timesteps(d.num_inference_steps)
        T = sched.config.num_train_timesteps
        k_start = min(int(t_start * T), T - 1)
        steps = [k for k in sched.timesteps if int(k) <= k_start]
        if not steps:
            return a0
        x = sched.add_noise(a0, eps, torch.full((a0.shape[0],), int(steps[0]), dtype=torch.long, device=a0.device))
        for k in steps:
            out = d.unet(x, torch.full(x.shape[:1], int(k), dtype=torch.long, device=x.device), global_cond=cond)
            x = sched.step(out, k, x, generator=gen).prev_sample
        return x

    def loss(self, batch: Batch, reduction: str = "mean", noise: Tensor | None = None,
             t: Tensor | None = None) -> Tensor:
        """The policy's generative loss on a raw batch; (B,) with reduction="none"."""
        if reduction not in ("mean", "none"):
            raise ConfigError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        lb = self._preprocess(batch, with_action=True)
        B = lb[ACTION].shape[0]
        if t is not None and tuple(t.shape) != (B,):
            raise ShapeError(f"t must be (B,) = ({B},), got {tuple(t.shape)}")
        t = None if t is None else t.to(self.device)
        eps = self._fit_noise(noise, (B,))
        if self.policy_type == "diffusion":
            per = self._diffusion_loss(lb, eps, t)
        elif self.policy_type in ("pi0", "pi05", "smolvla"):
            per = self._flow_loss(lb, eps, t)
        else:
            per = self._generic_loss(lb, noise, t, reduction)
        return per if reduction == "none" else per.mean()

    # --- helpers -------------------------------------------------------------------------------
    @contextmanager
    def _eval_mode(self):
        """Sampling in eval mode (no random crops, no dropout), then back to the caller's mode:
        LeRobot's own predict_action_chunk switches to eval and leaves it so."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            yield
        finally:
            self.policy.train(was_training)

    def _preprocess(self, batch: Batch, with_action: bool) -> dict:
        """Our raw batch -> LeRobot's preprocessed batch (only the keys the policy reads)."""
        cfg = self.policy.config
        raw: dict[str, Any] = {}
        for key in (self._our_key.get(k, k) for k in cfg.input_features):
            if key in batch:
                raw[key] = batch[key]  # the preprocessor renames it to the policy's key
            elif ".empty_camera_" not in key:
                raise DataError(f"the LeRobot {self.policy_type} policy needs '{key}', missing from the batch "
                                f"(has {sorted(batch)})")
        if TASK in batch:
            raw[TASK] = [batch[TASK]] if isinstance(batch[TASK], str) else list(batch[TASK])
        elif self._needs_task:
            raise DataError(f"the LeRobot {self.policy_type} policy needs the instruction '{TASK}' in the batch")
        for step in self._device_steps:  # follow the module when a trainer moves it
            if step.tensor_device != self.device:
                step.device = str(self.device)
                step.__post_init__()
        if with_action:
            if ACTION not in batch:
                raise DataError("loss() needs 'action' (B, H, Da) in the batch")
            act = batch[ACTION]
            if act.ndim != 3 or tuple(act.shape[1:]) != (self.chunk_len, self.action_dim):
                raise ShapeError(f"action is {tuple(act.shape)} but the LeRobot {self.policy_type} policy "
                                 f"takes (B, {self.chunk_len}, {self.action_dim})")
            raw[ACTION] = act
            raw[PAD] = batch.get(PAD, torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device))
        return self.preprocessor(raw)

    def _fit_noise(self, noise: Tensor | None, lead: tuple[int, ...]) -> Tensor | None:
        """Caller noise (*lead, H, Da) or (*lead, Hm, Dm) -> the model's (*lead, Hm, Dm)."""
        if noise is None:
            return None
        full_shape = (*lead, *self._noise_shape)
        if tuple(noise.shape) == full_shape:
            return noise.to(self.device, torch.float32)
        ours = (*lead, self.chunk_len, self.action_dim)
        if tuple(noise.shape) != ours:
            raise ShapeError(f"noise is {tuple(noise.shape)}; the LeRobot {self.policy_type} policy takes "
                             f"{ours} or its own {full_shape}")
        full = torch.randn(full_shape, generator=_seeded_generator(noise, b"extra-entries"))
        full[..., self._offset:self._offset + self.chunk_len, :self.action_dim] = noise.detach().float().cpu()
        return full.to(self.device)

    def _diffusion_obs(self, lb: dict) -> dict:
        """LeRobot diffusion's inputs: (B, n_obs, ...) histories, cameras stacked as OBS_IMAGES."""
        cfg = self.policy.config

        def history(x: Tensor, item_ndim: int) -> Tensor:
            # One observation: repeat it, as LeRobot's queues do at an episode's first step.
            return x if x.ndim == item_ndim + 2 else x.unsqueeze(1).expand(-1, cfg.n_obs_steps, *x.shape[1:])

        out = {STATE: history(lb[STATE], 1)}
        if cfg.image_features:
            out["observation.images"] = torch.stack([history(lb[k], 3) for k in cfg.image_features], dim=2)
        if cfg.env_state_feature:
            out[ENV_STATE] = history(lb[ENV_STATE], 1)
        return out

    def _diffusion_loss(self, lb: dict, eps: Tensor | None, t: Tensor | None) -> Tensor:
        """DiffusionModel.compute_loss at given noise and timesteps, per sample."""
        d, cfg = self.policy.diffusion, self.policy.config
        act, pad = lb[ACTION], lb[PAD].to(torch.bool)
        B, k = act.shape[0], self._offset
        # Past slots copy the first action and count as padding (LeRobot's dataset at frame 0).
        traj = torch.cat([act[:, :1].expand(-1, k, -1), act], dim=1)  # (B, horizon, Da)
        pad = torch.cat([torch.ones(B, k, dtype=torch.bool, device=pad.device), pad], dim=1)
        eps = torch.randn_like(traj) if eps is None else eps
        T = d.noise_scheduler.config.num_train_timesteps
        if t is None:
            steps = torch.randint(0, T, (B,), device=traj.device)
        elif t.dtype.is_floating_point:
            steps = (t * T).long().clamp(0, T - 1)  # t in [0, 1] -> timestep, 1 = most noise
        else:
            steps = t.long()
        cond = d._prepare_global_conditioning(self._diffusion_obs(lb))
        pred = d.unet(d.noise_scheduler.add_noise(traj, eps, steps), steps, global_cond=cond)
        target = eps if cfg.prediction_type == "epsilon" else traj
        return _masked_mean((pred - target) ** 2, ~pad)

    def _flow_loss(self, lb: dict, eps: Tensor | None, t: Tensor | None) -> Tensor:
        """pi0 / pi0.5 / SmolVLA flow-matching loss at given noise and time, per sample."""
        p, B = self.policy, lb[ACTION].shape[0]
        eps = torch.randn((B, *self._noise_shape), device=self.device) if eps is None else eps
        t = p.model.sample_time(B, self.device) if t is None else t.float()
        if self.policy_type == "smolvla":  # its forward takes noise and time and masks padding itself
            return p.forward(lb, noise=eps, time=t, reduction="none")[0]
        images, img_masks = p._preprocess_images(lb)
        actions = p.prepare_action(lb)  # padded to max_action_dim
        args = (images, img_masks, lb[LANG_TOKENS], lb[LANG_MASK])
        if self.policy_type == "pi0":
            args = (*args, p.prepare_state(lb))
        err = p.model.forward(*args, actions, eps, t)  # (B, H, max_action_dim)
        return _masked_mean(err[..., :self.action_dim], ~lb[PAD].to(torch.bool))

    def _generic_loss(self, lb: dict, noise: Tensor | None, t: Tensor | None, reduction: str) -> Tensor:
        """Other LeRobot types: their own forward, per sample where it offers reduction='none'."""
        import inspect

        if noise is not None or t is not None:
            raise ConfigError(f"the LeRobot '{self.policy_type}' policy exposes no loss at caller-given noise "
                              f"and time (supported: {', '.join(NOISE_TYPES)})")
        if "reduction" in inspect.signature(self.policy.forward).parameters:
            return self.policy.forward(lb, reduction="none")[0]
        if reduction == "none":
            raise ConfigError(f"the LeRobot '{self.policy_type}' policy's forward() has no reduction='none', "
                              "so no per-sample loss (AWM and APO need one)")
        return self.policy.forward(lb)[0].reshape(1)


def _verify_weights(policy: nn.Module, model_file: Path, n_check: int = 3) -> None:
    """Some LeRobot loaders print a warning and keep random weights when the file does not fit;
    compare a few stored tensors with the loaded ones so that this fails loudly instead."""
    from safetensors import safe_open

    state = policy.state_dict()
    checked = 0
    with safe_open(str(model_file), framework="pt") as f:
        for key in f.keys():
            mine = state.get(key, state.get(f"model.{key}"))
            if mine is None:
                continue
            saved = f.get_tensor(key)
            if mine.shape != saved.shape or not torch.equal(mine.detach().cpu().to(saved.dtype), saved):
                raise CheckpointError(f"weights in {model_file} did not load into the {policy.config.type} "
                                      f"policy ('{key}' differs): another architecture or size?")
            checked += 1
            if checked == n_check:
                return
    if checked == 0:
        raise CheckpointError(f"no tensor in {model_file} matches the {policy.config.type} policy's parameters")
