"""The generic Trainer and the checkpoint layout, on a tiny stand-in model (CPU, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_model
from torch import nn

from vla import checkpoint as ckpt
from vla.errors import CheckpointError, ConfigError
from vla.train import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[2]


class TinyModel(nn.Module):
    """A regression net whose loss draws noise from torch's RNG, as generative losses do."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.config = {"type": "tiny", "hidden": hidden}
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.saves = 0

    def loss(self, batch):
        target = batch["y"] + 0.01 * torch.randn_like(batch["y"])
        return ((self.net(batch["x"]) - target) ** 2).mean()

    def save_pretrained(self, directory):
        self.saves += 1
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(self.config))


class TinyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, generator=g)
        self.y = torch.stack([self.x.sum(1), self.x[:, 0] * self.x[:, 1]], dim=1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i], "task": "fit"}


def loss_fn(model, batch):
    loss = model.loss(batch)
    return loss, {"loss_again": loss.detach()}


def make_trainer(out, steps=10, save_every=5, on_step=None, model=None, **kw):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, warmup_steps=2, save_every=save_every, log_every=1,
                      ema_decay=0.9, progress=False, seed=3, cpu=True, **kw)
    return Trainer(model or TinyModel(), loss_fn, TinyData(), cfg, out, on_step=on_step)


def state_of(step_dir: Path) -> dict:
    ts = step_dir / ckpt.TRAINING_STATE
    return {
        "raw": load_file(ts / "model.safetensors"),
        "ema_weights": load_file(step_dir / ckpt.PRETRAINED / "model.safetensors"),
        "optimizer": torch.load(ts / "optimizer.pt", weights_only=True),
        "scheduler": torch.load(ts / "scheduler.pt", weights_only=True),
        "ema": torch.load(ts / "ema.pt", weights_only=True),
        "rng": torch.load(ts / "rng_state_0.pt", weights_only=True)["torch"],
    }


def assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_trains_and_writes_complete_checkpoints(tmp_path):
    trainer = make_trainer(tmp_path, steps=40, save_every=20)
    everything = torch.utils.data.default_collate([trainer.dataset[i] for i in range(24)])
    first = trainer.model.loss(everything).item()
    logs = trainer.fit()
    assert trainer.step == 40
    assert logs["loss"] < first / 2  # it learns
    assert set(logs) >= {"loss", "lr", "grad_norm", "loss_again"}
    assert ckpt.list_checkpoints(tmp_path) == [20, 40]
    last = tmp_path / "checkpoints" / "last"
    assert last.is_symlink() and os.readlink(last) == "00000040"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]
    step_dir = last.resolve()
    assert {p.name for p in (step_dir / "pretrained_model").iterdir()} == {"config.json", "model.safetensors"}
    assert {p.name for p in (step_dir / "training_state").iterdir()} == {
        "model.safetensors", "optimizer.pt", "scheduler.pt", "ema.pt", "rng_state_0.pt", "trainer_state.json"}
    meta = json.loads((step_dir / "training_state" / "trainer_state.json").read_text())
    assert meta["step"] == 40 and meta["model_config"] == {"type": "tiny", "hidden": 16}
    state = state_of(step_dir)
    # pretrained_model holds the EMA weights, training_state the raw ones, and they differ
    assert not torch.equal(state["raw"]["net.0.weight"], state["ema_weights"]["net.0.weight"])
    assert torch.equal(state["raw"]["net.0.weight"], trainer.model.net[0].weight.detach())
    assert any((tmp_path / "tensorboard").iterdir())
    assert ckpt.resolve_checkpoint(tmp_path) == step_dir / "pretrained_model"


def test_killed_and_resumed_run_matches_uninterrupted_one(tmp_path):
    # 24 samples / batch 4 = 6 steps an epoch: the kill lands mid-epoch and the resumed run crosses an epoch
    straight = make_trainer(tmp_path / "straight")
    straight.fit()

    class Killed(Exception):
        pass

    def kill_at_6(trainer, step, logs):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        make_trainer(tmp_path / "resumed", on_step=kill_at_6).fit()
    assert ckpt.list_checkpoints(tmp_path / "resumed") == [5]

    resumed = make_trainer(tmp_path / "resumed", resume=True)
    resumed.fit()
    assert resumed.step == 10
    a = state_of(tmp_path / "straight" / "checkpoints" / "00000010")
    b = state_of(tmp_path / "resumed" / "checkpoints" / "00000010")
    assert_same(a, b)
    assert ckpt.list_checkpoints(tmp_path / "resumed") == [5, 10]


