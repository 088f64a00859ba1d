"""archiver: async bulk archiver and sync daemon for stored LLM responses."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
