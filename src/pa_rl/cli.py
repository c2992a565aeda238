"""The ``pa-rl`` command: data sets, training, evaluation and plots."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pa_rl.runs import RunConfig

DESCRIPTION = """Policy-agnostic RL (PA-RL): offline RL and online fine-tuning of any policy class.

commands:
  pa-rl data list                     built-in data set names
  pa-rl data make NAME [--out DIR]    generate a built-in data set (Minari format)
  pa-rl data info NAME|ID|PATH        size, episodes, returns, success of a data set
  pa-rl train [--preset cpu|paper] [OPTIONS]   BC → offline PA-RL → online fine-tuning
  pa-rl train --resume RUN            continue a killed run from its newest checkpoint
  pa-rl eval RUN [--video FILE]       evaluate a saved run
  pa-rl export RUN --out DIR          π̂ (sampling, re-ranking, local steps) as one torch.export program
  pa-rl plot RUN... [--out FILE]      overlay learning curves of runs
"""


def add_trust_env(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-env", action="append", default=[], metavar="MODULE:CALLABLE",
                        help="allow the data set's recorded env to import this entry point (repeatable); "
                             "a data set can run code through it, so only for data sets you trust")


def _data(argv: Sequence[str]) -> None:
    from pa_rl.data import available_datasets, dataset_info, make_dataset
    from pa_rl.data.minari_io import datasets_root

    parser = argparse.ArgumentParser(prog="pa-rl data", description="Built-in and Minari data sets.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="built-in data set names")
    make = sub.add_parser("make", help="generate a built-in data set")
    make.add_argument("name")
    make.add_argument("--out", default=None, help="root folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--size", type=int, default=None, help="transitions (default: per data set, see `data list`)")
    make.add_argument("--overwrite", action="store_true")
    info = sub.add_parser("info", help="statistics of a data set")
    info.add_argument("dataset", help="built-in name, Minari id or dataset directory")
    info.add_argument("--data-dir", default=None, help="root folder holding built-in data sets")
    add_trust_env(info)
    args = parser.parse_args(argv)
    if args.action == "list":
        print("\n".join(available_datasets()))
    elif args.action == "make":
        path = make_dataset(args.name, out_dir=args.out, seed=args.seed, size=args.size, overwrite=args.overwrite)
        print(f"wrote {path}")
    else:
        target = args.dataset
        if target in available_datasets():
            target = str(Path(args.data_dir or datasets_root()) / "pa-rl" / f"{target}-v0")
        for key, value in dataset_info(target, args.trust_env).items():
            if isinstance(value, dict):  # observation keys of a mapping data set: kind, dtype, shape
                print(f"{key:>20}:")
                for name, description in value.items():
                    print(f"{'':>22}{name}: {description}")
            else:
                print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")


def _train(argv: Sequence[str]) -> None:
    import tyro

    from pa_rl.presets import PRESETS
    from pa_rl.runs import RunConfig, RunError, lock_run, read_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    pre.add_argument("--resume", type=Path, default=None)
    add_trust_env(pre)
    known, rest = pre.parse_known_args(argv)
    if known.resume is not None:
        if rest or known.preset:
            others = [*(["--preset", known.preset] if known.preset else []), *rest]
            raise RunError(f"--resume continues a run with its own config.json; drop the other options {others}")
        config, resume = read_config(known.resume), True
    else:
        preset = known.preset or "cpu"
        config = tyro.cli(RunConfig, default=PRESETS[preset](), args=rest, prog="pa-rl train",
                          description=f"Train with PA-RL (defaults shown are preset {preset!r}; "
                                      f"--preset {'|'.join(sorted(PRESETS))} picks another; "
                                      "--resume RUN continues a killed run; --trust-env MODULE:CALLABLE "
                                      "allows a data set's env entry point).")
        resume = False
    created = not config.run_dir.exists()
    with lock_run(config.run_dir):
        if not resume and (config.run_dir / "config.json").exists():
            raise RunError(f"run {config.run_dir} already exists: continue it with --resume {config.run_dir}, pick "
                           "another --name, or delete that folder")
        try:
            _train_locked(config, resume, known.trust_env)
        except BaseException:  # a start that failed before its first checkpoint must not block its name
            if created and not list((config.run_dir / "checkpoints").glob("ckpt-*.pt")):
                shutil.rmtree(config.run_dir, ignore_errors=True)
            raise


def _train_locked(config: RunConfig, resume: bool, trust_env: Sequence[str]) -> None:
    from pa_rl.plotting import plot_runs
    from pa_rl.runs import build_agent, resolve_dataset, run_dataset, save_weights, write_config
    from pa_rl.train import Trainer

    run_dir = config.run_dir
    data = run_dataset(run_dir, trust_env) if resume else resolve_dataset(config, trust_env)
    agent = build_agent(config, data)
    make_env = (lambda: data.make_env(eval_env=True)) if data.records_env else None  # None: BC and offline only
    trainer = Trainer(agent, data.episodes, make_env, config.train, run_dir, resume)
    if not resume:  # only once the agent, buffers and environment are built: a resume replays it
        write_config(config, data)
    print(f"run {run_dir}: {config.policy} policy, {config.agent.objective} critic, {data.dataset_id} "
          f"({data.num_transitions} transitions), device {config.device}", file=sys.stderr)
    result = trainer.run()
    save_weights(agent, run_dir / "checkpoints" / "final.safetensors")
    plot_runs([run_dir], run_dir / "curves.png")
    print(summary_table(result.summary))
    print(f"\nwrote {run_dir}/ (config.json, metrics.csv, tensorboard/, checkpoints/, curves.png, summary.json)")


def summary_table(summary: dict) -> str:
    """Success and return per phase, for the base policy and for PA-RL's action selection; for a run
    without an environment, which measured neither, the critic's calibration on held-out episodes."""
    phases = (("bc", "BC pre-training"), ("offline", "offline PA-RL"), ("online", "online fine-tuning"))
    if summary.get("environment", True):
        rows = ["| after | policy | success | return |", "|---|---|---|---|"]
        for phase, label in phases:
            for mode, mode_label in (("policy", "base policy"), ("deterministic", "base policy, deterministic"),
                                     ("pa_rl", "PA-RL π̂ (argmax)")):
                metrics = summary.get(phase, {})
                if f"eval/{mode}_success" in metrics:
                    rows.append(f"| {label} | {mode_label} | {metrics[f'eval/{mode}_success']:.0%} "
                                f"| {metrics[f'eval/{mode}_return']:.1f} |")
    else:
        rows = ["| after | Q held out | Monte-Carlo return | Q − return | rank corr. |", "|---|---|---|---|---|"]
        for phase, label in phases:
            metrics = summary.get(phase, {})
            if "diag/q_mc_bias" in metrics:
                rows.append(f"| {label} | {metrics['diag/q_mean']:.3g} | {metrics['diag/mc_mean']:.3g} "
                            f"| {metrics['diag/q_mc_bias']:.3g} | {metrics['diag/q_mc_spearman']:.2f} |")
        held_out = "" if len(rows) > 2 else " (nor the calibration: no episodes were held out)"
        rows.append(f"\nno environment: success, return and the critic's ranking by rollout were not "
                    f"measured{held_out}")
    rows.append(f"\nwall clock {summary['wall_clock_s'] / 60:.1f} min, {summary['updates']} updates "
                f"({summary['updates_per_s']:.1f}/s), {summary['env_steps']} online env steps")
    return "\n".join(rows)


