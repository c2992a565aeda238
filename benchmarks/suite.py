"""The PA-RL benchmark suite: one command runs one cell (task × method × seed) or a grid of them.

Every method runs through the same library code, data, seeds and budgets (the ``cpu`` preset with
batches of ``SUITE_BATCH_SIZE``, every budget overridable); a method is only a change of the run's
config. Each finished cell writes one JSON file to the results folder; a cell whose JSON exists is
skipped, so a killed suite resumes where it stopped (a cell cut mid-run continues from its last
phase checkpoint). A cell that fails prints its traceback at once and the others go on; the suite
then exits non-zero naming it. A cell holds its run folder's lock while it trains: a second suite
started on the same cell is refused that cell, not interleaved with the first.

    python benchmarks/suite.py --tasks pointmaze-umaze --methods main --seeds 0 1 2
    python benchmarks/suite.py --tasks pointmaze-umaze --methods parl-diffusion --seeds 0 --bc-steps 1000
    python benchmarks/suite.py --tasks all --methods main --jobs 2   # two cells at a time (one per core)
    python benchmarks/suite.py --full --jobs 2   # the whole suite: 53 cells per seed (51 on state tasks, 2 on pixels)
    python benchmarks/suite.py --list            # task, method and group names
    python benchmarks/suite.py --tasks pointmaze-umaze pointmaze-umaze-pixels --methods hf   # a tiny Llama (extra hf)

Results: ``benchmarks/results/<task>__<method>__s<seed>.json``; run folders (metrics, checkpoints)
under ``runs/bench/<results folder name>/``. ``python benchmarks/report.py`` turns results into tables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pa_rl.presets import cpu
from pa_rl.runs import RunConfig, build_agent, ensure_dataset, lock_run, resolve_dataset
from pa_rl.train import Trainer, differences, to_jsonable

ROOT = Path(__file__).resolve().parent.parent
STATE_TASKS = ("pointmaze-umaze", "pointmaze-medium", "pointmaze-large",
               "metaworld-push", "metaworld-pick-place", "metaworld-coffee-push")
PIXEL_TASKS = ("pointmaze-umaze-pixels",)  # 64×64 camera, velocity, instruction (pa_rl.data.pointmaze_pixels)
TASKS = STATE_TASKS + PIXEL_TASKS
POLICY_CLASSES = ("diffusion", "token", "gaussian", "flow")
# The suite's 1000 online env steps are fewer than the 2 warm-up episodes of these mazes (600 and 800
# steps), so no online update could happen: they are run offline only, and their online score is n/a.
OFFLINE_ONLY_TASKS = ("pointmaze-medium", "pointmaze-large")
# Half the cpu preset's batch: the critic steps that dominate every cell cost in proportion to it, and
# at 256 the suite would take ≈ 5 h here instead of ≈ 3.5 h. It costs PA-RL online quality
# (BENCHMARKS.md, "v2, reading it"); one batch for every method keeps the comparison fair.
SUITE_BATCH_SIZE = 128
# The hf methods' model: benchmarks/make_tiny_hf.py's 2-layer Llama (hidden 32, random weights from seed 0),
# built on first use into this folder under the data dir (never downloaded). A cell records the folder as
# --hf.model and the base's SHA-256 in its weights, so a resumed cell refuses a rebuilt, different model.
HF_MODEL = Path("hf-models") / "tiny-llama"
# The instruction for tasks whose observation has none (the pixel maze carries this one in every step).
HF_INSTRUCTIONS = {"pointmaze-umaze": "reach the goal at the top-left end of the U"}

ScoreMode = Literal["pa_rl", "policy", "deterministic"]
Tier = Literal["short", "long"]
Configure = Callable[[RunConfig], RunConfig]


@dataclass(frozen=True)
class Method:
    """A method is a policy class, a config change, and which evaluation mode is its score."""

    policy: str
    # "pa_rl" = π̂ (argmax over optimized samples), "policy" = one raw policy sample, "deterministic" = the
    # Gaussian's tanh(mean): how SAC/Cal-QL/IQL implementations (d3rlpy's predict) score that class.
    score_mode: ScoreMode
    configure: Configure
    summary: str
    online: bool = True  # False: no online phase (BC); its online score is reported as n/a


def _agent(config: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(config, agent=dataclasses.replace(config.agent, **changes))


def _train(config: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def _optimizer(config: RunConfig, **changes: Any) -> RunConfig:
    return _agent(config, optimizer=dataclasses.replace(config.agent.optimizer, **changes))


def _rerank_only(config: RunConfig) -> RunConfig:
    """k = N and T = 0: π̂ is the argmax of Q over the policy's N samples (no filter, no local steps)."""
    return _optimizer(config, local_steps=0, top_k=config.agent.optimizer.num_samples)


