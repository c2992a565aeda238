"""Speed of PA-RL per policy class: one full update, action optimization alone, policy sampling alone.

    python benchmarks/speed.py [--device cpu|cuda] [--policy all] [--config default cpu] [--json out.json]
    python benchmarks/speed.py --obs pixels --config cpu --policy diffusion   # images: encoder share too
    python benchmarks/speed.py --policy hf --hf-model FOLDER --config cpu     # a Hugging Face model (make_tiny_hf.py)
    python benchmarks/speed.py --no-compile                                   # without the torch.compile A/B rows

Configs (policy configs are always the class defaults, e.g. DiffusionConfig()):
  default  AgentConfig() as is = the spec defaults: N = 32 samples, top k = 10, T = 10 local steps,
           critic ensemble E = 10 of (256, 256) LayerNorm MLPs, scalar head, Cal-QL.
  cpu      the `cpu` preset of `pa-rl train` (pa_rl.presets.cpu): N = 8, k = 4, T = 1, E = 2 critics
           of (256, 256), and its slimmer policy configs (e.g. a 2 × 128 denoiser).

Rows, on random Meta-World-sized data (obs 39, action 4 in [-1, 1]) with B = --batch-size states:
  update    agent.update(batch, distill=True): action optimization on s and s' (2B states in one
            call), the Cal-QL critic step, the Polyak update and one distillation step.
  cached    agent.update(batch) with the policy's samples for s and s' already in the batch, as in
            the offline phase (TrainConfig.cache_policy_samples): the update minus its sampling.
  optimize  agent.optimize_actions(obs) on B states (sampling + top-k + T gradient steps).
  sample    B × N policy samples (pa_rl.optimize.sample_actions: eval mode, no autograd).
  bc        agent.bc_update(batch): one behaviour-cloning step of the policy.
The hf policy (a pretrained model, LoRA 8 by HFConfig's defaults) needs --hf-model, a folder or Hub id;
``--policy all`` includes it only then.
With --obs pixels the observations are pointmaze-umaze-pixels' (uint8 64×64×3 camera, 2-d velocity,
64-byte instruction; 2-d actions), and each row also says how much of its GFLOP runs in the forward
passes of the encoders (policy's, critic's, target critic's) and how many ms those take.
By default (--no-compile skips it) each row that runs the critic (update, cached, optimize) is measured twice in one
loop, alternating call by call: the agent as configured and a copy with the same weights and
``compile_critic=True`` (rows "<step> compiled", with the speed-up over the row above); load drift then
hits both sides alike. The compiled side's compilation happens in its warm-up calls, not in the times.
Times are medians over --repeats calls after --warmup calls. FLOPs are counted by
torch.utils.flop_counter.FlopCounterMode over one call (forward and backward); it counts matmuls
(mm/addmm/bmm/baddbmm) and known attention kernels, not elementwise ops or norms, and not the CPU
attention kernel (a few positions here: negligible). "of mm" = achieved GFLOP/s / the GFLOP/s of an
fp32 2048 × 2048 matmul timed in the same process just before that row (so load drift shows).
Run on an otherwise idle machine: with other busy processes on the cores, multi-threaded torch ops
stall at every barrier (seen here: a 2-thread step 30× slower); a low matmul column gives it away.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pa_rl.agent import Agent
from pa_rl.buffer import Batch
from pa_rl.observations import TEXT_LENGTH, Field
from pa_rl.optimize import sample_actions
from pa_rl.policies import POLICIES, make_policy
from pa_rl.presets import cpu as cpu_preset
from pa_rl.runs import RunConfig

CONFIGS: dict[str, RunConfig] = {"default": RunConfig(), "cpu": cpu_preset()}


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _NoModuleTracking:
    """FlopCounterMode's per-module tracker hooks break ``autograd.grad`` on leaf inputs (as in the
    local steps; pytorch/pytorch#131753); only the global total is needed, so it is switched off."""

    parents: ClassVar[frozenset[str]] = frozenset({"Global"})

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def paired_median_seconds(fns: tuple[Callable[[], object], Callable[[], object]], device: torch.device,
                          warmup: int, repeats: int) -> tuple[float, float]:
    """Medians of two calls timed alternately (A, B, A, B, …), so that load drift hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in fns:  # ≥ 3: a compiled call recompiles once for shapes it has seen twice (dynamic shapes)
        median_seconds(fn, device, max(warmup, 3), 1)
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            out.append(median_seconds(fn, device, 0, 1))
    return statistics.median(times[0]), statistics.median(times[1])


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()  # type: ignore[assignment]
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_gflops(device: torch.device, size: int = 2048) -> float:
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size ** 3 / median_seconds(lambda: a @ b, device, warmup=3, repeats=10) / 1e9


PIXELS = {"pixels": Field("image", (64, 64, 3)), "velocity": Field("vector", (2,)),
          "instruction": Field("text", (TEXT_LENGTH,))}


def random_obs(size: int, spec: int | dict[str, Field], device: torch.device) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(spec, int):
        return torch.randn(size, spec, device=device)
    return {key: torch.randn(size, *f.shape, device=device) if f.kind == "vector"
            else torch.randint(0, 256, (size, *f.shape), dtype=torch.uint8, device=device) for key, f in spec.items()}


def random_batch(size: int, spec: int | dict[str, Field], action_dim: int, device: torch.device) -> Batch:
    return Batch(obs=random_obs(size, spec, device),
                 actions=torch.rand(size, action_dim, device=device) * 2 - 1,
                 rewards=-(torch.rand(size, device=device) < 0.9).float(),
                 next_obs=random_obs(size, spec, device),
                 terminals=(torch.rand(size, device=device) < 0.05).float(),
                 mc_returns=-100 * torch.rand(size, device=device), discounts=torch.full((size,), 0.99, device=device))


def machine(device: torch.device) -> dict[str, str | int]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, str | int] = {"cpu": cpu, "cores": os.cpu_count() or 0, "threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "device": str(device), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bench_policy(name: str, config_name: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, str | float]]:
    """The three rows of one policy class, each next to a matmul baseline measured just before."""
    torch.manual_seed(0)
    run = CONFIGS[config_name]
    cfg = run.agent
    spec, action_dim = (PIXELS, 2) if args.obs == "pixels" else (args.obs_dim, args.action_dim)
    low, high = -np.ones(action_dim, np.float32), np.ones(action_dim, np.float32)
    policy_config = replace(run.hf, model=args.hf_model) if name == "hf" else getattr(run, name)
    agent = Agent(make_policy(name, spec, low, high, policy_config), spec, low, high, cfg, device)
    batch = random_batch(args.batch_size, spec, action_dim, device)
    cached = replace(batch, policy_samples=agent.sample_policy(batch.obs),
                     next_policy_samples=agent.sample_policy(batch.next_obs))

    def calls(agent: Agent) -> dict[str, Callable[[], object]]:
        return {
            "update": lambda: agent.update(batch, distill=True),
            "cached": lambda: agent.update(cached),
            "optimize": lambda: agent.optimize_actions(batch.obs),
            "sample": lambda: sample_actions(agent.policy, batch.obs, cfg.optimizer.num_samples),
            "bc": lambda: agent.bc_update(batch),
        }

    twin_calls: dict[str, Callable[[], object]] = {}
    if args.compile:  # the same weights, the critic compiled: the B side of each row that runs the critic
        twin = Agent(make_policy(name, spec, low, high, policy_config), spec, low, high,
                     replace(cfg, compile_critic=True), device)
        twin.load_state_dict(agent.state_dict())
        twin_calls = {step: fn for step, fn in calls(twin).items() if step in ("update", "cached", "optimize")}
    encoders = [m for m in (agent.policy.encoder, agent.critic.encoder, agent.target_critic.encoder)
                if args.obs == "pixels"]
    rows = []
    for step, fn in calls(agent).items():
        flops = count_flops(fn)
        matmul = matmul_gflops(device)
        compiled = step in twin_calls
        if compiled:
            seconds, twin_seconds = paired_median_seconds((fn, twin_calls[step]), device, args.warmup, args.repeats)
        else:
            seconds = median_seconds(fn, device, args.warmup, args.repeats)
        row = {"config": config_name, "policy": name, "step": step, "ms": 1e3 * seconds, "per_s": 1 / seconds,
               "gflop": flops / 1e9, "gflop_s": flops / seconds / 1e9, "matmul_gflop_s": matmul,
               "of_matmul": flops / seconds / 1e9 / matmul}
        if encoders:
            encoder_flops, encoder_seconds = inside_encoders(fn, encoders, device)
            row |= {"encoder_gflop_share": encoder_flops / flops if flops else 0.0,
                    "encoder_forward_ms": 1e3 * encoder_seconds}
        rows.append(row)
        if compiled:
            rows.append({**row, "step": f"{step} compiled", "ms": 1e3 * twin_seconds, "per_s": 1 / twin_seconds,
                         "gflop_s": flops / twin_seconds / 1e9, "of_matmul": flops / twin_seconds / 1e9 / matmul,
                         "speedup": seconds / twin_seconds})
    return rows


def inside_encoders(fn: Callable[[], object], encoders: list[torch.nn.Module], device: torch.device
                    ) -> tuple[int, float]:
    """FLOPs and wall clock of the encoders' forward passes during one call of ``fn`` (their backward
    passes are in the row's total, not here)."""
    flops, seconds, open_counters = [0], [0.0], []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def before(*_: object) -> None:
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _NoModuleTracking()  # type: ignore[assignment]
        sync()
        open_counters.append((counter, time.perf_counter()))
        counter.__enter__()

    def after(*_: object) -> None:
        counter, start = open_counters.pop()
        sync()
        seconds[0] += time.perf_counter() - start
        counter.__exit__(None, None, None)
        flops[0] += counter.get_total_flops()

    handles = [h for m in encoders for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return flops[0], seconds[0]


def markdown(rows: list[dict[str, str | float]]) -> str:
    images = "encoder_gflop_share" in rows[0]
    compiled = any("speedup" in r for r in rows)
    lines = ["| config | policy | step | ms | calls/s | GFLOP | GFLOP/s | matmul GFLOP/s | of mm |"
             + (" encoders' GFLOP | encoders' forward ms |" if images else "") + (" speed-up |" if compiled else ""),
             "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if images else "")
             + ("---:|" if compiled else "")]
    lines += [f"| {r['config']} | {r['policy']} | {r['step']} | {r['ms']:.1f} | {r['per_s']:.2f} | {r['gflop']:.2f} "
              f"| {r['gflop_s']:.1f} | {r['matmul_gflop_s']:.1f} | {100 * r['of_matmul']:.0f} % |"
              + (f" {100 * r['encoder_gflop_share']:.0f} % | {r['encoder_forward_ms']:.1f} |" if images else "")
              + ((f" {r['speedup']:.2f}× |" if "speedup" in r else " |") if compiled else "")
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--policy", choices=[*POLICIES, "all"], default="all")
    parser.add_argument("--config", choices=list(CONFIGS), nargs="+", default=["default"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--obs-dim", type=int, default=39)
    parser.add_argument("--action-dim", type=int, default=4)
    parser.add_argument("--obs", choices=["vector", "pixels"], default="vector",
                        help="vector: --obs-dim floats; pixels: pointmaze-umaze-pixels' observations")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write machine info and rows to this path")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="A/B: also time update, cached and optimize with the critic torch.compile'd "
                             "(compiling adds seconds to minutes per policy and config)")
    parser.add_argument("--hf-model", default="", help="the hf policy's model: a folder or Hub id (--hf.model)")
    args = parser.parse_args()
    if args.policy == "hf" and not args.hf_model:
        parser.error("--policy hf needs --hf-model FOLDER_OR_HUB_ID (benchmarks/make_tiny_hf.py builds one)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine(device)
    print(" | ".join(f"{k}: {v}" for k, v in info.items()) + "\n", flush=True)
    policies = [p for p in POLICIES if p != "hf" or args.hf_model] if args.policy == "all" else [args.policy]
    rows = []
    for config_name in args.config:
        for name in policies:
            policy_rows = bench_policy(name, config_name, args, device)
            rows += policy_rows
            print(markdown(policy_rows).split("\n", 2)[2], flush=True)  # progress: this policy's rows
    print("\n" + markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
