"""Images, language and action chunks through the whole loop: encoders run once per state, every
class trains on mapping observations and chunks, and the CLI runs the pixel maze end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL_POLICY_CONFIGS, PixelPointGoal, pixel_episodes
from torch import nn

from pa_rl import Agent, AgentConfig, CriticConfig, EncoderConfig, OptimizerConfig, TrainConfig, make_policy, train
from pa_rl.buffer import ReplayBuffer
from pa_rl.cli import main
from pa_rl.data.episodes import DataError, check_episodes
from pa_rl.observations import SpecObservation, spec_of_space

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)
SPEC = spec_of_space(PixelPointGoal().observation_space)
SMALL_ENCODER = EncoderConfig(conv_channels=8, image_features=16, text_features=8)


def small_agent(policy: nn.Module, chunk: int = 1, samples: int = 6, members: int = 2) -> Agent:
    config = AgentConfig(chunk=chunk, cql_alpha=0.1, bc_warmup_steps=10, encoder=SMALL_ENCODER,
                         critic=CriticConfig(ensemble_size=members, hidden_dims=(32, 32)),
                         optimizer=OptimizerConfig(num_samples=samples, top_k=3, local_steps=2, step_size=3e-3))
    return Agent(policy, SPEC, LOW, HIGH, config)


def built_in(name: str, chunk: int = 1) -> nn.Module:
    config = SMALL_POLICY_CONFIGS[name]
    config.encoder = SMALL_ENCODER
    return make_policy(name, SPEC, LOW, HIGH, config, chunk)


def count_rows(module: nn.Module) -> list[int]:
    """Rows (states) that pass through ``module`` per call."""
    rows: list[int] = []
    module.register_forward_hook(lambda _m, inputs, _out: rows.append(len(next(iter(inputs[0].values())))))
    return rows


@pytest.mark.parametrize("samples, members", [(4, 2), (16, 5)])
def test_each_state_goes_through_each_encoder_once_per_update(samples: int, members: int) -> None:
    """However many actions are sampled, kept and refined per state, and however many critics: the critic's
    encoder sees s and s' once for the action optimizer and s once for its loss; the policy's encoder sees
    s and s' once to sample (not once per sample) and s once for distillation."""
    torch.manual_seed(0)
    agent = small_agent(built_in("diffusion", chunk=2), chunk=2, samples=samples, members=members)
    buffer = ReplayBuffer.from_episodes(pixel_episodes(4, 0), 0.99, horizon=2, chunk=2, obs_spec=SPEC)
    batch = buffer.sample(16, torch.Generator().manual_seed(0))
    critic_rows, policy_rows = count_rows(agent.critic.encoder), count_rows(agent.policy.encoder)
    target_rows = count_rows(agent.target_critic.encoder)
    agent.update(batch, distill=True)
    assert sorted(critic_rows) == [16, 32] and target_rows == [16]
    assert sorted(policy_rows) == [16, 32]