def test_crash_while_saving_leaves_last_on_a_complete_checkpoint(tmp_path):
    model = TinyModel()
    save = model.save_pretrained

    def save_then_fail(directory):
        if model.saves == 1:
            raise OSError("disk full")
        save(directory)

    model.save_pretrained = save_then_fail
    with pytest.raises(OSError, match="disk full"):
        make_trainer(tmp_path, model=model).fit()
    assert ckpt.list_checkpoints(tmp_path) == [5]
    assert ckpt.last_checkpoint(tmp_path).name == "00000005"
    # a resumed run (new process, fresh model) clears the half-written folder and finishes
    resumed = make_trainer(tmp_path, resume=True)
    resumed.fit()
    assert ckpt.list_checkpoints(tmp_path) == [5, 10]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(ckpt.TMP_PREFIX)]


def test_keep_last_prunes_old_checkpoints(tmp_path):
    make_trainer(tmp_path, steps=6, save_every=2, keep_last=2, ema=False).fit()
    assert ckpt.list_checkpoints(tmp_path) == [4, 6]
    # without EMA the deployed weights are the raw ones
    state = load_file(tmp_path / "checkpoints" / "00000006" / "pretrained_model" / "model.safetensors")
    raw = load_file(tmp_path / "checkpoints" / "00000006" / "training_state" / "model.safetensors")
    assert_same(state, raw)


def test_existing_run_needs_resume_and_the_same_model(tmp_path):
    make_trainer(tmp_path, steps=2, save_every=2).fit()
    with pytest.raises(ConfigError, match="resume=true"):
        make_trainer(tmp_path, steps=4).fit()
    with pytest.raises(CheckpointError, match="hidden"):
        make_trainer(tmp_path, steps=4, model=TinyModel(hidden=8), resume=True).fit()


def test_resume_without_checkpoint_starts_at_zero(tmp_path):
    trainer = make_trainer(tmp_path, steps=3, save_every=3, resume=True)
    trainer.fit()
    assert ckpt.list_checkpoints(tmp_path) == [3]


def test_bad_config_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig.from_dict({"stepz": 3})
    assert TrainConfig.from_dict({"lr": "1e-4", "steps": 5.0, "betas": [0.9, 0.95]}).lr == 1e-4
    with pytest.raises(ConfigError, match="steps=2.5 is not an integer"):
        TrainConfig.from_dict({"steps": 2.5})
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        make_trainer(tmp_path, steps=0)
    with pytest.raises(ConfigError, match="has no 'config'"):
        Trainer(nn.Linear(2, 2), loss_fn, TinyData(), TrainConfig(cpu=True), tmp_path)


def test_frozen_modules_and_extra_state_and_sampler(tmp_path):
    frozen = nn.Linear(3, 2)
    before = frozen.weight.detach().clone()
    counter = nn.Module()
    counter.register_buffer("calls", torch.zeros(()))
    seen = []

    def uses_frozen(model, batch):
        seen.extend(batch["x"][:, 0].tolist())
        return model.loss(batch) + 0.0 * frozen(batch["x"]).sum(), {}

    def count(trainer, step, logs):
        counter.calls += 1

    class EvenOnly:  # yields the same indices for the same epoch, as the Trainer asks
        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            return iter(range(0, 24, 2))

    cfg = TrainConfig(steps=4, batch_size=3, save_every=4, progress=False, warmup_steps=0, cpu=True)
    trainer = Trainer(TinyModel(), uses_frozen, TinyData(), cfg, tmp_path, frozen=[frozen],
                      extra_state={"counter": counter}, on_step=count, sampler=EvenOnly())
    trainer.fit()
    assert torch.equal(frozen.weight, before) and not frozen.weight.requires_grad
    assert trainer.steps_per_epoch == 4
    assert set(seen) <= set(TinyData().x[::2, 0].tolist())
    extra = torch.load(tmp_path / "checkpoints" / "00000004" / "training_state" / "extra_state.pt", weights_only=True)
    assert extra["counter"]["calls"] == 4


