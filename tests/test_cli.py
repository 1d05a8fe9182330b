"""Tests of the ``nfvi`` command line."""
import math
import re
import subprocess
import sys

import pytest

from pyro_nfvi.cli import build_parser, main


def _value(label, text):
    match = re.search(rf"^{re.escape(label)}\s*:\s*(\S+)", text, flags=re.M)
    assert match, f"no {label!r} line in:\n{text}"
    return float(match.group(1))


def test_demo_tiny(capsys):
    assert main(["demo", "--steps", "50", "--samples", "16", "--num-flows", "2",
                 "--eval-samples", "2000", "--quiet"]) == 0
    out = capsys.readouterr().out
    bound, log_z = _value("fitted bound", out), _value("log Z (grid)", out)
    assert math.isfinite(bound)
    assert log_z == pytest.approx(1.8775, abs=1e-4)
    assert _value("gap = log Z - bound (estimate of KL(q||p))", out) == pytest.approx(log_z - bound, abs=2e-4)
    assert not re.search(r"^step\s", out, flags=re.M)  # --quiet: no per-step reports


def test_demo_improves_the_bound_and_reports(capsys, tmp_path):
    plot = tmp_path / "demo.png"
    assert main(["demo", "--steps", "300", "--samples", "32", "--num-flows", "4", "--log-every", "100",
                 "--eval-samples", "2000", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert _value("fitted bound", out) > _value("initial bound", out) + 2.0
    assert len(re.findall(r"^step\s+\d+/300", out, flags=re.M)) == 3
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize("target", ["U2", "U4"])
def test_demo_other_targets(capsys, target):
    assert main(["demo", "--target", target, "--steps", "5", "--samples", "8", "--num-flows", "1",
                 "--eval-samples", "200", "--quiet"]) == 0
    assert math.isfinite(_value("fitted bound", capsys.readouterr().out))


@pytest.mark.filterwarnings("ignore:Encountered:UserWarning")  # Pyro warns of the inf on the way
def test_demo_divergence_exits_non_zero_naming_the_learning_rate(capsys):
    assert main(["demo", "--lr", "1e6", "--steps", "50", "--samples", "16", "--num-flows", "2",
                 "--eval-samples", "200", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert re.search(r"^nfvi demo: error: the fit diverged at step \d+/50 .*lr=1e\+06.*smaller learning rate",
                     captured.err, flags=re.M)
    assert "fitted bound" not in captured.out  # no NaN result is printed


def test_parser_and_errors(capsys):
    args = build_parser().parse_args(["demo"])
    assert (args.target, args.flow, args.num_flows) == ("U1", "planar", 16)
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--target", "U9"])
    with pytest.raises(SystemExit):
        main(["demo", "--samples", "0"])
    with pytest.raises(SystemExit) as err:
        main(["demo", "--steps", "-3", "--quiet"])
    assert err.value.code == 2 and "steps" in capsys.readouterr().err


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_nfvi.cli", "demo", "--steps", "3", "--samples", "8", "--num-flows", "1",
         "--eval-samples", "100", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert math.isfinite(_value("fitted bound", proc.stdout))


def test_demo_plot_to_a_missing_folder_fails_before_the_fit(capsys, monkeypatch):
    # used to fail with a traceback after the whole fit
    import pyro_nfvi.targets

    def no_fit(**kwargs):
        raise AssertionError("the fit ran although --plot cannot be written")

    monkeypatch.setattr(pyro_nfvi.targets, "fit_energy", no_fit)
    with pytest.raises(SystemExit) as err:
        main(["demo", "--plot", "/missing/x.png", "--quiet"])
    assert err.value.code == 2
    assert re.search(r"--plot /missing/x.png: the folder /missing does not exist", capsys.readouterr().err)


def test_ctrl_c_exits_130_with_a_short_message(capsys, monkeypatch):
    import pyro_nfvi.targets

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyro_nfvi.targets, "fit_energy", interrupted)
    assert main(["demo", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "nfvi demo: interrupted" and "Traceback" not in err


def test_demo_checkpoint_interrupted_then_resumed_gives_the_uninterrupted_bound(capsys, monkeypatch, tmp_path):
    import pyro_nfvi.guides.fast

    argv = ["demo", "--steps", "30", "--samples", "8", "--num-flows", "2", "--eval-samples", "200",
            "--quiet"]
    assert main(argv) == 0
    want = re.search(r"fitted bound  : (\S+ \+- \S+)", capsys.readouterr().out).group(1)

    path = str(tmp_path / "demo.pt")
    original, calls = pyro_nfvi.guides.fast.FastSVI.step, []

    def interrupted_at_step_17(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 17:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pyro_nfvi.guides.fast.FastSVI, "step", interrupted_at_step_17)
    assert main(argv + ["--checkpoint", path, "--checkpoint-every", "5"]) == 130
    monkeypatch.setattr(pyro_nfvi.guides.fast.FastSVI, "step", original)
    capsys.readouterr()
    assert main(argv + ["--checkpoint", path, "--checkpoint-every", "5", "--resume"]) == 0
    assert re.search(r"fitted bound  : (\S+ \+- \S+)", capsys.readouterr().out).group(1) == want
    # other settings: refused, naming what differs
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--steps", "40", "--samples", "8", "--num-flows", "2", "--eval-samples", "200",
              "--quiet", "--checkpoint", path, "--resume"])
    assert exit_info.value.code == 2
    assert "steps: saved 30, now 40" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv + ["--resume"])
    assert "--resume needs --checkpoint" in capsys.readouterr().err
