"""Smoke runs of the benchmark scripts (tiny settings): they run and write their JSON and markdown."""
import json
import runpy
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def script(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name):
        return runpy.run_path(str(BENCHMARKS / f"{name}.py"), run_name=f"bench_{name}")

    return load


def test_construction_script(script, tmp_path):
    mod = script("construction")
    report = mod["main"](mod["parse_args"](["--dims", "5", "--families", "planar", "iaf", "--out", str(tmp_path)]))
    guides = [r["guide"] for r in report["rows"]]
    assert guides == ["planar", "iaf", "pyro AutoIAFNormal"]
    assert json.loads((tmp_path / "construction.json").read_text())["command"].startswith("python benchmarks/")
    assert "| 5 | iaf |" in (tmp_path / "construction.md").read_text()


def test_stability_script(script, tmp_path):
    mod = script("stability")
    argv = ["--models", "eight_schools_noncentered", "ar5", "--seeds", "1", "--steps", "105", "--lrs", "0.01",
            "--guides", "planar", "AutoNormal", "--out", str(tmp_path)]
    report = mod["main"](mod["parse_args"](argv))
    assert [(r["model"], r["guide"]) for r in report["rows"]] == [
        ("eight_schools_noncentered", "planar"), ("eight_schools_noncentered", "AutoNormal"),
        ("ar5", "planar"), ("ar5", "AutoNormal")]
    assert all(r["steps"] == 105 and r["diverged_at"] is None for r in report["rows"])
    md = (tmp_path / "stability_models.md").read_text()
    assert "| eight_schools_noncentered | planar | 0/1" in md and "| ar5 | AutoNormal | 0/1" in md
    # a rerun skips the finished runs; a second seed adds only its own
    again = mod["main"](mod["parse_args"](["--models", "ar5", "--seeds", "2"] + argv[5:]))
    assert len(again["rows"]) == 6 and sum(r["seed"] == 1 for r in again["rows"]) == 2


def test_the_guide_names_of_the_stability_script(script):
    mod = script("stability")
    model, _ = mod["MODELS"]["eight_schools_noncentered"]()
    assert mod["make_guide"]("iaf (sinh_arcsinh)", model).marginals == "sinh_arcsinh"
    assert mod["make_guide"]("planar (gaussian)", model).marginals == "gaussian"
    assert mod["make_guide"]("iaf (affine)", model)._flow_opts["output_scale"] == "none"
    with pytest.raises(SystemExit, match="unknown guide form 'skewed'"):
        mod["make_guide"]("iaf (skewed)", model)


def test_the_divergence_criterion(script):
    divergence = script("stability")["divergence"]
    slow = [1000.0 - i for i in range(300)]  # still converging: never above an earlier level
    assert divergence(slow, 100.0)[0] is None
    noisy = [200.0] * 300
    noisy[150] = 5000.0  # one bad ELBO draw: the rolling median ignores it
    assert divergence(noisy, 100.0)[:2] == (None, 0.0)
    blown = [200.0] * 100 + [900.0] * 200  # the parameters blew up and stayed up
    at, rise, trace = divergence(blown, 100.0)
    assert at == 124 and rise == 700.0  # half the window above: the median is 550 and trace[0] == 200.0
    assert divergence([200.0, float("nan")], 100.0)[0] == 1
    early = [47000.0 - 10 * i + (400.0 if 60 <= i < 90 else 0.0) for i in range(300)]  # noise at 47k nats
    assert divergence(early, 100.0)[0] is None


def test_nuts_reference_script(script, tmp_path):
    from pyro_nfvi.targets.reference import load_reference

    mod = script("nuts_reference")
    args = mod["parse_args"](["--models", "ar5", "--chains", "2", "--warmup", "20", "--samples", "30",
                              "--max-draws", "40", "--out", str(tmp_path), "--results", str(tmp_path)])
    report = mod["main"](args)
    assert [r["model"] for r in report["rows"]] == ["ar5"]
    ref = load_reference(tmp_path / "ar5.npz")
    assert ref.draws["phi"].shape == (30, 5) and ref.info["thin"] == 2 and ref.info["source"] == "nuts"
    assert ref.info["nuts"]["seconds"] > 0
    assert "| ar5 | nuts |" in (tmp_path / "nuts_reference.md").read_text()


