"""Property-based and bounds tests of the manifest file source's read/parse entry point.

``read_file`` must never raise: random bytes, random text and valid manifests with random
edits (a character inserted, deleted or replaced; the file cut short) end in pods, services
and errors, each error naming the file and either the whole file or the object and field.
Hostile shapes are bounded: a file over the size limit (a setting), YAML alias bombs and deep
nesting are errors that say so, found quickly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeagent.sources.file import MAX_DEPTH, MAX_NODES, FileResult, read_file
from tests.harness.manifests import full_pod, full_service

FUZZ = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
EDIT_CHARS = [*" \n\t:-[]{}&*!|>'\"#%@`,?", "x", "0", "\x00"]
CONFIG_USER = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "user"},
    "spec": {
        "containers": [
            {
                "name": "main",
                "image": "busybox",
                "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}}
                ],
                "envFrom": [{"secretRef": {"name": "sec"}}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}],
            }
        ],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "a", "path": "a"}]}}
        ],
    },
}
CONFIGS = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a": "1"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"}, "stringData": {"b": "2"}},
]
VALID = yaml.safe_dump_all([full_pod(), full_service(), CONFIG_USER, *CONFIGS], sort_keys=False)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def read(directory: Path, content: bytes | str, suffix: str = ".yaml", **kw: int) -> FileResult:
    path = directory / f"m{suffix}"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    result = read_file(path, node_name="node-1", **kw)
    for error in result.errors:
        assert error.source == str(path)
        assert error.message
        # Either the file as a whole, or an object and (for validation) its field.
        assert error.object == "file" or error.object
    return result


@st.composite
def edited(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        char = draw(st.sampled_from(EDIT_CHARS))
        if how == "insert":
            text = text[:at] + char + text[at:]
        elif how == "delete":
            text = text[:at] + text[at + 1 :]
        elif how == "replace":
            text = text[:at] + char + text[at + 1 :]
        else:
            text = text[:at]
    return text


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_source(workdir: Path, content: bytes) -> None:
    read(workdir, content)


@FUZZ
@given(st.text(max_size=300), st.sampled_from([".yaml", ".json"]))
def test_random_text_never_crashes_the_source(workdir: Path, content: str, suffix: str) -> None:
    read(workdir, content, suffix)


@FUZZ
@given(edited())
def test_edited_manifests_never_crash_and_errors_name_where(workdir: Path, text: str) -> None:
    result = read(workdir, text)
    # Whatever survived the edit parses into objects or is reported; nothing vanishes silently.
    assert result.pods or result.services or result.errors or not text.strip()


def test_the_valid_manifest_is_valid(workdir: Path) -> None:
    result = read(workdir, VALID)
    assert not result.errors and len(result.pods) == 1 and len(result.services) == 1
    assert len(result.templates) == 1 and len(result.configs) == 2


def test_a_file_over_the_size_limit_is_an_error_naming_the_limit(workdir: Path) -> None:
    result = read(workdir, VALID, max_bytes=100)
    assert not result.parsed and not result.pods
    assert "larger than the limit of 100 bytes" in result.errors[0].message
    assert read(workdir, VALID, max_bytes=len(VALID.encode()) + 1).pods


def billion_laughs(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused(workdir: Path) -> None:
    # Expanded, this is 10^10 strings: a source that walked it would never return.
    result = read(workdir, billion_laughs())
    assert not result.parsed
    assert f"more than {MAX_NODES} nodes" in result.errors[0].message


def test_modest_aliases_still_work(workdir: Path) -> None:
    text = VALID.replace("labels:\n    app: web", "labels: &l\n    app: web", 1)
    assert read(workdir, text).pods


def test_a_recursive_alias_is_refused(workdir: Path) -> None:
    result = read(workdir, "a: &a [*a]\n")
    assert not result.parsed and "nested deeper" in result.errors[0].message


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deep_nesting_is_refused(workdir: Path, depth: int, suffix: str) -> None:
    result = read(workdir, "[" * depth + "]" * depth, suffix)
    assert not result.parsed
    assert f"nested deeper than {MAX_DEPTH} levels" in result.errors[0].message