def _eval(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="pa-rl eval", description="Evaluate a saved run.")
    parser.add_argument("run", type=Path)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--mode", choices=["argmax", "softmax", "policy", "deterministic"], default="argmax",
                        help="PA-RL action selection (argmax/softmax), one sample of the raw base policy, or its "
                             "deterministic action (classes that define one, e.g. gaussian's tanh(mean))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="override the run's device")
    parser.add_argument("--video", type=Path, default=None, help="write an mp4 of the first episodes here")
    parser.add_argument("--video-episodes", type=int, default=1)
    add_trust_env(parser)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.video_episodes < 1:
        parser.error("--episodes and --video-episodes must be ≥ 1")
    os.environ.setdefault("MUJOCO_GL", "egl")

    from pa_rl.evaluation import evaluate, record_video
    from pa_rl.runs import RunError, load_run

    config, data, agent = load_run(args.run, args.device, args.trust_env)
    if not data.records_env:
        raise RunError(f"run {args.run} was trained on {data.dataset_id}, which records no environment: there is "
                       "none to evaluate in. What the run measured offline (the critic's held-out calibration, "
                       "diag/q_mc_*) is in its metrics.csv and summary.json")
    act = lambda obs: agent.act(obs, args.mode).cpu().numpy()  # noqa: E731
    envs = [data.make_env(eval_env=True) for _ in range(min(args.episodes, 20))]
    seeds = [20_000 + args.seed * 1_000 + i for i in range(args.episodes)]
    result = evaluate(envs, act, seeds, config.train.max_episode_steps)
    print(json.dumps({"run": str(args.run), "mode": args.mode, "episodes": args.episodes, **result}, indent=2))
    if args.video is not None:
        env = data.make_env(eval_env=True, render_mode="rgb_array")
        path = record_video(env, act, seeds[: args.video_episodes], args.video, config.train.max_episode_steps)
        print(f"wrote {path}")


