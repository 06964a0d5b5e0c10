"""Where settings come from, and how a bad one is reported: the file, environment and flag
layers of ``nodeagent.config`` and its error.

Each layer maps keys to ``Raw`` values that remember their source, so that the one parse in
``config.load_config`` can name the key and the place to fix it. The file is strict (unknown
keys are errors, with the closest key suggested); the environment takes only our
``NODEAGENT_*`` variables; a flag left out is None in the parser and never masks the others.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

import yaml

from nodeagent.configparse import Raw

ENV_PREFIX = "NODEAGENT_"


class ConfigError(ValueError):
    """A setting is missing, malformed or contradictory; the message says where it came from.

    ``key`` is None for problems with the file as a whole (unreadable, not a mapping).
    """

    def __init__(self, message: str, *, key: str | None, source: str) -> None:
        self.key = key
        self.source = source
        text = f"{key}: {message} (from {source})" if key else f"{source}: {message}"
        super().__init__(text)


def env_var(key: str) -> str:
    """The environment variable that sets ``key``: node_name -> NODEAGENT_NODE_NAME."""
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def file_layer(path: Path, keys: Collection[str]) -> dict[str, Raw]:
    """The settings of a YAML file; paths in it are relative to its directory."""
    source = f"config file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", key=None, source=source) from e
    except UnicodeDecodeError as e:
        raise ConfigError("not UTF-8 text", key=None, source=source) from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", key=None, source=source) from e
    if doc is None:  # an empty file (or only comments) configures nothing
        return {}
    if not isinstance(doc, dict):
        got = type(doc).__name__
        raise ConfigError(f"must be a mapping of settings, got {got}", key=None, source=source)
    base_dir = path.absolute().parent
    layer: dict[str, Raw] = {}
    for key, value in doc.items():
        if not isinstance(key, str) or key not in keys:
            raise ConfigError(_unknown_key_message(key, keys), key=str(key), source=source)
        layer[key] = Raw(value, source, base_dir, typed=True)
    return layer


def _unknown_key_message(key: object, keys: Collection[str]) -> str:
    message = "unknown setting"
    if isinstance(key, str):
        # The most likely typo is the flag spelling (node-name) in a file that wants node_name.
        guesses = difflib.get_close_matches(key.replace("-", "_"), list(keys), n=1)
        if guesses:
            message += f"; did you mean {guesses[0]}?"
    return message


def env_layer(environ: Mapping[str, str], keys: Collection[str]) -> dict[str, Raw]:
    """The settings of ``NODEAGENT_*`` variables (others are not ours, and ignored)."""
    cwd = Path.cwd()
    layer: dict[str, Raw] = {}
    for key in keys:
        name = env_var(key)
        if name in environ:
            layer[key] = Raw(environ[name], f"environment variable {name}", cwd, typed=False)
    return layer


def flag_layer(args: argparse.Namespace, keys: Collection[str]) -> dict[str, Raw]:
    """The settings given as flags (``nodeagent run``'s options)."""
    cwd = Path.cwd()
    layer: dict[str, Raw] = {}
    for key in keys:
        # Flags default to None in the parser, so an absent flag never masks the file or env.
        value = getattr(args, key, None)
        if value is not None:
            layer[key] = Raw(value, f"flag {flag_name(key)}", cwd, typed=False)
    return layer


def add_setting_flags(parser: argparse.ArgumentParser, settings: Iterable[Field[Any]]) -> None:
    """One option per setting (a ``Config`` field) that has a flag, in declaration order.

    Every default is None: "not given" must stay distinguishable from a value, so an absent
    flag never overrides the file or the environment. The real defaults live in Config.
    """
    for f in settings:
        s = f.metadata["setting"]
        if not s.help:
            continue
        text = s.help
        if (shown := s.shown_default if s.shown_default is not None else _shown(f)) is not None:
            text += f" (default: {shown})"
        text = text.replace("%", "%%")  # argparse formats help with %
        options: dict[str, Any] = {"help": text, "metavar": s.metavar, "choices": s.choices}
        if s.bare is not None:
            options.update(nargs="?", const=s.bare)
        parser.add_argument(flag_name(f.name), **options)


def _shown(f: Field[Any]) -> str | None:
    default = f.default
    return None if default is MISSING or default is None or default == "" else str(default)
