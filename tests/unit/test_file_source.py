"""The manifest directory (nodeagent.sources.file): parsing, merging, and scanning."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nodeagent.sources.file import DesiredState, FileResult, FileSource, merge, read_file


def pod_yaml(name: str, *, image: str = "busybox:1.36", namespace: str = "default") -> str:
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
spec:
  containers:
    - name: app
      image: {image}
"""


SERVICE_YAML = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    # Make every rewrite visible to the (mtime, size, inode) check even within one clock tick.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    return path


class Recorder:
    def __init__(self) -> None:
        self.updates: list[DesiredState] = []

    def __call__(self, state: DesiredState) -> None:
        self.updates.append(state)


def source(directory: Path) -> tuple[FileSource, Recorder]:
    recorder = Recorder()
    return FileSource(directory, node_name="node-1", on_update=recorder), recorder


# --- read_file ----------------------------------------------------------------------------------


def test_multi_document_yaml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pods.yaml",
        pod_yaml("a") + "---\n" + pod_yaml("b", namespace="ns2") + "---\n---\n" + SERVICE_YAML,
    )
    result = read_file(path, node_name="node-1")
    assert result.errors == ()
    assert result.parsed
    assert [p.key for p in result.pods] == ["default/a", "ns2/b"]
    assert [s.key for s in result.services] == ["default/web"]
    assert {p.source for p in result.pods} == {str(path)}


def test_json_object_and_list(tmp_path: Path) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "j"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }
    single = write(tmp_path / "one.json", json.dumps(pod))
    assert [p.name for p in read_file(single, node_name="n").pods] == ["j"]
    second = {**pod, "metadata": {"name": "k"}}
    listed = write(tmp_path / "list.json", json.dumps({"kind": "List", "items": [pod, second]}))
    assert [p.name for p in read_file(listed, node_name="n").pods] == ["j", "k"]


def test_malformed_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n")
    result = read_file(path, node_name="n")
    assert not result.parsed
    assert result.pods == ()
    (error,) = result.errors
    assert error.source == str(path)
    assert "malformed YAML" in error.message


def test_malformed_json_is_an_error(tmp_path: Path) -> None:
    result = read_file(write(tmp_path / "bad.json", '{"kind": "Pod",'), node_name="n")
    assert not result.parsed
    assert "malformed JSON" in result.errors[0].message


def test_an_invalid_document_spoils_only_itself(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mixed.yaml",
        pod_yaml("good") + "---\n" + pod_yaml("bad", image="") + "---\n- just\n- a list\n",
    )
    result = read_file(path, node_name="n")
    assert result.parsed
    assert [p.name for p in result.pods] == ["good"]
    fields = {(e.object, e.field) for e in result.errors}
    assert ("Pod default/bad", "spec.containers[0].image") in fields
    assert ("document 3", "") in fields
    assert all(e.source == str(path) for e in result.errors)


def test_unknown_kind_is_an_error(tmp_path: Path) -> None:
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
    result = read_file(write(tmp_path / "d.yaml", text), node_name="n")
    assert result.pods == () and result.services == ()
    (error,) = result.errors
    assert (error.object, error.field) == ("Deployment default/d", "kind")


def test_unreadable_file_never_raises(tmp_path: Path) -> None:
    result = read_file(tmp_path / "missing.yaml", node_name="n")
    assert not result.parsed
    assert "cannot read" in result.errors[0].message
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert not read_file(binary, node_name="n").parsed


# --- merge --------------------------------------------------------------------------------------


def test_duplicate_name_is_an_error_for_the_later_file(tmp_path: Path) -> None:
    first = read_file(write(tmp_path / "a.yaml", pod_yaml("web")), node_name="n")
    second = read_file(write(tmp_path / "b.yaml", pod_yaml("web", image="nginx:1")), node_name="n")
    state = merge({str(tmp_path / "b.yaml"): second, str(tmp_path / "a.yaml"): first})
    assert state.pods["default/web"] == first.pods[0]
    (error,) = state.errors
    assert error.source == str(tmp_path / "b.yaml")
    assert error.field == "metadata.name"
    assert str(tmp_path / "a.yaml") in error.message