def test_resolve_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="neither a model folder"):
        ckpt.resolve_checkpoint(tmp_path)
    make_trainer(tmp_path / "run", steps=2, save_every=1).fit()
    model_dir = tmp_path / "run" / "checkpoints" / "00000002" / "pretrained_model"
    assert ckpt.resolve_checkpoint(tmp_path / "run") == model_dir
    assert ckpt.resolve_checkpoint(tmp_path / "run" / "checkpoints") == model_dir
    assert ckpt.resolve_checkpoint(model_dir.parent) == model_dir
    assert ckpt.resolve_checkpoint(model_dir) == model_dir
    first = tmp_path / "run" / "checkpoints" / "00000001"
    assert ckpt.resolve_checkpoint(first) == first / "pretrained_model"


def test_atomic_write_json(tmp_path):
    ckpt.atomic_write_json(tmp_path / "a" / "m.json", {"x": [1, 2]})
    ckpt.atomic_write_json(tmp_path / "a" / "m.json", {"x": 3})
    assert json.loads((tmp_path / "a" / "m.json").read_text()) == {"x": 3}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.json"]


TWO_PROCESS_SCRIPT = """
import sys
import torch
from safetensors.torch import save_model
sys.path.insert(0, {tests!r})
from test_train import TinyData, TinyModel, loss_fn
from vla.train import TrainConfig, Trainer

torch.manual_seed(0)
cfg = TrainConfig(steps=4, batch_size=3, lr=1e-2, warmup_steps=0, save_every=2, progress=False, cpu=True)
trainer = Trainer(TinyModel(), loss_fn, TinyData(), cfg, sys.argv[1])
trainer.fit()
rank = trainer.accelerator.process_index
save_model(trainer.model, f"{{sys.argv[1]}}/rank{{rank}}.safetensors")
"""


def test_two_process_cpu_run_through_accelerate(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(TWO_PROCESS_SCRIPT.format(tests=str(Path(__file__).parent))))
    accelerate = Path(sys.executable).parent / "accelerate"
    # `--multi_gpu` is accelerate's torchrun launcher; with cpu=True the processes talk over gloo
    # (its `--cpu` flag alone starts a single process unless MPI is set up)
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert ckpt.list_checkpoints(out) == [2, 4]
    state_dir = out / "checkpoints" / "00000004" / "training_state"
    assert json.loads((state_dir / "trainer_state.json").read_text())["num_processes"] == 2
    assert (state_dir / "rng_state_0.pt").exists() and (state_dir / "rng_state_1.pt").exists()
    # gradients were averaged across the processes: both hold the same weights
    assert_same(load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors"))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    from vla.train import lr_schedule

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_schedule(opt, "cosine", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    lrs.append(sched.get_last_lr()[0])
    assert lrs[:4] == sorted(lrs[:4]) and lrs[0] > 0  # warm-up rises, and the first step is not wasted
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="cosine|constant"):
        lr_schedule(opt, "wiggly", 0, 10)


def test_ema_copies_first_then_averages_with_warm_up():
    from vla.train import EMA

    p = nn.Parameter(torch.zeros(3))
    ema = EMA([p], max_decay=0.9, power=1.0)
    p.data.fill_(2.0)
    ema.update()
    assert torch.equal(ema.shadow[0], p.detach())  # the first update copies
    p.data.fill_(4.0)
    ema.update()  # decay 1 - 2**-1 = 0.5
    assert torch.allclose(ema.shadow[0], torch.full((3,), 3.0))
    with ema.swapped_in():
        assert torch.allclose(p, torch.full((3,), 3.0))
    assert torch.equal(p.detach(), torch.full((3,), 4.0))
    for _ in range(100):
        ema.update()
    assert ema.decay() == 0.9
