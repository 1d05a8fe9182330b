"""Smoke run of benchmarks/mnist_vae.py (tiny settings): rows appended, finished rows skipped, partial runs listed."""
import json
import runpy
from pathlib import Path

import pytest

from pyro_nfvi.cli import main as nfvi

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
TINY = ["--epochs", "2", "--num-train", "100", "--num-valid", "50", "--num-test", "20", "--iwae-k", "5",
        "--best-iwae-k", "10", "--hidden", "8", "--latent-dim", "2", "--quiet"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return runpy.run_path(str(BENCHMARKS / "mnist_vae.py"), run_name="bench_mnist_vae")


def test_mnist_vae_benchmark_appends_rows_and_resumes(bench, tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--runs-only", "none:0", "iaf:2", "--out", str(out), "--runs", str(runs)] + TINY
    report = bench["main"](bench["parse_args"](argv))
    rows = report["rows"]
    assert [(r["flow"], r["num_flows"]) for r in rows] == [("none", 0), ("iaf", 2)]
    for r in rows:
        assert r["epochs_done"] == 2 and r["torch"] and r["machine"] and r["date"] and r["seconds_per_epoch"] > 0
        assert all(len(r[k]) == 2 for k in ("train_elbo", "valid_elbo", "test_elbo", "test_iwae"))
    best = min(rows, key=lambda r: r["valid_elbo"][0])
    assert best["test_iwae_best"]["k"] == 10  # every requested row finished: the best model's k = 5000 pass
    saved = json.loads((out / "mnist_vae.json").read_text())
    assert len(saved["rows"]) == 2 and saved["command"].startswith("python benchmarks/mnist_vae.py")
    md = (out / "mnist_vae.md").read_text()
    assert "| none | 0 | complete | 2 (" in md and "| iaf | 2 | complete | 2 (" in md
    assert "87.5 / 94.2 / 93.5" in md  # Henrion & Welleck's IAF K=2 row beside ours
    assert "| sylvester | 2 | not started |" in md  # --runs-only trains some rows; the table lists them all
    gain = rows[0]["test_elbo"][0] - rows[1]["test_elbo"][0]
    assert f"- iaf K=2: {gain:+.2f} nats vs the VAE ({'met' if gain >= 1 else 'missed'}; target >= 1)" in md
    for png in ("mnist_vae_curves.png", "mnist_vae_samples.png"):
        assert 1000 < (out / png).stat().st_size < 2**20
    # a later sitting: finished rows are not rerun; an unfinished run shows as partial with its epochs
    assert nfvi(["vae", "--flow", "planar", "--num-flows", "2", "--out", str(runs / "planar_K2")]
                + bench["_cli_args"](bench["parse_args"](TINY), "planar", 2, runs / "planar_K2")[5:]
                + ["--epochs", "1"]) == 0
    again = bench["main"](bench["parse_args"](argv[:1] + ["none:0", "iaf:2", "planar:2", "--report-only"] + argv[3:]))
    assert len(again["rows"]) == 2
    assert "| planar | 2 | **partial**: 1/2 epochs | 1 (1) |" in (out / "mnist_vae.md").read_text()


def test_mnist_vae_cost_script(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    mod = runpy.run_path(str(BENCHMARKS / "mnist_vae_cost.py"), run_name="bench_mnist_vae_cost")
    report = mod["main"](mod["parse_args"](["--rows", "none:0", "iaf:2", "--steps", "1", "--valid", "20",
                                            "--iwae-images", "2", "--epochs", "10", "--out", str(tmp_path)]))
    assert [(r["family"], r["K"]) for r in report["rows"]] == [("none", 0), ("iaf", 2)]
    for r in report["rows"]:
        assert r["seconds_per_epoch"] == pytest.approx(500 * r["seconds_per_step"])
        assert r["hours_per_row"] > 10 * r["seconds_per_epoch"] / 3600
    assert "| iaf | 2 |" in (tmp_path / "mnist_vae_cost.md").read_text()


def test_mnist_vae_report_lists_row_notes_and_superseded_rows(bench, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    row = {"flow": "planar", "num_flows": 2, "epochs_done": 2, "best_epoch": 2, "stopped_early": False,
           "train_seconds": 10.0, "seconds_per_epoch": 5.0, "history": [{"epoch": 1, "train": 3.0, "valid": 4.0},
                                                                          {"epoch": 2, "train": 2.0, "valid": 3.5}],
           "train_elbo": [2.0, 0.1], "valid_elbo": [3.5, 0.1], "test_elbo": [3.4, 0.1], "test_iwae": [3.0, 0.1]}
    report = {"rows": [dict(row, note="rerun with scaled hypernetworks")],
              "superseded": [dict(row, test_elbo=[3.9, 0.1], note="unscaled")], "command": "x"}
    args = bench["parse_args"](["--out", str(out), "--runs", str(tmp_path / "runs")] + TINY)
    bench["write_report"](args, report)
    md = (out / "mnist_vae.md").read_text()
    assert "| planar | 2 | complete | 2 (2) | 2.00 | 3.50 | 3.40 |" in md
    assert "- planar K=2: rerun with scaled hypernetworks" in md
    assert "- superseded, planar K=2 (test -ELBO 3.90): unscaled" in md


def test_mnist_vae_benchmark_with_flow_opts(bench, tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    argv = ["--runs-only", "coupling:1", "--flow-opts", '{"stable": true}', "--out", str(out), "--runs", str(runs)] + TINY
    report = bench["main"](bench["parse_args"](argv))
    (row,) = report["rows"]
    assert row["settings"]["flow_opts"] == {"stable": True}
    assert (runs / "coupling_K1_stable-true" / "best.pt").exists() and not (runs / "coupling_K1").exists()
    assert "--flow-opts" in json.loads((out / "mnist_vae.json").read_text())["command"]
    assert row["test_iwae_best"]["k"] == 10  # the best model reloads with its flow options
    assert "| coupling (stable=true) | 1 | complete |" in (out / "mnist_vae.md").read_text()
    # a run without the options in the same runs folder is another run: not listed as this table's partial row
    (runs / "coupling_K2").mkdir()
    assert nfvi(["vae", "--flow", "coupling", "--num-flows", "2", "--out", str(runs / "coupling_K2")]
                + bench["_cli_args"](bench["parse_args"](TINY), "coupling", 2, runs / "coupling_K2")[5:]
                + ["--epochs", "1"]) == 0
    bench["main"](bench["parse_args"](["--runs-only", "coupling:1", "coupling:2"] + argv[2:] + ["--report-only"]))
    assert "| coupling | 2 | not started |" in (out / "mnist_vae.md").read_text()


def test_mnist_vae_best_model_pass_runs_when_optional_rows_are_finished_too(bench, tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    tiny = [a if a != "10" else "0" for a in TINY]  # --best-iwae-k 0: no best-model pass while training
    argv = ["--out", str(out), "--runs", str(runs)] + tiny
    report = bench["main"](bench["parse_args"](["--runs-only", "none:0", "iaf:1"] + argv))
    assert not any("test_iwae_best" in r for r in report["rows"])
    # the table's required rows are finished, plus an optional one: the k = 5000 pass (here 10) runs
    again = bench["main"](bench["parse_args"](["--runs-only", "none:0", "--report-only"] + argv[:4] + TINY))
    assert sum("test_iwae_best" in r for r in again["rows"]) == 1
    best = min(again["rows"], key=lambda r: r["valid_elbo"][0])
    assert best["test_iwae_best"]["k"] == 10 and best["test_iwae_best"]["resumed"] is False
    name = "none_K0" if best["flow"] == "none" else "iaf_K1"
    assert (runs / name / "iwae_best_k10.pt").exists()  # the pass's finished batches, for a later sitting
