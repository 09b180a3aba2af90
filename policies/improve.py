"""The improvement loop: R rounds of rollouts, critic update and refinement, each from the last round's policy.

    round_0     evaluate the starting policy (``policy_path``)
    round r     current = policy_path for r = 1, round r-1's refined policy after that
      rollouts  scripts/collect.py source=policy policy_path=<current> intervener=scripted
                (episode i of round r uses seed + 1000 r + i: new start states every round)
      critic    scripts/train_critic.py on all data so far, bootstrapping with <current>
                (algo=awm with a critic.type only; re-trained every round for the new policy)
      policy    scripts/finetune.py algo=<algo> policy_path=<current>
                data=[the initial data, the rollouts of rounds 1..r] (+ critic_path for AWM);
                ``algo`` is the configs/algo/ group, so its options are this run's ``algo.<key>=``
      eval      success on unseen seeds (eval.seed on) with a 95% Wilson interval

Every stage is the library function its script runs, with a config composed from the same
YAML files (``policies.pipeline.compose_stage``), and writes ``DONE.json`` when complete. A
rerun of the same command skips finished stages, appends the missing episodes of an
interrupted collection and resumes training from its last checkpoint; a larger ``rounds``
adds rounds to a finished run.

Run layout (every round's data, checkpoints and metrics are kept):

    <out>/improve.json                        the run's config
    <out>/round_0/eval/metrics.json           the starting policy
    <out>/round_<r>/rollouts/                 LeRobot dataset of the round's episodes
    <out>/round_<r>/critic/                   critic checkpoints, diagnostics.json
    <out>/round_<r>/policy/                   the refined policy (checkpoints/last/pretrained_model)
    <out>/round_<r>/eval/metrics.json
    <out>/summary.json, <out>/summary.md      per round: episodes, interventions, success (rewritten every round)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from policies.finetune import ALGOS
from policies.pipeline import Run, _collect, compose_stage, evaluate_method
from vla.checkpoint import atomic_write_json, atomic_write_text
from vla.errors import ConfigError

log = logging.getLogger("vla.improve")
ROUND_SEED_STRIDE = 1000  # round r collects from seed + 1000 r on (evaluation seeds start at 10000)
# options that must not change between the runs of one out folder (the finished rounds used them)
_FIXED = ("task", "policy_path", "data", "algo", "seed", "critic_type", "intervener")


def _missing(value) -> bool:
    return value in (None, "", "???") or (isinstance(value, list | tuple) and not value)


def _algo(cfg: dict) -> tuple[str | None, dict]:
    """(name, options) of ``algo``: the configs/algo/ group's dict, or just a name."""
    algo = cfg.get("algo")
    if isinstance(algo, dict):
        opts = dict(algo)
        return opts.pop("name", None), opts
    return algo, {}