class PixelChunkPolicy(nn.Module):
    """A user's class for images and chunks, knowing nothing of pa-rl: its own conv net, one categorical
    head per step of the chunk over a grid of 2-d actions."""

    def __init__(self, chunk: int, points: int = 7) -> None:
        super().__init__()
        axis = torch.linspace(-1, 1, points)
        self.register_buffer("grid", torch.cartesian_prod(axis, axis))
        self.chunk = chunk
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.LazyLinear(64), nn.ReLU(),
                                 nn.Linear(64, chunk * len(self.grid)))

    def logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs["pixels"].permute(0, 3, 1, 2).float() / 255
        return self.net(x).view(len(x), self.chunk, len(self.grid))

    def sample(self, obs: dict[str, torch.Tensor], num_samples: int) -> torch.Tensor:
        probs = self.logits(obs).softmax(-1)  # [B, H, G]
        index = torch.multinomial(probs.flatten(0, 1), num_samples, replacement=True)  # [B·H, N]
        return self.grid[index].view(len(probs), self.chunk, num_samples, 2).transpose(1, 2)  # [B, N, H, 2]

    def loss(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(actions, self.grid.expand(len(actions), -1, -1)).argmin(-1)  # [B, H]
        return F.cross_entropy(self.logits(obs).flatten(0, 1), nearest.flatten())


def test_a_user_class_trains_on_images_language_and_chunks_through_the_python_api(tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy = PixelChunkPolicy(chunk=3)
    policy.logits({"pixels": torch.zeros(1, 12, 12, 3, dtype=torch.uint8)})  # materialise the lazy layer
    agent = small_agent(policy, chunk=3)
    config = TrainConfig(batch_size=32, bc_steps=150, offline_steps=30, online_env_steps=60, eval_every=1000,
                         eval_episodes=4, diagnostic_pairs=2, log_every=5, progress=False, online_buffer_size=500)
    result = train(agent, pixel_episodes(40, 0), PixelPointGoal, config, tmp_path / "run")  # raw Dict/Text env
    assert {"bc", "offline", "online"} <= set(result.summary)
    assert 0 <= result.summary["online"]["eval/pa_rl_success"] <= 1
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert {"diag/q_mc_spearman", "distill/loss", "critic/td_loss"} <= {row["metric"] for row in rows}
    bc_losses = [float(row["value"]) for row in rows if row["metric"] == "bc/loss"]
    assert np.mean(bc_losses[-5:]) < np.mean(bc_losses[:5])
    chunk = agent.act(SpecObservation(PixelPointGoal()).reset(seed=0)[0])  # one observation, as the env gives it
    assert chunk.shape == (3, 2)


@pytest.mark.parametrize("name", ["diffusion", "flow", "gaussian", "token"])
def test_every_built_in_class_learns_from_images_in_chunks(name: str) -> None:
    torch.manual_seed(0)
    agent = small_agent(built_in(name, chunk=2), chunk=2)
    buffer = ReplayBuffer.from_episodes(pixel_episodes(20, 1), 0.99, horizon=2, chunk=2, obs_spec=SPEC)
    generator = torch.Generator().manual_seed(0)
    losses = [agent.bc_update(buffer.sample(64, generator))["bc/loss"].item() for _ in range(60)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    metrics = agent.update(buffer.sample(32, generator), distill=True)
    assert all(torch.isfinite(v) for v in metrics.values())
    batch = {key: torch.as_tensor(value[:5]) for key, value in pixel_episodes(1, 2)[0].observations.items()}
    for mode in ("argmax", "policy"):
        actions = agent.act(batch, mode)
        assert actions.shape == (5, 2, 2) and (actions.abs() <= 1).all()


def test_a_chunk_longer_than_every_episode_is_refused() -> None:
    episodes = pixel_episodes(3, 0)
    longest = max(len(e) for e in episodes)
    check_episodes(episodes, SPEC, LOW, HIGH, chunk=longest)
    with pytest.raises(DataError, match=f"chunks of {longest + 1} steps .* longer than every episode"):
        check_episodes(episodes, SPEC, LOW, HIGH, chunk=longest + 1)
    wrong = [e for e in episodes]
    wrong[1] = type(wrong[1])({**wrong[1].observations, "pixels": wrong[1].observations["pixels"][:, :8]},
                              *(getattr(wrong[1], f) for f in ("actions", "rewards", "terminations", "truncations")))
    with pytest.raises(DataError, match=r"episode 1: observation key 'pixels' holds uint8 \(8, 12, 3\)"):
        check_episodes(wrong, SPEC, LOW, HIGH)


def test_the_pixel_maze_trains_in_chunks_and_evaluates_through_the_cli(tmp_path: Path, monkeypatch,
                                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    assert main(["data", "make", "pointmaze-umaze-pixels", "--size", "1500", "--out", "datasets"]) == 0
    assert main(["data", "info", "pointmaze-umaze-pixels", "--data-dir", "datasets"]) == 0
    assert "pixels: image uint8 (64, 64, 3)" in capsys.readouterr().out
    tiny = ["--train.bc-steps", "10", "--train.offline-steps", "10", "--train.online-env-steps", "40",
            "--train.eval-episodes", "2", "--train.diagnostic-pairs", "1", "--train.batch-size", "16",
            "--train.max-episode-steps", "30", "--train.online-buffer-size", "2000", "--train.no-progress",
            "--diffusion.hidden-dim", "32", "--agent.critic.hidden-dims", "32", "32", "--agent.chunk", "4",
            "--agent.encoder.conv-channels", "8", "--diffusion.encoder.conv-channels", "8"]
    args = ["train", "--dataset", "pointmaze-umaze-pixels", "--data-dir", "datasets", "--policy", "diffusion",
            "--name", "pixels", *tiny]
    assert main(args) == 0
    assert "online replay buffer: 80 slots × 12,413 bytes" in capsys.readouterr().err  # said before allocating
    run = tmp_path / "runs" / "pixels"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_steps"] == 40 and (run / "curves.png").is_file()
    assert main(["eval", str(run), "--episodes", "2", "--video", str(tmp_path / "ep.mp4")]) == 0
    assert (tmp_path / "ep.mp4").stat().st_size > 1000
    # A chunk longer than every episode: exit 2, one message, no run folder.
    assert main([*args[:-len(tiny)], *tiny, "--name", "too-long", "--agent.chunk", "5000"]) == 2
    assert "longer than every episode" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "too-long").exists()


def test_the_resnet18_encoder_has_torchvisions_layout_and_loads_its_state_dicts(tmp_path: Path) -> None:
    """Written here (torchvision's PyPI wheel cannot load its ops next to the CPU torch), with torchvision's
    parameter names and count, so a torchvision resnet18 state dict (BatchNorm statistics, classifier and
    all) loads from a local file."""
    from pa_rl.encoders import ImageEncoder, ResNet18
    from pa_rl.observations import Field

    trunk = ResNet18()
    assert sum(p.numel() for p in trunk.parameters()) == 11_689_512 - 513_000  # torchvision's, less its fc layer
    state = {k: torch.randn_like(v) for k, v in trunk.state_dict().items()}
    torchvision_like = dict(state, **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000),
                                      "bn1.running_mean": torch.zeros(64), "bn1.num_batches_tracked": torch.tensor(0)})
    torch.save(torchvision_like, tmp_path / "resnet18.pt")
    encoder = ImageEncoder(Field("image", (64, 64, 3)), EncoderConfig(image="resnet18",
                                                                      resnet_weights=tmp_path / "resnet18.pt"))
    assert all(torch.equal(encoder.trunk.state_dict()[k], v) for k, v in state.items())
    encoder.eval()
    assert encoder(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)).shape == (2, 64)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a resnet18 state dict"):
        ResNet18(weights=tmp_path / "other.pt")
