"""The package version, in one place (``pyro_nfvi.__version__`` and the guides' fingerprints read it)."""
__all__ = ["__version__"]

__version__ = "0.1.0"
