"""Smoke test of examples/energy.py (imported from its path)."""
import math

from load_example import load_example


def test_energy_example_runs(tmp_path, capsys):
    plot = tmp_path / "energy.png"
    fits = load_example("energy").main(["--targets", "U1", "U3", "--num-flows", "1", "2", "--steps", "20", "--samples", "16",
                         "--eval-samples", "500", "--plot", str(plot)])
    assert [(f.target, f.num_flows) for f in fits] == [("U1", 1), ("U1", 2), ("U3", 1), ("U3", 2)]
    assert all(math.isfinite(f.bound) and math.isfinite(f.kl) for f in fits)
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith(("U1 ", "U3 "))]
    assert len(table) == 4 + 4  # one progress line and one table row per fit
    assert plot.stat().st_size > 1000
