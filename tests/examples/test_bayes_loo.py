"""Smoke test of examples/bayes_loo.py (imported from its path) with tiny arguments."""
import math

from load_example import load_example


def test_bayes_loo_example_runs(capsys):
    example = load_example("bayes_loo")
    results = example.main(example.parse_args(["--steps", "20", "--draws", "200"]))
    assert set(results) == {"AutoNormal", "AutoMultivariateNormal", "AutoFlowGuide(iaf)"}
    assert all(math.isfinite(v) for pair in results.values() for v in pair)
    assert "NUTS reference elpd_loo" in capsys.readouterr().out