def check_config(cfg: dict) -> dict:
    """The run's fixed options, normalised; ConfigError (or CheckpointError) naming what is wrong."""
    import sim
    from vla.checkpoint import resolve_checkpoint

    for key in ("task", "policy_path", "data", "out"):
        if _missing(cfg.get(key)):
            raise ConfigError(f"missing config value '{key}' (e.g. {key}=...)")
    rounds = cfg.get("rounds")
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r}: need an integer >= 1")
    algo = _algo(cfg)[0]
    if algo not in ALGOS:
        raise ConfigError(f"algo={algo!r}: expected one of {ALGOS}")
    if cfg["task"] not in sim.TASKS:
        raise ConfigError(f"task={cfg['task']!r}: expected one of {sorted(sim.TASKS)}")
    policy = Path(cfg["policy_path"]).expanduser()
    if not policy.exists():
        raise ConfigError(f"policy_path={policy} does not exist (the starting policy: a checkpoint folder "
                          "or a training run's out folder)")
    resolve_checkpoint(policy)  # CheckpointError if it holds no complete checkpoint
    data = [cfg["data"]] if isinstance(cfg["data"], str) else list(cfg["data"])
    for d in data:
        if not (Path(d).expanduser() / "meta/info.json").exists():
            raise ConfigError(f"data: {d} is not a dataset (no meta/info.json); give the initial datasets, "
                              "e.g. data=[runs/demo/data/demos]")
    if int(cfg["rollouts"]["episodes"]) < 1:
        raise ConfigError(f"rollouts.episodes={cfg['rollouts']['episodes']}: need at least 1 episode per round")
    if int(cfg["eval"].get("episodes") or 0) < 0:
        raise ConfigError(f"eval.episodes={cfg['eval']['episodes']}: need >= 0 (0: no evaluation)")
    episodes, last = int(cfg["rollouts"]["episodes"]), int(cfg["seed"]) + ROUND_SEED_STRIDE * rounds
    if episodes > ROUND_SEED_STRIDE or (int(cfg["eval"].get("episodes") or 0) > 0
                                        and last + episodes > int(cfg["eval"]["seed"])):
        raise ConfigError(f"round {rounds} would collect on seeds {last}..{last + episodes - 1}: keep rounds "
                          f"and rollouts.episodes (<= {ROUND_SEED_STRIDE}) below the evaluation seeds "
                          f"(eval.seed={cfg['eval']['seed']}), or raise eval.seed")
    critic_type = (cfg.get("critic") or {}).get("type") if algo == "awm" else None
    if critic_type:
        from critics import critic_class

        critic_class(critic_type, where="critic.type")
    return {"task": cfg["task"], "policy_path": str(policy.resolve()),
            "data": [str(Path(d).expanduser().resolve()) for d in data], "algo": algo,
            "seed": int(cfg["seed"]), "critic_type": critic_type, "intervener": cfg["rollouts"]["intervener"]}


def _check_same_run(out: Path, fixed: dict) -> None:
    """A rerun into ``out`` must keep the options its finished rounds were made with."""
    path = out / "improve.json"
    if not path.exists():
        return
    before = json.loads(path.read_text()).get("fixed", {})
    changed = [k for k in _FIXED if k in before and before[k] != fixed[k]]
    if changed:
        diff = ", ".join(f"{k}: {before[k]!r} -> {fixed[k]!r}" for k in changed)
        raise ConfigError(f"out={out} holds a run made with other options ({diff}); "
                          "rerun with the same options to resume, or give a new out=")


def _agents(policy_path: str | Path, e: dict, device: str):
    """A maker of fresh receding-horizon agents of one policy checkpoint."""
    from policies import load_policy
    from vla.agent import ChunkAgent, execute_steps_for

    policy = load_policy(policy_path, device=device)
    execute = execute_steps_for(policy, e.get("execute_steps"))
    return lambda: ChunkAgent(policy, execute, device=device)


