"""Checkpoints that lose nothing (issue 9): atomic writes, exact resume, refusal of foreign checkpoints."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_nfvi.guides import AutoFlowGuide, FastSVI, load_checkpoint, save_checkpoint
from pyro_nfvi.objectives import AnnealedELBO

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRAIN = textwrap.dedent(
    """
    import os, sys
    import pyro, pyro.distributions as dist, torch
    from pyro.infer import Trace_ELBO
    from pyro_nfvi.guides import AutoFlowGuide, FastSVI
    from pyro_nfvi.objectives import AnnealedELBO, linear_warmup

    ckpt, losses_path, num_steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    torch.set_num_threads(1)
    pyro.settings.set(module_local_params=True)
    torch.manual_seed(0)
    data = torch.randn(20) + 1.0

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("data", 20):
            pyro.sample("obs", dist.Normal(mu.sum(-1, keepdim=True), 1.0), obs=data)

    guide = AutoFlowGuide(model, flow="iaf", num_flows=2, model_args=())
    objective = AnnealedELBO(Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1),
                             schedule=linear_warmup(30, start=0.1), mode="free_energy")
    svi = FastSVI(model, guide, loss=objective, lr=0.02)
    if resume and os.path.exists(ckpt):
        svi.load(ckpt)
    with open(losses_path, "a") as out:
        while svi.num_steps < num_steps:
            loss = svi.step()
            svi.save(ckpt)
            # the loss of step n is recorded after checkpoint n: a kill between the two repeats it
            out.write(f"{svi.num_steps} {loss.hex()}\\n")
            out.flush()
    """
)


def _run(tmp_path, name, num_steps, resume=False):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    args = [sys.executable, str(script), str(tmp_path / f"{name}.pt"), str(tmp_path / f"{name}.txt"),
            str(num_steps), "1" if resume else "0"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _losses(path):
    """``{step: loss hex}``; a step recorded twice (killed between save and record) must agree."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue  # a line torn by the kill
        step, value = int(parts[0]), parts[1]
        assert out.setdefault(step, value) == value
    return out


def test_kill_at_a_random_step_and_resume_is_bit_identical(tmp_path):
    num_steps = 60
    reference = _run(tmp_path, "ref", num_steps)
    victim = _run(tmp_path, "run", num_steps)
    kill_at = random.Random().randint(5, 45)
    losses = tmp_path / "run.txt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if losses.exists() and len(losses.read_text().splitlines()) >= kill_at:
            break
        time.sleep(0.005)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_after = len(_losses(losses))
    assert killed_after < num_steps, "the run finished before it was killed"
    # the checkpoint always loads (never a torn file): the resumed run starts from it
    resumed = _run(tmp_path, "run", num_steps, resume=True)
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err.decode()
    _, err = reference.communicate(timeout=60)
    assert reference.returncode == 0, err.decode()
    got, want = _losses(losses), _losses(tmp_path / "ref.txt")
    assert sorted(want) == list(range(1, num_steps + 1))
    assert [got[k] for k in sorted(got)] == [want[k] for k in sorted(want)]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def _model():
    pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))


def _svi(flow="planar", num_flows=2, seed=0):
    torch.manual_seed(seed)
    guide = AutoFlowGuide(_model, flow=flow, num_flows=num_flows, model_args=())
    return FastSVI(_model, guide, loss=AnnealedELBO(warmup_steps=10, mode="free_energy"), lr=0.05)


@pytest.fixture
def module_local():
    with pyro.settings.context(module_local_params=True):
        yield