def _parl(config: RunConfig) -> RunConfig:
    return _agent(config, objective="calql", policy_improvement="distill")


def _bc(config: RunConfig) -> RunConfig:
    return _train(config, offline_steps=0, online_env_steps=0)


def _hf(config: RunConfig) -> RunConfig:
    """The suite's tiny Llama (``HF_MODEL``) with LoRA rank 8 and the task's instruction. Images (the
    pixel maze) go through pa-rl's conv encoder into the LM's state tokens, as for the other classes:
    the same model on both tasks, and the camera at its full 64 × 64 (a tiny Llava would see it resized
    to its CLIP tower's 16 × 16, through a per-image PIL processor on every call)."""
    hf = dataclasses.replace(config.hf, model=str(config.data_dir / HF_MODEL), lora_rank=8,
                             instruction=HF_INSTRUCTIONS.get(config.dataset, config.hf.instruction))
    return dataclasses.replace(config, hf=hf)


def _raw(config: RunConfig) -> RunConfig:
    """Observations not standardised (``standardize_observations`` off), as every cell ran before 0.7.0."""
    return _agent(config, standardize_observations=False)


def _bestofn(config: RunConfig) -> RunConfig:
    """IDQL-style: frozen BC policy, IQL critic, best of N by Q at decision time, never distilled.
    The IQL critic never reads cached policy samples, so the offline sample cache is skipped."""
    config = _rerank_only(_agent(config, objective="iql", policy_improvement="distill"))
    return _train(config, offline_distill_every=0, online_distill_utd=0.0, cache_policy_samples=False)


def _calql_actor(config: RunConfig) -> RunConfig:
    """Cal-QL with a reparameterised tanh-Gaussian actor, one actor step per critic step, scored by its
    deterministic action, set as d3rlpy 2.8.1's ``CalQLConfig()`` defaults where pa-rl has the knob
    (BENCHMARKS.md, "d3rlpy as the reference"): actor and critic start together, with no BC
    pre-training; the conservative weight is 5; one actor draw per state (N = k = 1, T = 0) is the
    backup's next action and the conservative term's policy action at s and at s'. The earlier
    max-of-8 backup (Cal-QL's AntMaze setting) kept the actor at 10–30 % on umaze where d3rlpy's
    reaches 60–90 %. Q is the ensemble's min (clipped double Q) in the actor loss, as in Cal-QL."""
    config = _agent(config, objective="calql", policy_improvement="reparam", cql_alpha=5.0)
    config = _optimizer(config, num_samples=1, top_k=1, local_steps=0, objective="min")
    return _train(config, bc_steps=0)


def _iql_awr(config: RunConfig) -> RunConfig:
    return _train(_agent(config, objective="iql", policy_improvement="awr"), cache_policy_samples=False)


def _chunk(size: int) -> Configure:
    """PA-RL acting in chunks of ``size`` actions, executed open-loop (the Q-chunking backup)."""
    return lambda config: _agent(_parl(config), chunk=size)


