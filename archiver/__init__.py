"""archiver: async bulk archiver and sync daemon for stored LLM responses.

The public API for other Python code is what ``__all__`` lists; the rest is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from archiver.errors import ArchiverError
from archiver.export import ExportReport, export
from archiver.mockapi import MockConfig, start_mock_server
from archiver.normalize import NormalizedResponse, normalize, normalize_input_items
from archiver.settings import Settings
from archiver.worker import RunSummary, Worker

__all__ = [
    "ArchiverError",
    "ExportReport",
    "MockConfig",
    "NormalizedResponse",
    "RunSummary",
    "Settings",
    "Worker",
    "__version__",
    "export",
    "normalize",
    "normalize_input_items",
    "start_mock_server",
]
