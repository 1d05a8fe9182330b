"""``nfvi vae`` on a tiny subset of the shipped MNIST: output files, resume, and bad arguments refused before work."""
import json

import pyro
import pytest
import torch

from pyro_nfvi.cli import main

TINY = ["--num-train", "200", "--num-valid", "100", "--num-test", "50", "--batch-size", "50", "--hidden", "16",
        "--latent-dim", "4", "--iwae-k", "10", "--warmup", "1", "--lr", "3e-3", "--quiet"]


def _run(out, *extra):
    return main(["vae", "--flow", "iaf", "--num-flows", "2", "--out", str(out)] + TINY + list(extra))


def test_vae_writes_its_results_and_improves(tmp_path):
    assert _run(tmp_path, "--epochs", "3") == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["flow"], results["num_flows"], results["epochs_done"], results["strategy"]) == ("iaf", 2, 3, "single")
    history = results["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["valid"] < history[0]["valid"]  # training improves the validation bound
    assert [h["beta"] for h in history][1:] == [1.0, 1.0]  # KL warm-up over the first epoch
    for key in ("train_elbo", "valid_elbo", "test_elbo", "test_iwae"):
        mean, se = results[key]
        assert 0 < mean < 800 and se > 0, key
    # the IWAE bound (k = 10) is tighter than the one-draw ELBO on the same images
    assert results["test_iwae"][0] < results["test_elbo"][0] + 3 * results["test_elbo"][1]
    assert results["iwae_k"] == 10 and results["torch"] == torch.__version__ and results["machine"]
    assert results["seconds_per_epoch"] > 0 and results["best_epoch"] == min(history, key=lambda h: h["valid"])["epoch"]
    for name in ("last.pt", "best.pt"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_vae_resume_continues_identically(tmp_path, capsys):
    full, split = tmp_path / "full", tmp_path / "split"
    assert _run(full, "--epochs", "2") == 0
    assert _run(split, "--epochs", "1") == 0
    assert _run(split, "--epochs", "2", "--resume") == 0
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, split))
    strip = [{k: h[k] for k in ("epoch", "train", "valid", "beta", "lr")} for h in a["history"]]
    assert strip == [{k: h[k] for k in ("epoch", "train", "valid", "beta", "lr")} for h in b["history"]]
    assert a["test_elbo"] == b["test_elbo"] and a["test_iwae"] == b["test_iwae"]
    # a checkpoint written with other settings is refused, naming them
    with pytest.raises(SystemExit) as exit_info:
        _run(split, "--epochs", "3", "--resume", "--lr", "1e-2")
    assert exit_info.value.code == 2
    assert "written with other settings (lr: checkpoint 0.003 vs now 0.01)" in capsys.readouterr().err


def test_vae_plain_and_early_stopping(tmp_path):
    # lr tiny enough that nothing improves after the first epoch: patience 1 stops after epoch 2
    assert main(["vae", "--flow", "none", "--epochs", "5", "--patience", "1", "--out", str(tmp_path)]
                + TINY + ["--lr", "1e-9", "--iwae-k", "0"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_flows"] == 0 and "test_iwae" not in results
    assert results["stopped_early"] and results["epochs_done"] < 5


@pytest.mark.parametrize("argv, message", [
    (["--flow", "iaf", "--num-flows", "0"], "--num-flows must be >= 1"),
    (["--lr", "0"], "--lr: must be a number > 0"),
    (["--epochs", "0"], "--epochs: must be a positive integer"),
    (["--flow", "spline"], "invalid choice"),
    (["--devices", "2"], "--devices and --num-nodes need --strategy ddp"),
    (["--num-train", "50", "--batch-size", "100"], "--batch-size 100 is larger than the 50 training images"),
    (["--strategy", "ddp", "--devices", "3", "--batch-size", "100"], "must be a multiple of the 3 processes"),
    (["--flow", "coupling", "--flow-opts", "{stable: true}"], "--flow-opts: must be a JSON object"),
    (["--flow", "coupling", "--flow-opts", "[1]"], "--flow-opts: must be a JSON object"),
    (["--flow", "coupling", "--flow-opts", '{"stabel": true}'], "does not fit --flow coupling"),
    (["--flow", "none", "--flow-opts", '{"stable": true}'], "--flow none has none"),
    (["--flow", "sylvester", "--latent-dim", "4", "--flow-opts", '{"num_ortho": 5}'], "num_ortho must be <= dim=4"),
])
def test_vae_bad_arguments_exit_2_before_any_work(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["vae", "--out", str(tmp_path / "out")] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "last.pt").exists()


def test_vae_flow_opts_reach_every_layer_and_the_settings(tmp_path, capsys):
    from pyro_nfvi.guides import load_checkpoint
    from pyro_nfvi.targets import VAEModel, vae_guide

    # the ungated coupling form (the guide's default is the bounded gate)
    argv = ["vae", "--flow", "coupling", "--num-flows", "2", "--flow-opts", '{"stable": false}', "--epochs", "1",
            "--out", str(tmp_path)] + TINY
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["flow_opts"] == {"stable": False}
    assert "--flow-opts '{\"stable\": false}'" in results["command"]
    # the checkpoint loads into a guide built with the same options, not into the default one
    x = torch.zeros(50, 784)
    with pyro.settings.context(module_local_params=True):
        model = VAEModel(4, (16, 16))
        plain = vae_guide(model, "coupling", 2, x, hidden=(16, 16), flow_opts={"stable": False})
        couplings = [m for m in plain.modules() if type(m).__name__ == "AffineCoupling"]
        assert len(couplings) == 2 and not any(m.stable for m in couplings)
        load_checkpoint(tmp_path / "best.pt", guide=plain, model=model, restore_rng=False)
        default = vae_guide(VAEModel(4, (16, 16)), "coupling", 2, x, hidden=(16, 16))
        with pytest.raises(ValueError):
            load_checkpoint(tmp_path / "best.pt", guide=default, model=VAEModel(4, (16, 16)), restore_rng=False)
    # resuming without the options is refused, naming them
    with pytest.raises(SystemExit) as exit_info:
        main(argv[:5] + argv[7:] + ["--resume"])
    assert exit_info.value.code == 2 and "(flow_opts: saved {'stable': False}, this guide {'max_scale': 2.0, 'stable': True})" in capsys.readouterr().err


def test_vae_refuses_to_overwrite_a_run_and_an_unusable_out(tmp_path, capsys):
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(SystemExit) as exit_info:
        _run(tmp_path, "--epochs", "1")
    assert exit_info.value.code == 2 and "pass --resume" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main(["vae", "--out", str(tmp_path / "file")])
    assert "is a file" in capsys.readouterr().err


def test_help_lists_vae(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "vae" in out


def test_vae_flow_opts_are_checked_against_the_latent_dimension(tmp_path):
    # an option valid for the run's 4 latents (not for a toy layer of 2) trains
    argv = ["vae", "--flow", "sylvester", "--num-flows", "1", "--flow-opts", '{"num_ortho": 3}', "--epochs", "1",
            "--out", str(tmp_path)] + TINY
    assert main(argv) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["flow_opts"] == {"num_ortho": 3}