def _ablation(local_steps: int | None = None, top_k_all: bool = False, num_samples: int | None = None) -> Configure:
    """PA-RL diffusion with one part of action optimization changed. A changed N keeps the preset's
    k = N / 2 ratio (preset: N 8, k 4)."""
    def configure(config: RunConfig) -> RunConfig:
        config = _parl(config)
        if local_steps is not None:
            config = _optimizer(config, local_steps=local_steps)
        if num_samples is not None:
            config = _optimizer(config, num_samples=num_samples, top_k=max(1, num_samples // 2))
        if top_k_all:
            config = _optimizer(config, top_k=config.agent.optimizer.num_samples)
        return config
    return configure


METHODS: dict[str, Method] = {
    **{f"parl-{cls}": Method(cls, "pa_rl", _parl, f"PA-RL (Cal-QL critic, distillation) with a {cls} policy")
       for cls in POLICY_CLASSES},
    **{f"bc-{cls}": Method(cls, "deterministic" if cls == "gaussian" else "policy", _bc,
                           f"behaviour cloning of a {cls} policy", online=False)
       for cls in POLICY_CLASSES},
    "bc-diffusion-raw": Method("diffusion", "policy", lambda c: _bc(_raw(c)), "observations: behaviour cloning of a "
                               "diffusion policy on raw observations (every cell before 0.7.0)", online=False),
    "parl-diffusion-raw": Method("diffusion", "pa_rl", lambda c: _parl(_raw(c)),
                                 "observations: PA-RL diffusion on raw observations (every cell before 0.7.0)"),
    "bestofn-diffusion": Method("diffusion", "pa_rl", _bestofn,
                                "IDQL-style: frozen BC diffusion policy, IQL critic, best of N by Q"),
    "calql-gaussian": Method("gaussian", "deterministic", _calql_actor,
                             "Cal-QL actor-critic, reparameterised tanh-Gaussian actor"),
    "iql-gaussian": Method("gaussian", "deterministic", _iql_awr, "IQL critic, AWR-extracted tanh-Gaussian policy"),
    "parl-diffusion-global": Method("diffusion", "pa_rl", _ablation(local_steps=0),
                                    "ablation: global only (top-k by Q, no local steps)"),
    "parl-diffusion-local": Method("diffusion", "pa_rl", _ablation(top_k_all=True),
                                   "ablation: local only (no top-k filter, k = N)"),
    "parl-diffusion-chunk4": Method("diffusion", "pa_rl", _chunk(4), "PA-RL diffusion in action chunks of 4"),
    "parl-diffusion-nstep10": Method("diffusion", "pa_rl", lambda c: _agent(_parl(c), n_step=10),
                                     "stability: PA-RL diffusion with 10-step backups"),
    "parl-diffusion-alpha1": Method("diffusion", "pa_rl", lambda c: _agent(_parl(c), cql_alpha=1.0),
                                    "stability: PA-RL diffusion with conservative weight 1"),
    "parl-diffusion-min": Method("diffusion", "pa_rl", lambda c: _optimizer(_parl(c), objective="min"),
                                 "stability: PA-RL diffusion, π̂ ranks by the ensemble's min (pessimistic)"),
    "parl-diffusion-collect-softmax": Method(
        "diffusion", "pa_rl", lambda c: _train(_parl(c), collect_mode="softmax"),
        "stability: PA-RL diffusion collecting online with a softmax(Q) draw among π̂'s candidates"),
    "parl-diffusion-mix90": Method("diffusion", "pa_rl", lambda c: _train(_parl(c), mixing_ratio=0.9),
                                   "stability: PA-RL diffusion with 10 % of online batches from online data"),
    "parl-diffusion-nodistill": Method("diffusion", "pa_rl", lambda c: _train(_parl(c), online_distill_utd=0.0),
                                       "stability: PA-RL diffusion with the policy frozen online (the cpu preset "
                                       "since 0.6.0: parl-diffusion runs the same)"),
    "parl-diffusion-online-distill": Method(
        "diffusion", "pa_rl", lambda c: _train(_parl(c), online_distill_utd=1.0),
        "stability: PA-RL diffusion distilling online (the cpu preset up to 0.5.0, parl-diffusion's cells there)"),
    "parl-diffusion-distill1e-5": Method("diffusion", "pa_rl", lambda c: _agent(_parl(c), distill_lr=1e-5),
                                         "stability: PA-RL diffusion distilling at learning rate 1e-5"),
    "parl-diffusion-mix100": Method("diffusion", "pa_rl", lambda c: _train(_parl(c), mixing_ratio=1.0),
                                    "stability: PA-RL diffusion online with offline batches only (diagnosis)"),
    "parl-diffusion-distill-offline": Method(
        "diffusion", "pa_rl", lambda c: _train(_parl(c), online_distill_states="offline"),
        "stability: PA-RL diffusion distilling online at the batch's offline-data states only"),
    "parl-diffusion-cql-offline": Method(
        "diffusion", "pa_rl", lambda c: _agent(_parl(c), conservative_states="data"),
        "stability: PA-RL diffusion, the conservative term online at the batch's offline-data rows only"),
    "parl-diffusion-act-target": Method("diffusion", "pa_rl", lambda c: _agent(_parl(c), act_critic="target"),
                                        "stability: PA-RL diffusion acting with the target (Polyak) critic"),
    "parl-diffusion-anchor": Method("diffusion", "pa_rl", lambda c: _agent(_parl(c), distill_data_anchor=True),
                                    "stability: PA-RL diffusion distilling with the data set's actions as anchor rows"),
    "parl-diffusion-gate": Method("diffusion", "pa_rl", lambda c: _optimizer(_parl(c), agreement_gate=True),
                                  "stability: PA-RL diffusion, π̂'s argmax only where the critic members agree"),
    **{f"parl-diffusion-n{n}": Method("diffusion", "pa_rl", _ablation(num_samples=n), f"ablation: N = {n}, k = {n // 2}")
       for n in (4, 16, 32)},
    "parl-hf": Method("hf", "pa_rl", lambda c: _parl(_hf(c)),
                      "hf: PA-RL (Cal-QL critic, distillation) with a tiny Llama action-token policy, LoRA 8"),
    "bc-hf": Method("hf", "policy", lambda c: _bc(_hf(c)), "hf: behaviour cloning of a tiny Llama action-token "
                    "policy, LoRA 8", online=False),
}
BASELINES = ("bc-diffusion", "bc-gaussian", "bc-token", "bc-flow", "bestofn-diffusion", "calql-gaussian", "iql-gaussian")
GROUPS: dict[str, tuple[str, ...]] = {
    "main": ("parl-diffusion", "bc-diffusion", "bestofn-diffusion", "calql-gaussian", "iql-gaussian",
             "parl-gaussian", "parl-token"),
    "ablations": ("parl-diffusion", "parl-diffusion-global", "parl-diffusion-local",
                  "parl-diffusion-n4", "parl-diffusion-n16", "parl-diffusion-n32"),
    # Candidate fixes for online collapse, run on umaze seeds by hand (BENCHMARKS.md, stability); not in --full.
    "stability": tuple(m for m in METHODS if METHODS[m].summary.startswith("stability:")),
    # Observations not standardised (every cell before 0.7.0), against bc-/parl-diffusion by hand:
    # BENCHMARKS.md, "Meta-World BC"; not in --full.
    "raw-observations": tuple(m for m in METHODS if METHODS[m].summary.startswith("observations:")),
    # Pretrained-model policies (--policy hf, issue 17's evidence): they need the hf extra (transformers,
    # peft), which --full does not assume, so they run by this group's name, not in --full.
    "hf": tuple(m for m in METHODS if METHODS[m].summary.startswith("hf:")),
    "all": tuple(METHODS),
}
# The whole suite (``--full``): the main comparison on every state task; the other policy classes, their
# BC and the ablations on one task; PA-RL diffusion with and without chunks from pixels (not the stability
# and hf groups).
FULL_SUITE: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (STATE_TASKS, GROUPS["main"]),
    (PIXEL_TASKS, ("parl-diffusion", "parl-diffusion-chunk4")),
    (("pointmaze-umaze",), ("parl-flow", "bc-gaussian", "bc-token", "bc-flow", *GROUPS["ablations"][1:])),
)


@dataclass(frozen=True)
class Budgets:
    """Overrides of the suite's budgets (None = the ``cpu`` preset's value, batches of ``SUITE_BATCH_SIZE``);
    the same for every method."""

    bc_steps: int | None = None
    offline_steps: int | None = None
    online_env_steps: int | None = None
    eval_every: int | None = None
    online_eval_every: int | None = None
    eval_episodes: int | None = None
    batch_size: int | None = None
    max_episode_steps: int | None = None
    warmup_env_steps: int | None = None

    def apply(self, config: RunConfig) -> RunConfig:
        return _train(config, **{k: v for k, v in dataclasses.asdict(self).items() if v is not None})

    def over(self, base: Budgets) -> Budgets:
        """``base`` with this one's values where they are given."""
        return dataclasses.replace(base, **{k: v for k, v in dataclasses.asdict(self).items() if v is not None})


# The long tier (``--tier long``): budgets at which a critic can mature (20k BC and 20k offline updates, 10k online
# env steps, batches of 256, 50 evaluation episodes), on a maze that needs stitching and the Meta-World
# task where BC starts highest, with the methods a user would weigh against each other. Cells of both
# tasks have an online phase. Expect hours per cell here: run it in the background with --stop-by.
LONG_SUITE: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("pointmaze-medium", "metaworld-coffee-push"),
     ("parl-diffusion", "parl-flow", "bc-diffusion", "bestofn-diffusion", "calql-gaussian", "iql-gaussian")),
)
# BC gets 20k updates: 3k left Meta-World's BC far below what 10–20k reach (BENCHMARKS.md, "Meta-World BC").
LONG_BUDGETS = Budgets(bc_steps=20_000, offline_steps=20_000, online_env_steps=10_000, eval_every=2_000,
                       online_eval_every=1_000, eval_episodes=50, batch_size=256)


