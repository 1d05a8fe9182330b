"""Smoke test of examples/vae.py (imported from its path): both training paths run and improve the ELBO."""
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "vae.py"


def _load():
    spec = importlib.util.spec_from_file_location("example_vae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", [[], ["--fast"]])
def test_vae_example_runs(extra, capsys):
    vae = _load()
    args = vae.make_parser().parse_args(["--flow", "iaf", "--num-flows", "2", "--epochs", "2", "--num-train", "200",
                                         "--num-test", "100", "--hidden", "32", "--latent-dim", "4",
                                         "--batch-size", "50", "--lr", "3e-3"] + extra)
    result = vae.main(args)
    assert math.isfinite(result["train_elbo"]) and math.isfinite(result["test_elbo"])
    out = capsys.readouterr().out
    epochs = [float(line.split()[4]) for line in out.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and epochs[1] > epochs[0]  # the ELBO improves from the first epoch to the second
