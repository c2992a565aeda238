"""The hf policy on real transformers/peft models built from configs (benchmarks/make_tiny_hf.py) and
loaded by path as `--hf.model` loads them: action bins, constrained batched decoding, the loss, LoRA,
what checkpoints hold, BC → offline → online through the CLI (with a SIGKILL and --resume) and the
Python API, and a vision-language model on images and an instruction."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import INSTRUCTION, PixelPointGoal, kill_at_first_checkpoint, pixel_episodes
from safetensors.torch import load_file

from pa_rl import Agent, AgentConfig, CriticConfig, OptimizerConfig, TrainConfig, make_policy, train
from pa_rl.checkpoint import CheckpointStore, decode
from pa_rl.cli import main
from pa_rl.observations import Field, encode_text, spec_of_space
from pa_rl.policies import HFConfig, HFPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import make_tiny_hf  # noqa: E402

pytest.importorskip("peft")

LOW, HIGH = -np.ones(2, np.float32), np.ones(2, np.float32)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_hf.make_text_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tiny_hf.make_vlm(tmp_path_factory.mktemp("tiny-llava")))


def policy(model: str, spec: object = 2, chunk: int = 1, low: np.ndarray = LOW, high: np.ndarray = HIGH,
           **config: object) -> HFPolicy:
    return make_policy("hf", spec, low, high, HFConfig(model=model, **config), chunk)


def instructions(*texts: str) -> dict[str, torch.Tensor]:
    return {"instruction": torch.tensor(encode_text(list(texts)))}


def test_bins_round_trip_actions_within_half_a_bin(lm: str) -> None:
    low, high = np.array([-2.0, 0.0], np.float32), np.array([1.0, 5.0], np.float32)
    hf = policy(lm, chunk=3, low=low, high=high, bins=64)
    actions = torch.from_numpy(np.random.default_rng(0).uniform(low, high, (500, 3, 2)).astype(np.float32))
    tokens = hf.tokenize(actions)
    assert tokens.shape == (500, 6) and tokens.min() >= 0 and tokens.max() < 64
    half_bin = torch.from_numpy((high - low) / 64 / 2)
    assert ((hf.detokenize(tokens) - actions).abs() <= half_bin + 1e-6).all()


def test_generation_is_constrained_to_action_tokens_and_batched_with_a_kv_cache(lm: str) -> None:
    """Unconstrained, this model (its other tokens' output weights scaled up) puts almost all its mass on
    other tokens; the policy emits action tokens only. The prefix runs once for the B states, then one
    step per token of the H·A chunk, on B·N rows."""
    hf = policy(lm, spec=3, chunk=3)
    with torch.no_grad():
        hf.model.get_output_embeddings().weight[: hf.first_action_id] *= 10
    obs = torch.randn(8, 3)
    embeds, mask, _ = hf._prefix(obs)
    full = hf.model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1].softmax(-1)
    assert full[:, hf.first_action_id:].sum(-1).max() < 0.01
    fed: list[torch.Tensor] = []
    calls: list[tuple[int, ...]] = []
    hf.model.get_input_embeddings().register_forward_hook(lambda _m, inputs, _o: fed.append(inputs[0]))
    hf.model.register_forward_pre_hook(lambda _m, _a, kwargs: calls.append(tuple(kwargs["inputs_embeds"].shape[:2])),
                                       with_kwargs=True)
    actions = hf.sample(obs, 256)
    assert actions.shape == (8, 256, 3, 2)
    assert calls[0] == (8, embeds.shape[1]) and calls[1:] == [(8 * 256, 1)] * 5
    emitted = torch.cat([ids.flatten() for ids in fed[1:]])  # the prompt, then each emitted token fed back
    assert len(emitted) == 5 * 8 * 256 and (emitted >= hf.first_action_id).all()
    assert (emitted < hf.model.get_output_embeddings().weight.shape[0]).all()
    assert torch.equal(hf.detokenize(hf.tokenize(actions)), actions)  # every action is a bin centre
    assert len(hf.tokenize(actions).unique()) > 200  # drawn, not the argmax


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_samples_follow_the_distribution_the_loss_scores(lm: str, temperature: float) -> None:
    """One action dimension, 8 bins: the loss of bin j's centre is −log p(j), and samples come at
    frequencies p(j)^(1/T) (normalised)."""
    hf = policy(lm, spec=2, low=LOW[:1], high=HIGH[:1], bins=8, temperature=temperature)
    obs = torch.tensor([[0.3, -0.7]])
    centres = hf.detokenize(torch.arange(8)[:, None])
    with torch.no_grad():
        probs = torch.stack([torch.exp(-hf.loss(obs, c[None])) for c in centres])
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    expected = probs ** (1 / temperature) / (probs ** (1 / temperature)).sum()
    counts = torch.bincount(hf.tokenize(hf.sample(obs, 20_000)[0]).flatten(), minlength=8)
    assert (counts / 20_000 - expected).abs().max() < 0.015


def test_loss_is_the_token_nll_computed_from_the_model_s_logits(lm: str) -> None:
    """By hand: feed the prompt, the state embeddings and the first i action tokens, take the next
    token's log-probability among the action ids, one forward pass per token."""
    hf = policy(lm, spec=3, chunk=2).eval()
    obs, actions = torch.randn(4, 3), torch.rand(4, 2, 2) * 2 - 1
    tokens = hf.tokenize(actions)
    embeds, mask, _ = hf._prefix(obs)
    embed = hf.model.get_input_embeddings()
    nll = []
    for i in range(4):
        inputs = torch.cat([embeds, embed(tokens[:, :i] + hf.first_action_id)], 1)
        logits = hf.model(inputs_embeds=inputs).logits[:, -1]  # one prompt for all: no padding
        nll.append(-logits[:, -hf.config.bins:].log_softmax(-1).gather(1, tokens[:, i: i + 1]))
    assert hf.loss(obs, actions).item() == pytest.approx(torch.cat(nll).mean().item(), rel=1e-5)


def test_a_left_padded_prompt_scores_as_it_does_alone(lm: str) -> None:
    """Instructions of different lengths share a batch through left padding; positions count real
    tokens, so each row's loss and samples do not depend on what it is batched with."""
    hf = policy(lm, spec={"instruction": Field("text", (64,))}).eval()
    obs = instructions("reach the goal", "pick up the cup and place it on the shelf, then push the block")
    actions = torch.tensor([[0.5, -0.5], [0.1, 0.9]])
    alone = [hf.loss({"instruction": obs["instruction"][i: i + 1]}, actions[i: i + 1]) for i in range(2)]
    assert hf.loss(obs, actions).item() == pytest.approx(torch.stack(alone).mean().item(), rel=1e-5)


def test_gradients_reach_the_adapters_and_the_state_projection_not_the_base(lm: str) -> None:
    hf = policy(lm, spec=3, lora_rank=4)
    hf.loss(torch.randn(16, 3), torch.rand(16, 2) * 2 - 1).backward()
    trainable = {name for name, p in hf.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or name.startswith("state_proj.") for name in trainable)
    assert all(p.grad is None for p in hf.parameters() if not p.requires_grad)
    # LoRA's B starts at zero, so the gradient first reaches B (and A once B has moved).
    assert all(p.grad.abs().sum() > 0 for name, p in hf.named_parameters() if "lora_B" in name or "state_proj" in name)
    assert hf.model.get_input_embeddings().weight.grad is None


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_keeps_the_cache(lm: str) -> None:
    obs, actions = torch.randn(4, 3), torch.rand(4, 2) * 2 - 1
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        hf = policy(lm, spec=3, gradient_checkpointing=checkpointing).train()
        loss = hf.loss(obs, actions)
        loss.backward()
        grads.append((loss.detach(), hf.state_proj.weight.grad))
        assert hf.sample(obs, 3).shape == (4, 3, 2)  # in training mode too: sampling still uses its KV cache
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_behaviour_cloning_loss_falls_on_a_small_task(lm: str) -> None:
    """Actions that depend on the state (a = −x): LoRA and the projection learn them."""
    hf = policy(lm, spec=2, bins=16)
    optim = torch.optim.Adam([p for p in hf.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        obs = torch.rand(64, 2, generator=generator) * 2 - 1
        loss = hf.loss(obs, -obs)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.8, losses[::5]


def test_weights_hold_the_adapters_and_are_refused_on_another_base(lm: str, tmp_path: Path) -> None:
    hf = policy(lm, spec=3)
    state = hf.state_dict()
    assert state.keys() == {"base_sha256", "scaler.low", "scaler.high", "state_proj.weight", "state_proj.bias",
                            "encoder.mean", "encoder.std", "encoder.fitted",  # the state's standardisation
                            *(f"model.{n}" for n, p in hf.model.named_parameters() if p.requires_grad)}
    assert any("lora_A" in key for key in state)
    with torch.no_grad():
        for name, value in hf.named_parameters():
            if value.requires_grad:
                value.add_(0.1 * torch.randn_like(value))
    # A policy rebuilt from the same folder loads the weights (the base from the folder) and samples alike.
    copy = policy(lm, spec=3)
    copy.load_state_dict(hf.state_dict())
    obs = torch.randn(2, 3)
    torch.manual_seed(1)
    expected = hf.sample(obs, 4)
    torch.manual_seed(1)
    assert torch.equal(copy.sample(obs, 4), expected)
    # The same path with other weights in it: refused, naming both hashes.
    other = tmp_path / "other"
    make_tiny_hf.make_text_model(other, seed=1)
    elsewhere = policy(str(other), spec=3)
    state = {**hf.state_dict(), "base_sha256": hf.base_sha256}
    with pytest.raises(ValueError, match=r"trained on a base model .* with SHA-256 [0-9a-f]{64}, but it now loads"):
        elsewhere.load_state_dict(state)


def test_without_lora_every_weight_is_trained_and_saved(lm: str) -> None:
    hf = policy(lm, spec=3, lora_rank=0)
    assert all(p.requires_grad for p in hf.parameters())
    assert {f"model.{name}" for name, _ in hf.model.named_parameters()} <= hf.state_dict().keys()


def test_a_missing_model_or_package_is_one_clear_message(lm: str, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--policy", "hf", "--dataset", "nowhere/x-v0"]) == 2  # the data set fails first
    with pytest.raises(ValueError, match="needs a pretrained model: --hf.model FOLDER_OR_HUB_ID"):
        make_policy("hf", 2, LOW, HIGH)
    monkeypatch.setitem(sys.modules, "peft", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"pip install 'pa-rl\[hf\]'"):
        policy(lm)


TINY = ["--train.bc-steps", "20", "--train.offline-steps", "10", "--train.online-env-steps", "40",
        "--train.eval-episodes", "1", "--train.eval-every", "1000", "--train.warmup-env-steps", "0",
        "--train.diagnostic-pairs", "0", "--train.batch-size", "16", "--train.max-episode-steps", "20",
        "--train.checkpoint-every", "5",
        "--train.no-progress", "--agent.critic.hidden-dims", "32", "32", "--agent.optimizer.num-samples", "4",
        "--agent.optimizer.top-k", "2", "--policy", "hf", "--hf.lora-rank", "8", "--hf.bins", "32"]


def test_cli_trains_bc_offline_online_saves_adapters_only_and_resumes_after_sigkill(
        lm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    assert main(["data", "make", "pointmaze-umaze", "--size", "2000", "--out", "datasets"]) == 0
    args = ["--data-dir", "datasets", *TINY, "--hf.model", lm]
    kill_at_first_checkpoint(["--name", "killed", *args], tmp_path / "runs" / "killed")
    assert main(["train", "--resume", "runs/killed"]) == 0
    assert main(["train", "--name", "whole", *args]) == 0
    killed, whole = tmp_path / "runs" / "killed", tmp_path / "runs" / "whole"
    assert (killed / "metrics.csv").read_text() == (whole / "metrics.csv").read_text()
    assert {row.split(",")[0] for row in (whole / "metrics.csv").read_text().splitlines()[1:]} >= {
        "bc", "offline", "online"}
    final, resumed = load_file(str(whole / "checkpoints/final.safetensors")), load_file(
        str(killed / "checkpoints/final.safetensors"))
    assert final.keys() == resumed.keys() and all(torch.equal(final[k], resumed[k]) for k in final)
    # Adapters, the state projection, its standardisation and the base's hash; no base weight, in final
    # weights and checkpoints.
    path = CheckpointStore(whole / "checkpoints").paths()[-1]
    for keys in (final.keys(), decode(path.read_bytes(), str(path))["agent"].keys()):
        policy_keys = {k for k in keys if k.startswith("policy.")}
        assert "policy.base_sha256" in policy_keys and any("lora_A" in k for k in policy_keys)
        assert all(k.startswith(("policy.model.", "policy.state_proj.", "policy.scaler.", "policy.encoder."))
                   or k == "policy.base_sha256" for k in policy_keys)
        assert all("lora_" in k for k in policy_keys if k.startswith("policy.model."))
    assert main(["eval", str(whole), "--episodes", "1"]) == 0


def test_a_vision_language_model_samples_and_trains_on_images_and_an_instruction(vlm: str, tmp_path: Path) -> None:
    """The Llava reads the camera through its own processor and vision tower (once per state) and the
    instruction through its tokenizer, BC → offline → online through the Python API, in chunks of 2."""
    spec = spec_of_space(PixelPointGoal().observation_space)
    hf = policy(vlm, spec=spec, chunk=2, bins=32)
    assert hf.vlm and hf.encoder is None  # nothing left for pa-rl's encoders: image and text go to the model
    rows: list[int] = []
    hf.model.model.vision_tower.register_forward_hook(lambda _m, inputs, _o: rows.append(len(inputs[0])))
    obs = {"pixels": torch.from_numpy(PixelPointGoal().reset(seed=0)[0]["pixels"])[None].repeat(3, 1, 1, 1),
           **instructions(INSTRUCTION, INSTRUCTION, "reach the goal")}
    assert hf.sample(obs, 5).shape == (3, 5, 2, 2) and rows == [3]
    agent = Agent(hf, spec, LOW, HIGH, AgentConfig(
        chunk=2, cql_alpha=0.1, bc_warmup_steps=1, bc_lr=3e-3,
        optimizer=OptimizerConfig(num_samples=4, top_k=2, local_steps=1),
        critic=CriticConfig(ensemble_size=2, hidden_dims=(32, 32))))
    config = TrainConfig(batch_size=16, bc_steps=40, offline_steps=10, online_env_steps=20, warmup_env_steps=0,
                         eval_every=1000, eval_episodes=1, max_episode_steps=10, diagnostic_pairs=0, progress=False,
                         log_every=1)
    result = train(agent, pixel_episodes(6, seed=0), PixelPointGoal, config, tmp_path / "run")
    assert result.summary["env_steps"] == 20
    bc = [float(line.split(",")[-1]) for line in (tmp_path / "run/metrics.csv").read_text().splitlines()
          if line.startswith("bc,") and ",bc/loss," in line]
    assert np.mean(bc[-5:]) < np.mean(bc[:5]) - 0.5, bc[::5]