def expand(names: Sequence[str], known: Sequence[str], groups: dict[str, tuple[str, ...]], what: str) -> list[str]:
    """Names and group names → names, in order, without repeats; unknown names stop with the valid ones."""
    out: list[str] = []
    for name in names:
        members = groups.get(name, (name,))
        for member in members:
            if member not in known:
                raise SystemExit(f"error: unknown {what} {member!r}; valid: {', '.join(known)}"
                                 + (f" (groups: {', '.join(groups)})" if groups else ""))
            if member not in out:
                out.append(member)
    return out


def cell_config(task: str, method_name: str, seed: int, budgets: Budgets, runs_dir: Path,
                data_dir: Path, device: str = "cpu", tier: Tier = "short") -> RunConfig:
    """The preset, the suite's batch, the budgets, then the method's changes (last, so BC's zero budgets win)."""
    method = METHODS[method_name]
    config = dataclasses.replace(cpu(), dataset=task, policy=method.policy, runs_dir=runs_dir, data_dir=data_dir,
                                 name=cell_name(task, method_name, seed), device=device)
    config = budgets.apply(_train(config, batch_size=SUITE_BATCH_SIZE))
    config = _train(config, seed=seed, reward_bias=reward_bias(task), progress=False)
    if not has_online_phase(task, method_name, tier):
        config = _train(config, online_env_steps=0)
    return method.configure(config)