def test_amortized_stability_script(script, tmp_path):
    mod = script("amortized_stability")
    args = mod["parse_args"](["--seeds", "1", "--steps", "105", "--lrs", "0.01", "--families", "none",
                              "--n", "200", "--out", str(tmp_path)])
    report = mod["main"](args)
    assert [r["family"] for r in report["rows"]] == ["none"]
    assert all(r["steps"] == 105 and r["diverged_at"] is None for r in report["rows"])
    assert "| none | 0/1" in (tmp_path / "amortized_stability.md").read_text()


def test_estimators_script(script, tmp_path):
    mod = script("estimators")
    args = mod["parse_args"](["--reps", "4", "--families", "none", "--particles", "3", "--settings", "near",
                              "--out", str(tmp_path)])
    report = mod["main"](args)
    assert [(r["estimator"], r["num_particles"]) for r in report["rows"]] == [("STL", 1), ("DReG", 3)]
    assert all(r["var_estimator"] >= 0 and r["var_baseline"] > 0 for r in report["rows"])
    assert "| none | near | STL vs Trace_ELBO | 1 |" in (tmp_path / "estimators.md").read_text()


def test_soak_script(script, tmp_path):
    mod = script("soak")
    args = mod["parse_args"](["--seeds", "1", "--steps", "20", "--families", "planar", "--targets", "U1",
                              "--eval-samples", "200", "--grid", "50", "--models", "funnel", "--lrs", "0.01",
                              "--vae-epochs", "1", "--vae-seeds", "1", "--vae-families", "none",
                              "--vae-num-train", "100", "--out", str(tmp_path)])
    report = mod["main"](args)
    assert [(r["part"], r["config"]) for r in report["rows"]] == [
        ("energy", "U1 planar"), ("bayes", "funnel lr=0.01 FastSVI guard on"),
        ("bayes", "funnel lr=0.01 SVI guard off"), ("vae", "VAE none")]
    assert all(r["error"] is None and r["nonfinite_losses"] == 0 for r in report["rows"])
    assert [r["steps"] for r in report["rows"]] == [20, 20, 20, 1]
    text = (tmp_path / "soak.md").read_text()
    assert "reduced setting" in text and "| energy | U1 planar | 1 | 20 | 0 (0) | 0 | 0 |  |" in text


def test_bayes_script(script, tmp_path):
    mod = script("bayes")
    args = mod["parse_args"](["--models", "ar5", "--guides", "AutoNormal", "recipe", "--seeds", "1", "--recipe-seeds", "1",
                              "--steps", "60", "--lrs", "0.01", "--particles", "2", "--draws", "100",
                              "--out", str(tmp_path / "a")])
    report = mod["main"](args)
    assert [(r["guide"], r["seed"]) for r in report["rows"]] == [("AutoNormal", 0), ("recipe", 0)]
    assert all(r["cpu_seconds"] > 0 and "mean_err" in r for r in report["rows"])
    table = (tmp_path / "a" / "bayes.md").read_text()
    assert "| ar5 | NUTS (nuts) |" in table and "| ar5 | recipe | " in table
    merged = mod["main"](mod["parse_args"](["--merge", str(tmp_path / "a" / "bayes.json"), "--out", str(tmp_path / "b")]))
    assert merged["rows"] == report["rows"]
    compiled = mod["main"](mod["parse_args"](["--models", "ar5", "--guides", "recipe", "--seeds", "1", "--recipe-seeds", "1",
                                              "--steps", "60", "--lrs", "0.01", "--particles", "2", "--draws", "100",
                                              "--jit", "--out", str(tmp_path / "c")]))
    assert compiled["rows"][0]["cpu_seconds"] > 0 and "--jit" in (tmp_path / "c" / "bayes.md").read_text()


