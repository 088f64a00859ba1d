"""archiver: async bulk archiver and sync daemon for stored LLM responses.

The public API for other Python code is what ``__all__`` lists; the rest is internal.
Names are imported on first use, so the CLI does not pay for what a command never needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "ArchiverError": ("archiver.errors", "ArchiverError"),
    "ExportReport": ("archiver.export", "ExportReport"),
    "export_archive": ("archiver.export", "export"),
    "MockConfig": ("archiver.mockapi", "MockConfig"),
    "start_mock_server": ("archiver.mockapi", "start_mock_server"),
    "NormalizedResponse": ("archiver.normalize", "NormalizedResponse"),
    "normalize": ("archiver.normalize", "normalize"),
    "normalize_input_items": ("archiver.normalize", "normalize_input_items"),
    "Runner": ("archiver.runner", "Runner"),
    "Settings": ("archiver.settings", "Settings"),
    "load_config": ("archiver.sources", "load_config"),
    "source_settings": ("archiver.sources", "source_settings"),
    "RunSummary": ("archiver.worker", "RunSummary"),
    "Worker": ("archiver.worker", "Worker"),
}

__all__ = [
    "ArchiverError",
    "ExportReport",
    "MockConfig",
    "NormalizedResponse",
    "RunSummary",
    "Runner",
    "Settings",
    "Worker",
    "__version__",
    "export_archive",
    "load_config",
    "normalize",
    "normalize_input_items",
    "source_settings",
    "start_mock_server",
]

if TYPE_CHECKING:
    from archiver.errors import ArchiverError
    from archiver.export import ExportReport
    from archiver.export import export as export_archive
    from archiver.mockapi import MockConfig, start_mock_server
    from archiver.normalize import NormalizedResponse, normalize, normalize_input_items
    from archiver.runner import Runner
    from archiver.settings import Settings
    from archiver.sources import load_config, source_settings
    from archiver.worker import RunSummary, Worker


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'archiver' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module_name), attribute)
