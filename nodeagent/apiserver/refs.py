"""The pure reference resolution now lives in ``nodeagent.model.refs``, shared with the
manifest directory (standalone ConfigMaps and Secrets); this module keeps the API side's
import path (and the import-linter contract that names it)."""

from nodeagent.model.refs import (
    CONFIG_ERROR,
    MOUNT_ERROR,
    Files,
    Lookup,
    RefError,
    Refs,
    TokenSpec,
    files_for,
    needs_rewrite,
    references,
    rewrite,
    supported,
    volume_dir,
)

__all__ = [
    "CONFIG_ERROR",
    "MOUNT_ERROR",
    "Files",
    "Lookup",
    "RefError",
    "Refs",
    "TokenSpec",
    "files_for",
    "needs_rewrite",
    "references",
    "rewrite",
    "supported",
    "volume_dir",
]