def test_merge_of_nothing() -> None:
    assert merge({}) == DesiredState()
    assert merge({"x": FileResult()}) == DesiredState()


# --- FileSource.scan ----------------------------------------------------------------------------


async def test_scan_reads_manifests_and_ignores_dot_files(tmp_path: Path) -> None:
    write(tmp_path / "web.yaml", pod_yaml("web"))
    write(tmp_path / "svc.yml", SERVICE_YAML)
    write(tmp_path / ".hidden.yaml", pod_yaml("hidden"))
    write(tmp_path / ".web.yaml.swp", "garbage: [")
    write(tmp_path / "notes.txt", "not a manifest")
    (tmp_path / "dir.yaml").mkdir()
    src, updates = source(tmp_path)
    assert await src.scan()
    assert list(src.state.pods) == ["default/web"]
    assert list(src.state.services) == ["default/web"]
    assert src.state.errors == ()
    assert updates.updates == [src.state]
    # Nothing changed: no new update.
    assert not await src.scan()
    assert len(updates.updates) == 1


async def test_an_empty_directory_still_reports_once(tmp_path: Path) -> None:
    src, updates = source(tmp_path)
    assert await src.scan()
    assert updates.updates == [DesiredState()]


async def test_duplicate_across_files_keeps_the_first(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", pod_yaml("web"))
    write(tmp_path / "b.yaml", pod_yaml("web", image="nginx:1"))
    src, _ = source(tmp_path)
    await src.scan()
    assert src.state.pods["default/web"].spec.containers[0].image == "busybox:1.36"
    assert [e.source for e in src.state.errors] == [str(tmp_path / "b.yaml")]


async def test_half_written_file_keeps_its_previous_pods(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yaml", pod_yaml("web") + "---\n" + pod_yaml("db"))
    src, updates = source(tmp_path)
    await src.scan()
    before = dict(src.state.pods)
    assert set(before) == {"default/web", "default/db"}

    # An editor or a copy caught mid-write: the tail of the file is missing.
    full = path.read_text()
    write(path, full[: full.index("name: db") - 10] + "  name: 'd")
    assert await src.scan()
    assert dict(src.state.pods) == before
    (error,) = src.state.errors
    assert error.source == str(path)
    assert "malformed YAML" in error.message
    assert updates.updates[-1] == src.state

    # Written in full again: the error goes away, the pods stay the same ones.
    write(path, full)
    assert await src.scan()
    assert dict(src.state.pods) == before
    assert src.state.errors == ()


async def test_a_file_broken_from_the_start_contributes_only_its_error(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", "kind: [")
    src, _ = source(tmp_path)
    await src.scan()
    assert src.state.pods == {}
    assert len(src.state.errors) == 1


async def test_edit_replaces_the_pod_and_removal_drops_it(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yaml", pod_yaml("web"))
    write(tmp_path / "other.yaml", pod_yaml("other"))
    src, _ = source(tmp_path)
    await src.scan()
    old_uid = src.state.pods["default/web"].uid

    write(path, pod_yaml("web", image="busybox:1.37"))
    assert await src.scan()
    assert src.state.pods["default/web"].uid != old_uid

    path.unlink()
    assert await src.scan()
    assert list(src.state.pods) == ["default/other"]


async def test_removing_a_broken_file_clears_its_error(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "kind: [")
    src, _ = source(tmp_path)
    await src.scan()
    assert src.state.errors
    bad.unlink()
    assert await src.scan()
    assert src.state.errors == ()


async def test_unknown_kind_in_a_scanned_file(tmp_path: Path) -> None:
    write(tmp_path / "web.yaml", pod_yaml("web"))
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n"
    write(tmp_path / "deploy.yaml", deployment)
    src, _ = source(tmp_path)
    await src.scan()
    assert list(src.state.pods) == ["default/web"]
    (error,) = src.state.errors
    assert (error.source, error.field) == (str(tmp_path / "deploy.yaml"), "kind")
    assert error.object == "Deployment default/d"
    assert "Deployment is not supported in standalone mode" in error.message