def test_round_trip_restores_parameters_optimizer_step_and_rng(tmp_path, module_local):
    svi = _svi()
    for _ in range(5):
        svi.step()
    path = tmp_path / "ckpt.pt"
    svi.save(path, extra={"note": "five"})
    expected_next = (random.random(), np.random.rand(), torch.rand(2))
    fresh = _svi(seed=123)  # other initial parameters, and an RNG moved on
    info = fresh.load(path)
    assert info["step"] == fresh.num_steps == 5 and info["extra"] == {"note": "five"}
    assert (random.random(), np.random.rand()) == expected_next[:2]
    assert torch.equal(torch.rand(2), expected_next[2])
    for (n, a), (_, b) in zip(svi.guide.state_dict().items(), fresh.guide.state_dict().items()):
        assert a == b if isinstance(a, str) else torch.equal(a, b), n
    assert fresh.loss.t == svi.loss.t == 5
    state_a, state_b = svi.optimizer.state_dict(), fresh.optimizer.state_dict()
    for key in state_a["state"]:
        for k, v in state_a["state"][key].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(state_b["state"][key][k]))
    # and the next steps agree exactly
    svi.load(path)
    want = [svi.step() for _ in range(3)]
    fresh.load(path)  # the RNG too: the next draws are those svi made
    assert [fresh.step() for _ in range(3)] == want


@pytest.mark.parametrize("flow,num_flows,what", [("iaf", 2, "flow"), ("planar", 3, "num_flows")])
def test_checkpoint_of_another_family_or_size_is_refused(tmp_path, module_local, flow, num_flows, what):
    svi = _svi()
    svi.step()
    path = tmp_path / "ckpt.pt"
    svi.save(path)
    other = _svi(flow=flow, num_flows=num_flows)
    before = [p.detach().clone() for p in other.guide.parameters()]
    with pytest.raises(ValueError, match=f"another model or guide configuration \\({what}: saved .*start afresh"):
        other.load(path)
    assert all(torch.equal(a, b) for a, b in zip(before, other.guide.parameters()))


def test_checkpoint_of_another_model_size_is_refused(tmp_path, module_local):
    svi = _svi()
    svi.step()
    path = tmp_path / "ckpt.pt"
    svi.save(path)

    def bigger():
        pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))

    guide = AutoFlowGuide(bigger, flow="planar", num_flows=2, model_args=())
    with pytest.raises(ValueError, match="another model or guide configuration .*'z'"):
        load_checkpoint(path, guide=guide)


def test_a_damaged_file_is_refused_clearly(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"not a checkpoint")
    guide = AutoFlowGuide(_model, flow="planar", num_flows=1, model_args=())
    with pytest.raises(ValueError, match="cannot be read .*delete it"):
        load_checkpoint(path, guide=guide)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", guide=guide)


def test_a_save_removes_the_temporary_file_of_a_killed_writer(tmp_path):
    # a writer killed between writing its temporary file and os.replace leaves the file behind
    stale = tmp_path / ".ckpt.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.abc123.tmp"  # another checkpoint's temporary file is not touched
    other.write_bytes(b"x")
    guide = AutoFlowGuide(_model, flow="planar", num_flows=1, model_args=())
    save_checkpoint(tmp_path / "ckpt.pt", guide=guide)
    assert not stale.exists() and other.exists()
    load_checkpoint(tmp_path / "ckpt.pt", guide=guide)


def test_pyro_optim_and_param_store_round_trip(tmp_path):
    # the classic SVI path: pyro.param in the model, a pyro.optim optimizer, the global param store
    pyro.clear_param_store()

    def model():
        loc = pyro.param("loc", torch.zeros(2))
        scale = pyro.param("scale", torch.ones(2), constraint=dist.constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    torch.manual_seed(0)
    guide = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=())
    optim = pyro.optim.Adam({"lr": 0.05})
    svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
    for _ in range(3):
        svi.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, guide=guide, optimizer=optim, step=3)
    want = [svi.step() for _ in range(3)]

    pyro.clear_param_store()
    torch.manual_seed(1)
    guide2 = AutoFlowGuide(model, flow="planar", num_flows=2, model_args=())
    optim2 = pyro.optim.Adam({"lr": 0.05})
    assert load_checkpoint(path, guide=guide2, optimizer=optim2)["step"] == 3
    svi2 = pyro.infer.SVI(model, guide2, optim2, pyro.infer.Trace_ELBO())
    assert [svi2.step() for _ in range(3)] == want
    pyro.clear_param_store()
