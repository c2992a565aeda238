"""Named starting configurations for ``pa-rl train --preset NAME``; any option still overrides them."""

from __future__ import annotations

from collections.abc import Callable

from pa_rl.agent import AgentConfig
from pa_rl.critic import CriticConfig
from pa_rl.optimize import OptimizerConfig
from pa_rl.policies import DiffusionConfig, FlowConfig, TokenConfig
from pa_rl.runs import RunConfig
from pa_rl.train import TrainConfig


def paper() -> RunConfig:
    """The reference code's settings and budgets (state-based tasks); sized for a GPU, not this CPU."""
    return RunConfig(train=TrainConfig(bc_steps=1_000_000, offline_steps=1_000_000, online_env_steps=1_000_000,
                                       eval_every=50_000, online_eval_every=50_000))


def cpu() -> RunConfig:
    """A 2-core-CPU budget: 8 samples, top 4, one local step, two critics, a slimmer denoiser, short
    phases (3k BC updates, 1k offline updates, 1k online env steps, evaluations of 50 episodes every
    500 updates or env steps). Batches stay at 256: at 128 online fine-tuning lost a good umaze
    policy in one of three seeds (and in ablation runs), at 256 in none of three (BENCHMARKS.md);
    the benchmark suite runs 128 to fit its time budget.

    Online, only the critic learns (``online_distill_utd`` 0): π̂ improves through it while the base
    policy stays as offline left it. At these budgets the critic cannot tell the policy's samples
    apart, so distillation would feed the policy its own samples, which a few-step diffusion policy
    shrinks until it fails; with distillation 3 of 9 umaze seeds lost π̂ online (BENCHMARKS.md,
    "Does online fine-tuning keep a good policy?"). Turn it on (1) with a critic that ranks."""
    return RunConfig(
        agent=AgentConfig(cql_alpha=0.1, distill_lr=1e-4, bc_warmup_steps=500,
                          critic=CriticConfig(ensemble_size=2),
                          optimizer=OptimizerConfig(num_samples=8, top_k=4, local_steps=1, step_size=3e-3)),
        diffusion=DiffusionConfig(hidden_dim=128, num_blocks=2, dropout=0.0, time_dim=32),
        flow=FlowConfig(hidden_dim=128, num_blocks=2, dropout=0.0, time_dim=32, steps=5),
        token=TokenConfig(width=64, layers=2, heads=4, dropout=0.0),
        train=TrainConfig(bc_steps=3_000, offline_steps=1_000, online_env_steps=1_000, eval_every=500,
                          online_eval_every=500, online_distill_utd=0.0),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"cpu": cpu, "paper": paper}
