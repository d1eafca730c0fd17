"""dsv: Deep Support Vectors of a trained classifier (DeepKKT, Lee et al., NeurIPS 2024)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dsv")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

from dsv.errors import ConfigError, DsvError, NonFiniteLossError, StoreError  # noqa: E402

__all__ = ["ConfigError", "DsvError", "NonFiniteLossError", "StoreError", "__version__"]
