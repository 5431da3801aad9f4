"""The MoE data model, backend registry and selection with reasons, reference experts, the QuantizedMoE module and the CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("moe-oracle")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"
