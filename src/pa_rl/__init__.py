"""pa-rl: policy-agnostic RL (PA-RL, arXiv 2412.06685) for any policy that can sample and fit actions."""

from pa_rl import envs  # noqa: F401  (registers the bundled environments with gymnasium)
from pa_rl.agent import Agent, AgentConfig
from pa_rl.buffer import Batch, ReplayBuffer
from pa_rl.critic import CriticConfig, QEnsemble
from pa_rl.data.episodes import Episode
from pa_rl.encoders import EncoderConfig
from pa_rl.observations import Field, SpecObservation, spec_of_space
from pa_rl.optimize import ActionOptimizer, Candidates, OptimizerConfig
from pa_rl.policies import (POLICIES, DiffusionConfig, DiffusionPolicy, FlowConfig, FlowPolicy, GaussianConfig,
                            GaussianPolicy, Policy, TokenConfig, TokenPolicy, make_policy)
from pa_rl.train import TrainConfig, TrainResult, train

__version__ = "0.7.0"

__all__ = ["Agent", "AgentConfig", "ActionOptimizer", "Batch", "Candidates", "CriticConfig", "DiffusionConfig",
           "DiffusionPolicy", "EncoderConfig", "Episode", "Field", "FlowConfig", "FlowPolicy", "GaussianConfig", "GaussianPolicy",
           "OptimizerConfig", "POLICIES", "Policy", "QEnsemble", "ReplayBuffer", "SpecObservation", "TokenConfig",
           "TokenPolicy", "TrainConfig", "TrainResult", "make_policy", "spec_of_space", "train"]
