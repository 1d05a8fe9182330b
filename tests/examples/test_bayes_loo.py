"""Smoke test of examples/bayes_loo.py (imported from its path) with tiny arguments."""
import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "bayes_loo.py"


def _load():
    spec = importlib.util.spec_from_file_location("example_bayes_loo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bayes_loo_example_runs(capsys):
    example = _load()
    results = example.main(example.parse_args(["--steps", "20", "--draws", "200"]))
    assert set(results) == {"AutoNormal", "AutoMultivariateNormal", "AutoFlowGuide(iaf)"}
    assert all(math.isfinite(v) for pair in results.values() for v in pair)
    assert "NUTS reference elpd_loo" in capsys.readouterr().out