def _export(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="pa-rl export", description=(
        "Write a run's PA-RL policy π̂ (N base-policy samples, top-k by the critic, the local gradient steps, "
        "argmax) as one torch.export program, DIR/policy.pt2, that plain torch loads and calls on one "
        "observation; DIR/export.json describes its input and output. Prints its latency on the device."))
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder to write policy.pt2 and export.json to")
    parser.add_argument("--device", default=None, help="trace and time on this device instead of the run's")
    parser.add_argument("--calls", type=int, default=50, help="timed calls behind the median latency")
    add_trust_env(parser)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be ≥ 1")

    from pa_rl.export import export_agent
    from pa_rl.runs import load_run

    config, _, agent = load_run(args.run, args.device, args.trust_env)
    opt = config.agent.optimizer
    exported = export_agent(agent, args.out, args.calls, source=str(args.run))
    steps = f"{opt.local_steps} local step{'s' * (opt.local_steps != 1)}"
    print(f"wrote {exported.path} ({exported.path.stat().st_size / 2 ** 20:.1f} MiB): {config.policy} policy, "
          f"N={opt.num_samples} samples, top-{opt.top_k}, {steps}, argmax")
    print(f"batch-1 latency on {agent.device}: {exported.latency_ms:.2f} ms (median of {exported.calls} calls "
          "after 10 warm-up calls)")


def _plot(argv: Sequence[str]) -> None:
    from pa_rl.plotting import plot_runs

    parser = argparse.ArgumentParser(prog="pa-rl plot", description="Overlay learning curves of runs.")
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    args = parser.parse_args(argv)
    print(f"wrote {plot_runs(args.runs, args.out)}")


COMMANDS = {"data": _data, "train": _train, "eval": _eval, "export": _export, "plot": _plot}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a note is logged (a caller may have replaced it)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def show_progress_notes() -> None:
    """pa-rl's log notes (the replay buffer's size, resumes, skipped checkpoints) on stderr, once."""
    logger = logging.getLogger("pa_rl")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_progress_notes()
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here rather than in the interpreter's exit-time flush
    except BrokenPipeError:  # the reader stopped reading (`pa-rl --help | head`): nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(DESCRIPTION, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    from pa_rl.checkpoint import CheckpointError
    from pa_rl.data import DataError
    from pa_rl.train import EnvironmentFault, RunError

    try:
        COMMANDS[argv[0]](argv[1:])
    except BrokenPipeError:
        raise
    except (DataError, RunError, CheckpointError, EnvironmentFault, ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as error:  # argparse and tyro report usage errors themselves
        return error.code if isinstance(error.code, int) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