def test_energy_script_resumes_and_writes_the_table(script, tmp_path, capsys):
    mod = script("energy")
    argv = ["--targets", "U1", "--families", "planar", "pyro_planar", "--num-flows", "2", "--steps", "20",
            "--samples", "8", "--eval-samples", "200", "--out", str(tmp_path)]
    report = mod["main"](mod["parse_args"](argv))
    rows = report["rows"]
    assert [(r["family"], r["num_flows"], r["steps"], r["anneal_steps"]) for r in rows] == [
        ("planar", 2, 20, 20), ("pyro_planar", 2, 20, 20)]
    assert all(r["kl"] == r["log_z"] - r["bound"] and r["ms_per_step"] > 0 and r["cpu_ms_per_step"] > 0 for r in rows)
    assert [[h[0] for h in r["history"]] for r in rows] == [[20], [20]]  # (step, beta, bound) every 1000 steps and at the end
    stored = json.loads((tmp_path / "energy.json").read_text())
    assert stored["rows"] == rows and stored["command"].startswith("python benchmarks/energy.py --targets U1")
    # a second sitting skips the rows already there and adds only the new K
    capsys.readouterr()
    again = mod["main"](mod["parse_args"](argv[:6] + ["2", "3"] + argv[7:]))
    assert "U1 planar K=2: already in" in capsys.readouterr().out
    assert [(r["family"], r["num_flows"]) for r in again["rows"]] == [
        ("planar", 2), ("pyro_planar", 2), ("planar", 3), ("pyro_planar", 3)]
    assert again["rows"][:2] == rows
    table = (tmp_path / "energy.md").read_text()
    assert "| U1 | planar | 3 | 20 |" in table and "| U1 | Pyro AutoNormalizingFlow (planar) | 2 | 20 |" in table
    assert 1000 < (tmp_path / "energy_grid.png").stat().st_size < 1_000_000
    for family in ("planar", "pyro_planar"):  # one figure per family: targets x K
        assert 1000 < (tmp_path / f"energy_grid_{family}.png").stat().st_size < 1_000_000
    # a diverged fit is a row too: its error and its record up to the failure, "diverged" in the table
    diverged = mod["main"](mod["parse_args"](["--targets", "U1", "--families", "planar", "--num-flows", "2",
                                              "--steps", "1001", "--samples", "8", "--eval-samples", "200",
                                              "--lr", "1e5", "--out", str(tmp_path)]))["rows"][-1]
    assert diverged["bound"] is None and "diverged" in diverged["error"] and "kl" not in diverged
    assert isinstance(diverged["history"], list)
    assert "| U1 | planar | 2 | 1001 | diverged |" in (tmp_path / "energy.md").read_text()
    stored = json.loads((tmp_path / "energy.json").read_text())["rows"]
    best = mod["best_rows"](stored)
    assert mod["panel_title_and_counts"](best[("U1", "planar", 2)], "planar", 2, {}) == ("planar K=2", "diverged")
    # the same cell again: skipped; with --rerun-diverged run again, appended and reported
    argv_diverged = ["--targets", "U1", "--families", "planar", "--num-flows", "2", "--steps", "1001", "--samples", "8",
                     "--eval-samples", "200", "--lr", "1e5", "--out", str(tmp_path)]
    assert len(mod["main"](mod["parse_args"](argv_diverged))["rows"]) == len(stored)
    rerun = mod["main"](mod["parse_args"](argv_diverged + ["--rerun-diverged"]))["rows"]
    assert len(rerun) == len(stored) + 1 and rerun[-1]["command"].endswith("--rerun-diverged")
    with pytest.raises(SystemExit):
        mod["parse_args"](["--final-lr", "0"])


def test_step_time_script(script, tmp_path):
    mod = script("step_time")
    argv = ["--models", "eight_schools_noncentered", "--modes", "jit", "eager", "--warmup", "2", "--steps", "2",
            "--rounds", "2", "--particles", "2", "--out", str(tmp_path)]
    report = mod["main"](mod["parse_args"](argv))
    assert [(r["model"], r["mode"]) for r in report["rows"]] == [
        ("eight_schools_noncentered", "jit"), ("eight_schools_noncentered", "eager")]
    assert all(len(r["ms_per_step"]) == 2 and 0 < r["fastest"] <= r["median"] for r in report["rows"])
    assert "| eight_schools_noncentered | jit | dreg | 2 |" in (tmp_path / "step_time.md").read_text()
