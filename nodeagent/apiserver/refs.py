"""The pure reference resolution now lives in ``nodeagent.model.refs``, shared with the
manifest directory (standalone ConfigMaps and Secrets). This module only keeps the old
import path, which the import-linter contract in pyproject.toml still names; import from
``nodeagent.model.refs``."""

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
