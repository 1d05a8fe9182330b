"""Tests of ``nfvi energy`` (tiny budgets: they check the plumbing, not the fit's quality)."""
import json
import math
import re

import pytest
import torch

from pyro_nfvi.cli import build_parser, main

TINY = ["--steps", "30", "--samples", "8", "--num-flows", "2", "--eval-samples", "500"]


def _value(label, text):
    match = re.search(rf"^{re.escape(label)}\s*:\s*(\S+)", text, flags=re.M)
    assert match, f"no {label!r} line in:\n{text}"
    return float(match.group(1))


def test_energy_tiny_writes_the_result_and_the_figure(capsys, tmp_path):
    assert main(["energy", *TINY, "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    bound, log_z, kl = _value("bound", out), _value("log Z (grid)", out), _value("KL(q||p)", out)
    assert log_z == pytest.approx(1.8775, abs=1e-4) and kl == pytest.approx(log_z - bound, abs=2e-4)
    assert _value("ms per step", out) > 0
    assert not re.search(r"^step\s", out, flags=re.M)  # --quiet: no per-step reports
    result = json.loads((tmp_path / "energy_U1_planar_K2.json").read_text())
    assert (result["target"], result["flow"], result["num_flows"], result["steps"], result["samples"]) == (
        "U1", "planar", 2, 30, 8)
    assert result["anneal_steps"] == 30 and result["lr"] == 1e-3 and result["device"] == "cpu"
    assert result["kl"] == pytest.approx(result["log_z"] - result["bound"])
    assert math.isfinite(result["bound_se"]) and result["ms_per_step"] > 0 and result["cpu_ms_per_step"] > 0
    assert (tmp_path / "energy_U1_planar_K2.png").stat().st_size > 1000


def test_energy_reports_beta_and_the_bound(capsys, tmp_path):
    assert main(["energy", "--target", "U3", "--flow", "householder", *TINY, "--log-every", "10",
                 "--anneal-steps", "20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    betas = [float(b) for b in re.findall(r"^step\s+\d+/30\s+beta (\S+)", out, flags=re.M)]
    assert betas == pytest.approx([0.01 + 0.99 * 9 / 20, 0.01 + 0.99 * 19 / 20, 1.0], abs=1e-3)  # beta of steps 10, 20, 30
    history = json.loads((tmp_path / "energy_U3_householder_K2.json").read_text())["history"]
    assert [h["step"] for h in history] == [10, 20, 30]


@pytest.mark.parametrize("argv, message", [
    (["--final-lr", "2"], "--final-lr must be in (0, 1]"),
    (["--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["--lr", "-1"], "argument --lr: must be a number > 0, got -1"),
    (["--anneal-steps", "-5"], "argument --anneal-steps: must be an integer >= 0, got -5"),
    (["--flow", "spline"], "--flow: invalid choice"),
    (["--samples", "1"], "--samples must be at least 2"),
])
def test_energy_bad_arguments_exit_2_before_any_work(argv, message, capsys, monkeypatch):
    import pyro_nfvi.targets

    def no_fit(**kwargs):
        raise AssertionError("the fit ran although an argument is bad")

    monkeypatch.setattr(pyro_nfvi.targets, "fit_energy", no_fit)
    with pytest.raises(SystemExit) as err:
        main(["energy", "--quiet", *argv])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_energy_unwritable_out_and_missing_cuda_exit_2(capsys, monkeypatch, tmp_path):
    import pyro_nfvi.targets

    monkeypatch.setattr(pyro_nfvi.targets, "fit_energy", None)  # calling it would fail
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as err:
        main(["energy", "--quiet", "--out", str(tmp_path / "file")])
    assert err.value.code == 2 and "is a file" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as err:
            main(["energy", "--quiet", "--device", "cuda", "--out", str(tmp_path)])
        assert err.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_help_lists_energy():
    assert re.search(r"^\s+energy\s", build_parser().format_help(), flags=re.M)
    args = build_parser().parse_args(["energy"])
    assert (args.target, args.flow, args.num_flows, args.steps, args.samples, args.lr, args.anneal_steps) == (
        "U1", "planar", 32, 20000, 100, 1e-3, 10000)