def has_online_phase(task: str, method: str, tier: Tier = "short") -> bool:
    """Whether a cell has an online phase: not for BC methods, nor on ``OFFLINE_ONLY_TASKS`` in the short tier."""
    return METHODS[method].online and (tier == "long" or task not in OFFLINE_ONLY_TASKS)


def reward_bias(task: str) -> float:
    """−1 per step until the goal for every task (the reference code's reward): the mazes record
    a 0/1 reward, so they get a bias of −1; Meta-World data and env already reward success − 1."""
    return 0.0 if task.startswith("metaworld-") else -1.0


def cell_name(task: str, method: str, seed: int) -> str:
    return f"{task}__{method}__s{seed}"


def ensure_hf_model(config: RunConfig) -> None:
    """Build the tiny model an hf cell names (``HF_MODEL``) if its folder is missing: into a temporary
    folder, then renamed, so a killed build leaves no half-written model and racing builds keep one."""
    if config.policy != "hf" or Path(config.hf.model).exists():
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import make_tiny_hf

    target = Path(config.hf.model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny_hf.make_text_model(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process built it first
        shutil.rmtree(tmp)


def reset_peak_rss() -> None:
    """Start this process's peak resident memory (VmHWM) afresh, so it reads one cell's peak (Linux ≥ 4.0;
    elsewhere the peak stays the process's so far)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: str) -> dict[str, float | None]:
    """Peak resident memory of this process since ``reset_peak_rss`` (None where /proc is missing), and
    the peak CUDA memory torch allocated on a CUDA run."""
    try:
        rss = float(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        rss = None
    cuda = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"peak_rss_mb": rss, "peak_cuda_mb": cuda}


def machine(device: str) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else None
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device, "gpu": gpu}


def score(summary: dict[str, Any], phase: str, mode: ScoreMode) -> float | None:
    value = summary.get(phase, {}).get(f"eval/{mode}_success")
    return None if value is None else float(value)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored config that define the experiment (not where its files went)."""
    return {k: v for k, v in config.items() if k not in ("runs_dir", "data_dir", "name")}


def run_cell(task: str, method_name: str, seed: int, budgets: Budgets, results: Path, runs_dir: Path,
             data_dir: Path, command: str, device: str = "cpu", tag: str = "", tier: Tier = "short") -> Path:
    """Train one cell and write its JSON atomically; an existing JSON with the same config is kept.
    ``tag`` (e.g. "[3/21]") starts each line it prints, whole, so parallel cells' lines stay apart."""
    tag = f"{tag} " if tag else ""
    method = METHODS[method_name]
    config = cell_config(task, method_name, seed, budgets, runs_dir, data_dir, device, tier)
    out = results / f"{config.name}.json"
    if out.exists():
        stored = json.loads(out.read_text())["config"]
        changed = differences(comparable(stored), comparable(to_jsonable(config)))
        if changed:
            raise SystemExit(f"error: {out} was run with another config ({'; '.join(changed[:4])}); "
                             "use another --results folder or delete it")
        print(f"{tag}skip {config.name}: {out} exists", flush=True)
        return out
    run_dir = config.run_dir
    with lock_run(run_dir):  # a second suite running this cell is refused, not interleaved with this one
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
        if not resume:  # a cell killed before its first checkpoint: start it again
            for stale in run_dir.iterdir():
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.name != ".lock":
                    stale.unlink()
        print(f"{tag}{clock()} start {config.name}{' (resuming)' if resume else ''}: {method.summary}", flush=True)
        ensure_hf_model(config)
        reset_peak_rss()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        data = resolve_dataset(config)
        agent = build_agent(config, data)
        trainer = Trainer(agent, data.episodes, lambda: data.make_env(eval_env=True), config.train, run_dir, resume)
        earlier = trainer.progress.elapsed_s  # a resumed cell's training before this session: part of its cost
        result = trainer.run()
        wall = time.perf_counter() - start + earlier
    summary = result.summary
    offline_phase = "offline" if config.train.offline_steps else "bc"
    offline = score(summary, offline_phase, method.score_mode)
    has_online = has_online_phase(task, method_name, tier)
    payload = {
        "task": task, "method": method_name, "seed": seed, "tier": tier, "policy": method.policy,
        "score_mode": method.score_mode, "description": method.summary,
        "offline_score": offline,
        "online_score": score(summary, "online", method.score_mode) if has_online else None,
        "online_score_note": None if has_online else ("no online phase (BC only): n/a" if not method.online
                                                      else "no online phase on this task: n/a"),
        "bc_score": score(summary, "bc", "policy" if method.score_mode == "pa_rl" else method.score_mode),
        "online_env_steps": summary.get("env_steps", 0),
        "wall_clock_s": wall, "train_wall_clock_s": summary.get("wall_clock_s"), **peak_memory_mb(device),
        "updates": summary.get("updates"), "updates_per_s": summary.get("updates_per_s"),
        "summary": summary, "evaluations": result.evaluations,
        "dataset": {"id": data.dataset_id, "path": str(data.path), "transitions": data.num_transitions},
        "config": to_jsonable(config), "machine": machine(device), "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    results.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(out)
    online = "n/a" if payload["online_score"] is None else f"{payload['online_score']:.0%}"
    print(f"{tag}{clock()} done  {config.name}: offline {offline:.0%}, online {online}, {wall:.0f} s "
          f"({payload['updates_per_s']:.1f} updates/s)", flush=True)
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["pointmaze-umaze"], help=f"of {', '.join(TASKS)}, or 'all'")
    parser.add_argument("--methods", nargs="+", default=["main"], help="method or group names (see --list)")
    parser.add_argument("--full", action="store_true",
                        help="the whole suite (main comparison on every task, other classes and ablations on "
                             "umaze), seed by seed; replaces --tasks and --methods")
    parser.add_argument("--tier", choices=["short", "long"], default="short",
                        help="long: the long tier's tasks, methods and budgets (LONG_SUITE, LONG_BUDGETS); budget "
                             "flags still override; replaces --tasks, --methods and --full")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=None,
                        help="where cell JSONs accumulate (default: benchmarks/results, or benchmarks/results-long "
                             "for --tier long, whose cells share the short tier's names)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: runs/bench/<results folder name>")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "datasets", help="where built-in data sets live")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (per job)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run at once, each in its own process (e.g. one per core with --threads 1)")
    parser.add_argument("--stop-by", type=next_utc_time, default=None, metavar="HH:MM",
                        help="UTC; do not start a cell expected (from this method's finished cells) to end later")
    parser.add_argument("--list", action="store_true", help="print tasks, methods and groups, and exit")
    for field in dataclasses.fields(Budgets):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=None,
                            help=f"override the suite's value (the cpu preset's; batch {SUITE_BATCH_SIZE})")
    args = parser.parse_args(argv)
    args.results = args.results or ROOT / "benchmarks" / ("results-long" if args.tier == "long" else "results")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.list:
        print("tasks:", ", ".join(TASKS))
        for name, method in METHODS.items():
            print(f"  {name:24s} {method.summary} (score: {method.score_mode})")
        for name, members in GROUPS.items():
            print(f"group {name}: {', '.join(members)}")
        for tasks, methods in FULL_SUITE:
            print(f"--full runs {', '.join(methods)} on {', '.join(tasks)}")
        for tasks, methods in LONG_SUITE:
            print(f"--tier long runs {', '.join(methods)} on {', '.join(tasks)} with {LONG_BUDGETS}")
        print(f"offline only (online score n/a): {', '.join(OFFLINE_ONLY_TASKS)}")
        return
    plan = LONG_SUITE if args.tier == "long" else FULL_SUITE if args.full else (
        (tuple(expand(args.tasks, TASKS, {"all": TASKS}, "task")),
         tuple(expand(args.methods, list(METHODS), GROUPS, "method"))),)
    torch.set_num_threads(args.threads)
    budgets = Budgets(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Budgets)})
    if args.tier == "long":
        budgets = budgets.over(LONG_BUDGETS)
    runs_dir = args.runs_dir or ROOT / "runs" / "bench" / args.results.name
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(
        ["python", "benchmarks/suite.py", *argv])
    cells = [(task, method, seed) for seed in args.seeds for tasks, methods in plan
             for task in tasks for method in methods]
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be at least 1, got {args.jobs}")
    if args.jobs > 1:  # make missing data sets here, once, rather than in racing workers
        for task, method, seed in {task: (task, method, seed) for task, method, seed in cells}.values():
            config = cell_config(task, method, seed, budgets, runs_dir, args.data_dir, tier=args.tier)
            ensure_dataset(config)
            ensure_hf_model(config)
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch or CUDA state
    failed: list[str] = []
    with ProcessPoolExecutor(args.jobs, context, initializer=torch.set_num_threads, initargs=(args.threads,)) \
            if args.jobs > 1 else contextlib.nullcontext() as pool:
        running: dict[Future[Path], str] = {}

        def settle(return_when: str) -> None:
            """Wait for running cells; report each failure at once, so a failed cell neither hides its error
            until the others end nor holds its slot."""
            finished, _ = wait(running, return_when=return_when)
            for future in finished:
                if future.exception() is not None:
                    failed.append(report_failure(running[future], future.exception()))
                del running[future]

        for index, (task, method, seed) in enumerate(cells, 1):
            if len(running) >= args.jobs:  # wait for a free slot: --stop-by judges a cell when it starts
                settle(FIRST_COMPLETED)
            tag = f"[{index}/{len(cells)}]"
            if args.stop_by is not None and too_late(args.results, task, method, seed, args.device, args.stop_by, tag):
                continue
            cell = (task, method, seed, budgets, args.results, runs_dir, args.data_dir, command, args.device, tag,
                    args.tier)
            if pool is not None:
                running[pool.submit(run_cell, *cell)] = f"{tag} {cell_name(task, method, seed)}"
                continue
            try:
                run_cell(*cell)
            except (Exception, SystemExit) as error:  # the suite goes on, and says so at the end
                failed.append(report_failure(f"{tag} {cell_name(task, method, seed)}", error))
        settle(ALL_COMPLETED)
    if failed:
        raise SystemExit(f"error: {len(failed)} cell(s) failed (tracebacks above): {', '.join(failed)}")


