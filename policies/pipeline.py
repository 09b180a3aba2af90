"""The main job: the whole post-training loop in simulation, stage by stage, into one run directory.

    collect imperfect demos -> BC base policy -> rollouts with the scripted intervener
    -> ALOE critic -> AWM, APO, HG-DAgger refinements (+ a small System 1 for the dual system)
    -> evaluation on unseen seeds of every method -> report

Each stage runs the same library function as its script (``sim.collect.collect``,
``vla.train.train_policy``, ``critics.train.train_critic``, ``policies.finetune.finetune``)
with a config composed from the same YAML files, so a stage is exactly what a user would
type. A stage writes ``DONE.json`` when its output is complete and is skipped afterwards;
an interrupted stage resumes (collection appends the missing episodes, training resumes from
its last checkpoint), so a killed demo picks up where it stopped.

Stages that do not depend on each other run side by side, ``workers`` at a time (forked
processes, one torch thread each): the critic with the refinements and System 1 (an AWM that
reads the critic's advantages waits for it, alongside the first evaluations), then the
evaluations; on a 2-core machine this nearly halves the time.

Run layout: ``<out>/data/{demos,rollouts}``, ``<out>/{base,critic,awm,apo,hg_dagger,system1}``,
``<out>/eval/<method>/metrics.json``, ``<out>/report.md``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vla.checkpoint import atomic_write_json
from vla.errors import ConfigError, VLAError

log = logging.getLogger("vla.pipeline")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# method evaluated -> the policy checkpoint (stage) it runs
_CHECKPOINT = {"base": "base", "base_rerank": "base", "awm": "awm", "apo": "apo", "awm_rerank": "awm",
               "dual": "base", "hg_dagger": "hg_dagger", "filtered_bc": "filtered_bc"}
METHODS = tuple(_CHECKPOINT)


def compose_stage(config_name: str, overrides: list[str]) -> dict:
    """A script's config (configs/<config_name>.yaml + overrides) as a plain dict."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    overrides = [str(o) for o in overrides]
    if GlobalHydra.instance().is_initialized():  # inside a @hydra.main app: same config dir
        cfg = compose(config_name=config_name, overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


class Run:
    """A run directory whose stages are done once."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def stage(self, name: str, fn: Callable[[Path], dict | None]) -> dict:
        path = self.out / name
        done = path / "DONE.json"
        if done.exists():
            log.info("stage %-12s done already, skipped", name)
            return json.loads(done.read_text())
        log.info("stage %-12s ...", name)
        t0 = time.perf_counter()
        path.mkdir(parents=True, exist_ok=True)
        result = fn(path) or {}
        result["seconds"] = time.perf_counter() - t0
        atomic_write_json(done, result)
        log.info("stage %-12s finished in %.0f s", name, result["seconds"])
        return result

    def stages(self, todo: list[tuple[str, Callable[[Path], dict | None]]], workers: int = 1) -> dict[str, dict]:
        """Independent stages, up to ``workers`` at once in forked processes (1: here, in order).

        A stage that fails stops no other; once all have ended the failure is raised, and
        running the demo again resumes it (the finished ones are skipped)."""
        pending = [(n, fn) for n, fn in todo if not (self.out / n / "DONE.json").exists()]
        if workers > 1 and len(pending) > 1:
            ctx = multiprocessing.get_context("fork")
            queue, running, failed = list(pending), {}, []
            while queue or running:
                while queue and len(running) < workers:
                    name, fn = queue.pop(0)
                    proc = ctx.Process(target=self.stage, args=(name, fn), name=f"stage {name}", daemon=False)
                    proc.start()
                    running[proc.sentinel] = (name, proc)
                for sentinel in multiprocessing.connection.wait(list(running)):
                    name, proc = running.pop(sentinel)
                    proc.join()
                    if proc.exitcode != 0:
                        failed.append(name)
            if failed:
                raise VLAError(f"stage(s) {', '.join(failed)} failed (see the log above); "
                               "run the same command again to resume")
        return {name: self.stage(name, fn) for name, fn in todo}


def env_spec(task: str, env_overrides: list[str] | None = None) -> tuple[str, dict]:
    """The task name and env options of ``env=<task>`` with ``env_overrides`` (e.g. ``env.obs_mode=pixels``),
    composed as the scripts compose them: every stage of a run sees the same env."""
    import sim

    return sim.env_options(compose_stage("collect", [f"env={task}", *(env_overrides or [])])["env"])


def _collect(cfg: dict, out: Path, source: str, extra: list[str]) -> dict:
    from sim.collect import collect
    from vla.data import read_journal

    have = len(read_journal(out)) if (out / "meta/info.json").exists() else 0
    want = int(cfg["episodes"]) - have
    if want > 0:
        overrides = [f"env={cfg['task']}", *cfg.get("env_overrides", []), f"source={source}", f"episodes={want}",
                     f"out={out}", f"seed={cfg['seed']}", "progress=true", *extra]
        stage_cfg = compose_stage("collect", overrides)
        factory = None
        if source == "policy":  # as scripts/collect.py does
            from policies import load_policy

            def factory(env):
                return load_policy(stage_cfg["policy_path"], device=stage_cfg.get("device") or "cpu")
        collect(stage_cfg, agent_factory=factory)
    journal = read_journal(out)
    return {
        "episodes": len(journal),
        "success_rate": float(np.mean([e["success"] for e in journal])),
        "intervention_steps": int(sum(e["interventions"] for e in journal)),
        "steps": int(sum(e["length"] for e in journal)),
        "episodes_with_intervention": int(sum(e["interventions"] > 0 for e in journal)),
    }


def _train(overrides: list[str], out: Path) -> dict:
    from policies import build_policy
    from vla.train import train_policy

    train_policy(compose_stage("train", [*overrides, f"out={out}", "resume=true"]), build_policy)
    return {"checkpoint": str(out)}


def run_pipeline(cfg: dict) -> Path:
    """Run (or resume) the demo experiment ``cfg`` (configs/experiment/*.yaml); returns the report path."""
    from vla.report import write_report

    for method in cfg["eval"]["methods"]:
        if method not in METHODS:
            raise ConfigError(f"eval.methods: unknown method {method!r}; known: {list(METHODS)}")
        needs = _CHECKPOINT[method]
        if needs not in ("base", *cfg["refine"]["methods"]):
            raise ConfigError(f"eval.methods has {method!r}, which needs refine.methods to include {needs!r}")
    torch.set_num_threads(int(cfg.get("torch_threads") or 1))
    torch.manual_seed(int(cfg["seed"]))
    run = Run(cfg["out"])
    data = run.out / "data"
    task = cfg["task"]
    env_over = list(cfg.get("env_overrides") or [])  # every stage sees the same env (e.g. cameras)
    atomic_write_json(run.out / "experiment.json", cfg)

    stages = {}
    d = cfg["demos"]
    stages["demos"] = run.stage("data/demos", lambda p: _collect(
        {**d, "task": task, "env_overrides": env_over, "seed": cfg["seed"]}, p, "expert",
        [f"expert.noise={d['noise']}", f"expert.hesitation={d['hesitation']}",
         f"expert.wrong_first_attempt={d['wrong_first_attempt']}"]))

    demos = str(data / "demos")
    stages["base"] = run.stage("base", lambda p: _train(
        [f"policy={cfg['base']['policy']}", f"env={task}", *env_over, f"data=[{demos}]", *cfg["base"]["overrides"]], p))
    base = str(run.out / "base")

    r = cfg["rollouts"]
    stages["rollouts"] = run.stage("data/rollouts", lambda p: _collect(
        {**r, "task": task, "env_overrides": env_over, "seed": int(cfg["seed"]) + 1000}, p, "policy",
        [f"policy_path={base}", f"intervener={r['intervener']}", "policy_name=base", *r["overrides"]]))
    both = f"[{demos},{data / 'rollouts'}]"

    def train_critic(p: Path) -> dict:
        from critics.train import train_critic as fit

        c = cfg["critic"]
        fit(compose_stage("train_critic", [f"critic={c['type']}", f"data={both}", f"policy_path={base}",
                                           f"out={p}", "resume=true", *c["overrides"]]))
        diag = p / "diagnostics.json"
        return json.loads(diag.read_text()) if diag.exists() else {}

    critic = str(run.out / "critic")

    f = cfg["refine"]
    refine_methods = list(f["methods"])
    # AWM reads the critic unless its advantages are Monte-Carlo returns; then it needs no critic
    awm_critic = "awm" in refine_methods and compose_stage("finetune", [
        "algo=awm", "policy_path=-", "data=[-]", "out=-", *f["overrides"], *f.get("awm", [])])["algo"]["advantage"] != "mc"

    def refine(algo: str) -> Callable[[Path], dict]:
        def fn(p: Path) -> dict:
            from policies.finetune import finetune

            finetune(compose_stage("finetune", [
                f"algo={algo}", f"policy_path={base}", f"data={both}", f"out={p}", "resume=true",
                *([f"critic_path={critic}"] if algo == "awm" and awm_critic else []), *f["overrides"],
                *f.get(algo, [])]))
            return {"checkpoint": str(p)}
        return fn

    def evaluate(method: str) -> tuple[str, Callable[[Path], dict]]:
        return f"eval/{method}", lambda p: evaluate_method(cfg, method, p)

    workers = int(cfg.get("workers") or 1)
    after_critic = ["awm"] if awm_critic else []
    s1_policy = cfg["system1"].get("policy") or cfg["base"]["policy"]  # a small head of our own by default
    system1 = ("system1", lambda p: _train(
        [f"policy={s1_policy}", f"env={task}", *env_over, f"data=[{demos}]", *cfg["system1"]["overrides"]], p))
    stages.update(run.stages([("critic", train_critic), *[(m, refine(m)) for m in refine_methods
                                                           if m not in after_critic], system1], workers))
    evals = list(cfg["eval"]["methods"])
    needs_late = [m for m in evals if _CHECKPOINT[m] in after_critic]
    stages.update(run.stages([*[(m, refine(m)) for m in after_critic],
                              *[evaluate(m) for m in evals if m not in needs_late]], workers))
    stages.update(run.stages([evaluate(m) for m in needs_late], workers))
    stages = {k: stages[k] for k in ["demos", "base", "rollouts", "critic", *refine_methods, "system1",
                                      *[f"eval/{m}" for m in evals]]}  # the report's order

    report = write_report(run.out, cfg, stages)
    return report


# -- evaluation -------------------------------------------------------------------------------
def _agent_factory(cfg: dict, method: str, device: str = "cpu"):
    from critics import load_critic
    from critics.rerank import RerankConfig, Reranker
    from policies import load_policy
    from policies.hume import DualSystemAgent, DualSystemConfig
    from vla.agent import ChunkAgent, execute_steps_for

    out = Path(cfg["out"])
    policy = load_policy(out / _CHECKPOINT[method], device=device)
    execute = execute_steps_for(policy, cfg["eval"].get("execute_steps"))
    if method.endswith("rerank"):
        critic = load_critic(out / "critic", device=device)
        rcfg = RerankConfig(**cfg["eval"]["rerank"])
        return lambda: ChunkAgent(policy, execute, device=device, planner=Reranker(policy, critic, rcfg))
    if method == "dual":
        critic = load_critic(out / "critic", device=device)
        s1 = load_policy(out / "system1", device=device)
        dcfg = DualSystemConfig(**cfg["eval"]["dual"])
        return lambda: DualSystemAgent(policy, critic, s1, dcfg, device=device)
    return lambda: ChunkAgent(policy, execute, device=device)


def evaluate_method(cfg: dict, method: str, out: Path, factory: Callable | None = None) -> dict:
    """Success over unseen seeds for one method; writes metrics.json and a few GIFs (same seeds for all).

    ``factory`` (a maker of fresh agents) replaces the method's agent from the run folder.
    """
    import sim
    from vla.rollout import evaluate, run_episode

    e = cfg["eval"]
    factory = factory or _agent_factory(cfg, method)
    seeds = list(range(int(e["seed"]), int(e["seed"]) + int(e["episodes"])))
    name, opts = env_spec(cfg["task"], cfg.get("env_overrides"))
    venv = sim.make_vector(name, int(e.get("num_envs") or 1), **opts)
    try:
        result = evaluate(venv, factory, seeds)
    finally:
        venv.close()
    metrics = {"method": method, **result.summary(), "seeds": [seeds[0], seeds[-1]],
               "per_episode": [{"seed": s, "task": t, "success": bool(w), "steps": int(n)}
                               for s, t, w, n in zip(result.seeds, result.tasks, result.successes,
                                                     result.lengths, strict=True)],
               "videos": []}
    if int(e.get("videos") or 0) > 0:
        import imageio.v3 as iio

        # the policy's cameras keep their size; a state-only policy's video is rendered at video_size
        cameras = opts.get("obs_mode", "state") != "state"
        env = sim.make(name, **{**opts, "render_mode": "rgb_array",
                                **({} if cameras else {"image_size": int(e.get("video_size", 128))})})
        for seed in seeds[: int(e["videos"])]:
            ep = run_episode(env, factory(), seed=seed, record_video=True)
            path = out / f"seed{seed}_{'success' if ep.success else 'failure'}.gif"
            iio.imwrite(path, np.stack(ep.frames), extension=".gif",
                        duration=1000 / env.metadata.get("render_fps", 10), loop=0)
            metrics["videos"].append(path.name)
        env.close()
    atomic_write_json(out / "metrics.json", metrics)
    log.info("%-12s success %.0f%% [%.0f, %.0f] over %d episodes", method, 100 * result.success_rate,
             100 * metrics["ci95"][0], 100 * metrics["ci95"][1], result.episodes)
    return {k: metrics[k] for k in ("method", "success_rate", "episodes", "ci95", "mean_length")}

