"""Root pytest configuration: skip collecting modules whose optional extra is not installed."""
import importlib.util

collect_ignore = []
if importlib.util.find_spec("lightning") is None:  # pyro_nfvi[lightning] not installed
    collect_ignore += ["pyro_nfvi/lightning.py", "tests/lightning_ddp_script.py"]
