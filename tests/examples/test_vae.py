"""Smoke test of examples/vae.py (imported from its path): both training paths run and improve the ELBO."""
import math

import pytest

from load_example import load_example


@pytest.mark.parametrize("extra", [[], ["--fast"]])
def test_vae_example_runs(extra, capsys):
    vae = load_example("vae")
    args = vae.make_parser().parse_args(["--flow", "iaf", "--num-flows", "2", "--epochs", "2", "--num-train", "200",
                                         "--num-test", "100", "--hidden", "32", "--latent-dim", "4",
                                         "--batch-size", "50", "--lr", "3e-3"] + extra)
    result = vae.main(args)
    assert math.isfinite(result["train_elbo"]) and math.isfinite(result["test_elbo"])
    out = capsys.readouterr().out
    epochs = [float(line.split()[4]) for line in out.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and epochs[1] > epochs[0]  # the ELBO improves from the first epoch to the second
