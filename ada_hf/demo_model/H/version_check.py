"""Fail early, and clearly, on a transformers version the model code was not tested with."""

from __future__ import annotations

import transformers
from packaging.version import Version

# The decoder loop and cache handling rely on transformers internals (output capture, cache layers, masks).
MIN_TRANSFORMERS = "5.23.0"
MAX_TRANSFORMERS_EXCLUSIVE = "5.24.0"


def check_transformers_version(version: str | None = None) -> None:
    """Raise ImportError unless transformers is within the tested range."""
    found = Version(version or transformers.__version__)
    if not Version(MIN_TRANSFORMERS) <= found < Version(MAX_TRANSFORMERS_EXCLUSIVE):
        raise ImportError(
            f"ada_hf's model code was tested with transformers >={MIN_TRANSFORMERS},<{MAX_TRANSFORMERS_EXCLUSIVE}, "
            f"but transformers {found} is installed. Run: pip install 'transformers>={MIN_TRANSFORMERS},"
            f"<{MAX_TRANSFORMERS_EXCLUSIVE}'"
        )