def run_improve(cfg: dict) -> Path:
    """Run (or resume) the improvement loop ``cfg`` (configs/improve.yaml); returns the summary.md path."""
    fixed = check_config(cfg)
    torch.set_num_threads(int(cfg.get("torch_threads") or 1))
    torch.manual_seed(fixed["seed"])
    run = Run(cfg["out"])
    _check_same_run(run.out, fixed)
    atomic_write_json(run.out / "improve.json", {"fixed": fixed, "config": cfg})

    task, algo, seed, device = fixed["task"], fixed["algo"], fixed["seed"], cfg.get("device") or "cpu"
    algo_opts = _algo(cfg)[1]
    env_over = list(cfg.get("env_overrides") or [])  # e.g. [env.obs_mode=pixels]: rollouts and evaluation alike
    e, r_cfg, c_cfg, f_cfg = cfg["eval"], cfg["rollouts"], cfg.get("critic") or {}, cfg.get("refine") or {}
    evaluating = int(e.get("episodes") or 0) > 0

    def evaluate(name: str, policy_path: str):
        def fn(p: Path) -> dict:
            result = evaluate_method({"task": task, "env_overrides": env_over, "eval": e}, name, p,
                                     factory=_agents(policy_path, e, device))
            return {**result, "policy_path": policy_path}
        return fn

    current = fixed["policy_path"]
    data = list(fixed["data"])
    rows = [{"round": 0, "policy_path": current,
             "eval": run.stage("round_0/eval", evaluate("round_0", current)) if evaluating else None}]
    _write_summary(run.out, cfg, rows)
    for r in range(1, int(cfg["rounds"]) + 1):
        name = f"round_{r}"
        rollouts = run.out / name / "rollouts"
        row = {"round": r, "start_policy": current}
        row["rollouts"] = run.stage(f"{name}/rollouts", lambda p, r=r, current=current: _collect(
            {"episodes": r_cfg["episodes"], "task": task, "env_overrides": env_over,
             "seed": seed + ROUND_SEED_STRIDE * r}, p, "policy",
            [f"policy_path={current}", f"intervener={r_cfg['intervener']}",
             f"policy_name={'base' if r == 1 else f'round_{r - 1}'}", f"device={device}", *r_cfg["overrides"]]))
        data.append(str(rollouts))
        data_arg = f"data=[{','.join(data)}]"

        critic = None
        if fixed["critic_type"]:
            critic = str(run.out / name / "critic")

            def train_critic(p: Path, current=current, data_arg=data_arg, r=r) -> dict:
                from critics.train import train_critic as fit

                fit(compose_stage("train_critic", [
                    f"critic={fixed['critic_type']}", data_arg, f"policy_path={current}", f"out={p}",
                    "resume=true", f"seed={seed + r}", *c_cfg.get("overrides", [])]))
                diag = p / "diagnostics.json"
                diag = json.loads(diag.read_text()) if diag.exists() else {}
                return {"policy_path": current, "data": list(data),
                        **{k: diag.get(k) for k in ("spearman_q", "auroc_q") if k in diag}}

            row["critic"] = run.stage(f"{name}/critic", train_critic)

        def refine(p: Path, current=current, data_arg=data_arg, critic=critic, r=r) -> dict:
            from policies.finetune import finetune

            stage = compose_stage("finetune", [
                f"algo={algo}", f"policy_path={current}", data_arg, f"out={p}", "resume=true", f"seed={seed + r}",
                *([f"critic_path={critic}"] if critic else []), *f_cfg.get("overrides", [])])
            stage["algo"] = {**stage["algo"], **algo_opts}  # the same group, with this run's algo.<key>=
            finetune(stage)
            return {"checkpoint": str(p), "policy_path": current, "data": list(data), "critic_path": critic,
                    "algo": stage["algo"]}

        row["policy"] = run.stage(f"{name}/policy", refine)
        current = str(run.out / name / "policy")
        row["eval"] = run.stage(f"{name}/eval", evaluate(name, current)) if evaluating else None
        rows.append(row)
        _write_summary(run.out, cfg, rows)
        log.info("round %d of %d done: %s", r, cfg["rounds"], run.out / name)
    return run.out / "summary.md"


def _write_summary(out: Path, cfg: dict, rows: list[dict]) -> None:
    algo = _algo(cfg)[0]
    atomic_write_json(out / "summary.json", {"algo": algo, "task": cfg["task"], "rounds": rows})

    def pct(x) -> str:
        return f"{100 * x:.0f}%"

    lines = [f"# Improvement loop: {algo} on {cfg['task']}", "",
             "| round | episodes collected | intervention steps | rollout success (assisted) | eval success (95% CI) |",
             "| ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        ro, ev = row.get("rollouts"), row.get("eval")
        collected = (str(ro["episodes"]), str(ro["intervention_steps"]), pct(ro["success_rate"])) if ro else \
            ("-", "-", "-")
        score = (f"{pct(ev['success_rate'])} [{pct(ev['ci95'][0])}, {pct(ev['ci95'][1])}] "
                 f"(n={ev['episodes']})") if ev else "-"
        label = f"{row['round']} (start)" if row["round"] == 0 else str(row["round"])
        lines.append(f"| {label} | {' | '.join(collected)} | {score} |")
    lines += ["", "Round r's rollouts run round r-1's policy; its eval is of the policy refined on them."]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")


__all__ = ["check_config", "run_improve"]