def report_failure(cell: str, error: BaseException) -> str:
    """Print a failed cell's traceback (a worker's included) now; return the cell's name for the summary."""
    print(f"{cell} {clock()} FAILED:\n{''.join(traceback.format_exception(error)).rstrip()}", file=sys.stderr,
          flush=True)
    return cell.split()[-1]


def too_late(results: Path, task: str, method: str, seed: int, device: str, stop_by: datetime.datetime,
             tag: str) -> bool:
    """Whether an unfinished cell, started now, is expected to end after ``stop_by`` (then says so)."""
    name = cell_name(task, method, seed)
    if (results / f"{name}.json").exists():
        return False  # finished: run_cell only skips it
    expected = expected_seconds(results, task, method, device)
    if datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=expected) <= stop_by:
        return False
    print(f"{tag} {clock()} not started {name}: it would end after {stop_by:%H:%M} UTC "
          f"(expected {expected:.0f} s from finished cells)", flush=True)
    return True


def clock() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}"


def expected_seconds(results: Path, task: str, method: str, device: str = "cpu") -> float:
    """The longest wall clock of this method's finished cells on this task (any seed); without one,
    of the finished cells on this task with the same policy class and phases (BC or not); without
    those, of this method's cells on any task; 0 if none at all. Only cells run on ``device`` count
    (a GPU cell's time says nothing about a CPU run's)."""
    cells = (json.loads(p.read_text()) for p in results.glob("*.json"))
    finished = [r for r in cells if r.get("machine", {}).get("device", "cpu") == device]
    kind = (METHODS[method].policy, METHODS[method].online)
    here = [r for r in finished if r["task"] == task]
    same = [r["wall_clock_s"] for r in here if r["method"] == method]
    similar = [r["wall_clock_s"] for r in here
               if r["method"] in METHODS and (METHODS[r["method"]].policy, METHODS[r["method"]].online) == kind]
    elsewhere = [r["wall_clock_s"] for r in finished if r["method"] == method]
    return max(same or similar or elsewhere, default=0.0)


def next_utc_time(text: str) -> datetime.datetime:
    """HH:MM (UTC) → its next occurrence (tomorrow's if today's has passed); an argparse type for --stop-by."""
    try:
        hour, minute = (int(part) for part in text.split(":"))
        now = datetime.datetime.now(datetime.timezone.utc)
        when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected HH:MM (UTC), got {text!r}") from error
    return when if when > now else when + datetime.timedelta(days=1)


if __name__ == "__main__":
    main()
