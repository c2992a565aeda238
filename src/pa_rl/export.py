"""π̂ as one ``torch.export`` program: what a robot runs, loadable with plain torch.

The program maps one observation to ``agent.act(obs, "argmax")``'s action: N base-policy samples,
clipped to the bounds, top-k by the ensemble-reduced Q, T gradient-ascent steps on Q keeping the
best iterate, the argmax. It is traced from the agent's own code (``Agent.optimize_actions`` and
``Candidates.choose``), not a second implementation, so the two cannot drift apart.

``torch.export`` cannot trace ``torch.autograd.grad`` (nor ``torch.func.grad``) inside a module, and
the local steps need ∂Q/∂a. ``make_fx`` traces below autograd instead: the backward pass of each
local step is recorded as the aten ops that compute it, and the resulting graph, free of autograd
calls, is what ``torch.export`` exports. Random draws stay ``aten.randn``/``aten.multinomial`` nodes
on torch's global generator, in the agent's order: the same seed gives the same action. Tracing
bakes in Python control flow, which is why only the built-in classes whose sampling is plain
tensor code are accepted, and why every export is checked against ``agent.act`` before it is kept.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from pa_rl.agent import Agent
from pa_rl.checkpoint import write_atomically
from pa_rl.observations import Obs, encode_text, map_obs
from pa_rl.policies import DiffusionPolicy, FlowPolicy, GaussianPolicy, TokenPolicy
from pa_rl.train import to_jsonable

EXPORTABLE = {DiffusionPolicy: "diffusion", FlowPolicy: "flow", GaussianPolicy: "gaussian", TokenPolicy: "token"}
PROGRAM_NAME, INFO_NAME = "policy.pt2", "export.json"


@dataclass
class Exported:
    path: Path  # the .pt2 program
    latency_ms: float  # median time of one call on one observation, on the agent's device
    calls: int  # timed calls behind the median


def example_observation(agent: Agent, seed: int = 0) -> Obs:
    """One random observation of the agent's spec on its device (vectors ~ N(0, 1), random images, an
    instruction): what the program is traced and checked on."""
    generator = torch.Generator().manual_seed(seed)
    spec = agent.obs_spec
    if isinstance(spec, int):
        return torch.randn(spec, generator=generator).to(agent.device)
    obs = {}
    for key, field in spec.items():
        if field.kind == "vector":
            value = torch.randn(field.shape, generator=generator)
        elif field.kind == "image":
            value = torch.randint(0, 256, field.shape, generator=generator, dtype=torch.uint8)
        else:
            value = torch.from_numpy(encode_text(["pick up the red block"])[0])
        obs[key] = value.to(agent.device)
    return obs


def trace(agent: Agent, example: Obs) -> torch.export.ExportedProgram:
    """π̂'s argmax action for one (unbatched) observation, as an exported program."""
    if type(agent.policy) not in EXPORTABLE:
        raise TypeError(f"pa-rl export takes the {', '.join(EXPORTABLE.values())} policies (on vector, image and "
                        f"text observations); {type(agent.policy).__name__} samples through Python-side code "
                        "(tokenizers, generate loops) that one traced program cannot hold")
    # A copy whose weights need no gradient: the program then builds no autograd graph when called,
    # while ∂Q/∂a is still traced (the actions require grad inside the local steps).
    frozen = copy.deepcopy(agent).requires_grad_(False)

    def act(obs: Obs) -> torch.Tensor:
        batch = map_obs(lambda tensor: tensor[None], obs)
        return frozen.shaped(frozen.optimize_actions(batch, critic=frozen.acting_critic).choose("argmax"))[0]

    graph = make_fx(act)(example)
    return torch.export.export(graph, (example,))


def own_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Draws made inside leave torch's global generators (CPU, and the device's) as they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def check_against_agent(agent: Agent, program: torch.nn.Module, observations: list[Obs]) -> None:
    """The program must give ``agent.act(obs, "argmax")``'s action for observation i under seed i
    (torch's global generator is restored afterwards)."""
    with own_rng(agent.device):
        for seed, obs in enumerate(observations):
            torch.manual_seed(seed)
            expected = agent.act(map_obs(lambda tensor: tensor.cpu().numpy(), obs), "argmax")
            torch.manual_seed(seed)
            got = program(obs)
            if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
                raise RuntimeError(f"the exported program chose {got.tolist()} where agent.act chose "
                                   f"{expected.tolist()} (seed {seed}); the export is not kept: please report this")


def latency_ms(program: torch.nn.Module, obs: Obs, device: torch.device, calls: int = 50, warmup: int = 10) -> float:
    """Median wall time of one call, after ``warmup`` calls (CUDA work is waited for)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + calls):
        sync()
        start = time.perf_counter()
        program(obs)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def export_agent(agent: Agent, out_dir: str | Path, calls: int = 50, source: str | None = None) -> Exported:
    """Write π̂ to ``out_dir/policy.pt2`` with ``export.json`` (its input and output, the optimizer
    settings, the measured latency), after checking the saved program against ``agent.act``."""
    out_dir = Path(out_dir)
    example = example_observation(agent)
    program = trace(agent, example)
    path, blob = out_dir / PROGRAM_NAME, io.BytesIO()
    torch.export.save(program, blob)
    write_atomically(path, lambda tmp: tmp.write_bytes(blob.getvalue()))
    loaded = torch.export.load(str(path)).module()
    try:
        check_against_agent(agent, loaded, [example, example_observation(agent, seed=1)])
    except RuntimeError:
        path.unlink()
        raise
    with own_rng(agent.device):
        ms = latency_ms(loaded, example, agent.device, calls)
    spec = agent.obs_spec
    inputs = ({"shape": [spec], "dtype": "float32"} if isinstance(spec, int) else
              {key: {"shape": list(f.shape), "dtype": str(f.dtype), "kind": f.kind} for key, f in spec.items()})
    info = {"program": PROGRAM_NAME, "source": source, "policy": EXPORTABLE[type(agent.policy)],
            "device": str(agent.device), "input": inputs, "output_shape": list(agent.action_shape),
            "action_low": agent.action_low.tolist(), "action_high": agent.action_high.tolist(),
            "optimizer": to_jsonable(agent.action_optimizer.config), "latency_ms_median": ms, "latency_calls": calls,
            "torch_version": torch.__version__}
    write_atomically(out_dir / INFO_NAME, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    return Exported(path, ms, calls)
