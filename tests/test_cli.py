"""Tests of the ``nfvi`` command line: ``nfvi demo`` end to end with tiny budgets, its report files and its errors."""
import math
import re
import subprocess
import sys

import pytest

from pyro_nfvi.cli import build_parser, main

#: Tiny budgets for both parts of the demo (seconds, not minutes).
TINY_SCHOOLS = ["--schools-steps", "10", "--draws", "100"]
TINY_ENERGY = ["--energy-steps", "10", "--samples", "8", "--num-flows", "2", "--eval-samples", "200"]


def _row(text, first_cell):
    """The cells of the terminal table row starting with ``first_cell``, keyed by the header above it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not re.match(rf"{re.escape(first_cell)}\s", line):
            continue
        j = i - 1
        while j > 0 and lines[j].strip() and set(lines[j].replace(" ", "")) != {"-"}:
            j -= 1  # up through the table's rows to its rule
        if j > 0 and lines[j].strip():
            header, rule = lines[j - 1], lines[j]
            starts = [m.start() for m in re.finditer(r"-+", rule)]
            return {header[a:b].strip(): line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])}
    raise AssertionError(f"no table row {first_cell!r} in:\n{text}")


def _energy(out, target="U1"):
    row = _row(out, target)
    bound, se = (float(v) for v in row["bound ± se"].split(" ± "))
    return {"initial": float(row["initial bound"]), "bound": bound, "se": se, "log_z": float(row["log Z (grid)"]),
            "kl": float(row["KL estimate"])}


def _no_fit(*args, **kwargs):
    raise AssertionError("a fit ran although the arguments are bad")


@pytest.fixture
def no_fits(monkeypatch):
    """Make any fit fail the test: the argument checks must come first."""
    import pyro_nfvi.cli.eight_schools
    import pyro_nfvi.targets

    monkeypatch.setattr(pyro_nfvi.targets, "fit_energy", _no_fit)
    monkeypatch.setattr(pyro_nfvi.cli.eight_schools, "compare", _no_fit)


def test_demo_smoke_writes_every_report_file(capsys, tmp_path):
    import arviz as az

    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--quiet"] + TINY_SCHOOLS + TINY_ENERGY) == 0
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "%|" not in captured.err  # --quiet: no progress bar
    # the terminal: both tables, the verdict and the report's path
    for guide in ("NUTS (reference)", "AutoNormal", "AutoFlowGuide(iaf, K=4)"):
        row = _row(captured.out, guide)
        assert re.fullmatch(r"-?\d+\.\d\d ± \d+\.\d\d", row["elpd_loo ± se"]), row
    assert float(_row(captured.out, "AutoNormal")["SVI steps"]) == 10
    assert re.search(r"^Which is closer to NUTS: (AutoNormal|AutoFlowGuide|Neither)", captured.out, flags=re.M)
    assert re.search(r"^tau\s+\d+\.\d\d ± \d+\.\d\d \[", captured.out, flags=re.M)
    assert len(re.findall(r"^theta\[\d\]\s", captured.out, flags=re.M)) == 8
    assert _energy(captured.out)["log_z"] == pytest.approx(1.8775, abs=1e-4)
    assert captured.out.rstrip().splitlines()[-1].startswith(f"report: {out / 'summary.md'}")

    summary = (out / "summary.md").read_text()
    for text in ("# nfvi demo", "- command: `nfvi demo --out", "- date: 20", "- machine: ", "- wall time: ",
                 "| guide | SVI steps | seconds | mean error (sd) | sd error | PSIS k-hat | PSIS-corrected mean / sd error "
                 "| elpd_loo ± se |",
                 "| AutoNormal | 10 |", "| NUTS (reference) |", "Which is closer to NUTS:",
                 "| variable | NUTS: mean ± sd [94% HDI] |", "| tau |", "![tau's posterior](tau.png)",
                 "## 2. U1 of Rezende & Mohamed", "| U1 | planar | 2 | 10 | 8 |", "(u1.png)",
                 "`eight_schools_flow.nc`"):
        assert text in summary, text
    for figure in ("tau.png", "u1.png"):
        data = (out / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, figure
    for name in ("eight_schools_autonormal.nc", "eight_schools_flow.nc"):
        idata = az.from_netcdf(out / name)
        assert {"posterior", "log_likelihood", "observed_data", "sample_stats"} <= set(idata.groups())
        assert idata.posterior["tau"].shape == (1, 100)
        assert idata.posterior["theta"].dims == ("chain", "draw", "schools")
        assert idata.posterior["theta"].shape[2] == 8
        assert bool((idata.posterior["tau"] > 0).all()) and math.isfinite(idata.sample_stats.attrs["khat"])


def test_demo_energy_part_alone(capsys, tmp_path):
    import torch

    threads = torch.get_num_threads()
    assert main(["demo", "--only", "energy", "--out", str(tmp_path), "--quiet", "--threads", "1"] + TINY_ENERGY) == 0
    assert torch.get_num_threads() == threads  # --threads holds for the demo only
    out = capsys.readouterr().out
    fit = _energy(out)
    assert math.isfinite(fit["bound"]) and fit["log_z"] == pytest.approx(1.8775, abs=1e-4)
    assert fit["kl"] == pytest.approx(fit["log_z"] - fit["bound"], abs=2e-4)
    assert not re.search(r"^step\s", out, flags=re.M)  # no per-step lines unless --log-every
    assert "Eight schools" not in out and not list(tmp_path.glob("*.nc"))
    summary = (tmp_path / "summary.md").read_text()
    assert "## 1. Eight schools" not in summary and "torch 2" in summary and "(1 thread)" in summary


def test_demo_improves_the_bound_shows_a_bar_and_reports(capsys, tmp_path):
    assert main(["demo", "--only", "energy", "--energy-steps", "300", "--samples", "32", "--num-flows", "4",
                 "--log-every", "100", "--eval-samples", "2000", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    fit = _energy(captured.out)
    assert fit["bound"] > fit["initial"] + 2.0
    assert len(re.findall(r"^step\s+\d+/300", captured.out, flags=re.M)) == 3
    assert re.search(r"fit U1: +\d+%.*beta=", captured.err)  # the progress bar, with beta
    assert (tmp_path / "u1.png").stat().st_size > 1000


@pytest.mark.parametrize("target", ["U2", "U4"])
def test_demo_other_targets(capsys, tmp_path, target):
    assert main(["demo", "--only", "energy", "--target", target, "--energy-steps", "5", "--samples", "8",
                 "--num-flows", "1", "--eval-samples", "200", "--quiet", "--out", str(tmp_path)]) == 0
    assert math.isfinite(_energy(capsys.readouterr().out, target)["bound"])
    assert (tmp_path / f"{target.lower()}.png").stat().st_size > 1000


@pytest.mark.filterwarnings("ignore:Encountered:UserWarning")  # Pyro warns of the inf on the way
@pytest.mark.filterwarnings(r"ignore:step \d+ skipped:RuntimeWarning")  # and so does the guard
def test_demo_divergence_exits_non_zero_naming_the_learning_rate(capsys, tmp_path):
    assert main(["demo", "--only", "energy", "--lr", "1e6", "--energy-steps", "50", "--samples", "16",
                 "--num-flows", "2", "--eval-samples", "200", "--quiet", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert re.search(r"^nfvi demo: error: the fit diverged at step \d+/50 .*lr=1e\+06.*smaller learning rate",
                     captured.err, flags=re.M)
    assert "bound ± se" not in captured.out and not (tmp_path / "summary.md").exists()  # no NaN result


def test_demo_eight_schools_divergence_exits_1(capsys, monkeypatch, tmp_path):
    import pyro_nfvi.cli.eight_schools

    def diverged(**kwargs):
        raise FloatingPointError("fit: every candidate learning rate [0.01] diverged")

    monkeypatch.setattr(pyro_nfvi.cli.eight_schools, "compare", diverged)
    assert main(["demo", "--quiet", "--out", str(tmp_path)]) == 1
    assert "nfvi demo: error: fit: every candidate learning rate" in capsys.readouterr().err


def test_parser_help_and_errors(capsys):
    args = build_parser().parse_args(["demo"])
    assert (args.target, args.flow, args.num_flows, args.out, args.only, args.device) == (
        "U1", "planar", 16, "runs/demo", None, "cpu")
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["--help"])
    assert err.value.code == 0 and re.search(r"^\s+demo\s+eight schools", capsys.readouterr().out, flags=re.M)
    for bad in (["--target", "U9"], ["--samples", "0"], ["--schools-steps", "0"], ["--only", "vae"]):
        with pytest.raises(SystemExit) as err:
            main(["demo"] + bad)
        assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["demo", "--energy-steps", "-3", "--quiet"])
    assert err.value.code == 2 and "energy-steps" in capsys.readouterr().err


@pytest.mark.parametrize("where, expected",
                         [("file.txt", " is a file"), ("file.txt/sub", ": cannot create the folder")])
def test_demo_bad_out_exits_2_before_any_fit(capsys, no_fits, tmp_path, where, expected):
    (tmp_path / "file.txt").write_text("not a folder")
    path = tmp_path / where
    with pytest.raises(SystemExit) as err:
        main(["demo", "--out", str(path), "--quiet"])
    assert err.value.code == 2
    assert f"--out {path}{expected}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--anneal", "1.5"], "--anneal must lie in [0, 1]"),
        (["--draws", "20"], "--draws must be at least 21"),
        (["--samples", "1"], "--samples must be at least 2"),
        (["--lr", "0"], "--lr must be positive"),
        (["--resume"], "--resume needs --checkpoint"),
        (["--checkpoint", "/missing/x.pt"], "--checkpoint /missing/x.pt: the folder /missing does not exist"),
        (["--only", "eight-schools", "--checkpoint", "x.pt"], "--checkpoint is for the energy fit"),
        (["--device", "gpu"], "--device gpu: not a torch device"),
    ],
)
def test_demo_bad_arguments_exit_2_before_any_fit(capsys, no_fits, tmp_path, argv, expected):
    with pytest.raises(SystemExit) as err:
        main(["demo", "--out", str(tmp_path), "--quiet"] + argv)
    assert err.value.code == 2
    assert expected in capsys.readouterr().err


def test_demo_cuda_without_a_gpu_exits_2(capsys, no_fits, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as err:
        main(["demo", "--device", "cuda", "--out", str(tmp_path / "never")])
    assert err.value.code == 2
    assert "--device cuda: CUDA is not available here" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # the device is checked before the folder is made


def test_python_dash_m(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pyro_nfvi.cli", "demo", "--only", "energy", "--energy-steps", "3", "--samples", "8",
         "--num-flows", "1", "--eval-samples", "100", "--quiet", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert math.isfinite(_energy(proc.stdout)["bound"]) and (tmp_path / "summary.md").exists()


@pytest.mark.parametrize("only", [None, "energy"])
def test_ctrl_c_exits_130_with_a_short_message(capsys, monkeypatch, tmp_path, only):
    import pyro_nfvi.cli.eight_schools
    import pyro_nfvi.targets

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyro_nfvi.targets, "fit_energy", interrupted)
    monkeypatch.setattr(pyro_nfvi.cli.eight_schools, "compare", interrupted)
    assert main(["demo", "--quiet", "--out", str(tmp_path)] + (["--only", only] if only else [])) == 130
    err = capsys.readouterr().err
    assert err.strip() == "nfvi demo: interrupted" and "Traceback" not in err


def test_demo_checkpoint_interrupted_then_resumed_gives_the_uninterrupted_bound(capsys, monkeypatch, tmp_path):
    import pyro_nfvi.guides.fast

    argv = ["demo", "--only", "energy", "--energy-steps", "30", "--samples", "8", "--num-flows", "2",
            "--eval-samples", "200", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    want = _row(capsys.readouterr().out, "U1")["bound ± se"]

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
    assert _row(capsys.readouterr().out, "U1")["bound ± se"] == want
    # other settings: refused, naming what differs
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--only", "energy", "--energy-steps", "40", "--samples", "8", "--num-flows", "2",
              "--eval-samples", "200", "--quiet", "--out", str(tmp_path), "--checkpoint", path, "--resume"])
    assert exit_info.value.code == 2
    assert "steps: saved 30, now 40" in capsys.readouterr().err


def test_eight_schools_verdict_names_the_closer_guide_or_the_split():
    from types import SimpleNamespace

    from pyro_nfvi.cli.eight_schools import EightSchools
    from pyro_nfvi.evaluation import PosteriorError

    def guide(name, mean, sd):
        return SimpleNamespace(name=name, error=PosteriorError(mean, sd, {}))

    def verdict(*guides):
        return EightSchools(nuts_idata=None, nuts_loo=None, nuts_info={}, guides=list(guides)).verdict()

    both = verdict(guide("A", 1.1, 0.9), guide("B", 0.4, 0.5))
    assert both.startswith("B is closer to NUTS, in both")
    assert both.endswith("Neither is within 0.1 NUTS sd in every mean and sd.")
    met = verdict(guide("A", 1.1, 0.9), guide("B", 0.05, 0.1))
    assert met.endswith("Within 0.1 NUTS sd in every mean and sd: B.")
    split = verdict(guide("A", 0.3, 0.9), guide("B", 0.4, 0.5))
    assert split.startswith("Neither guide is closer on both counts: A has the closer means, B the closer sds")
    assert "A: mean error 0.30 sd, sd error 0.90" in split
