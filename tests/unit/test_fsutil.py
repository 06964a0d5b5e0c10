"""The atomic-write helper: whole files or none, temporary names no watcher loads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from nodeagent.fsutil import open_atomic, write_file_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_text_as_utf8_with_the_default_private_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_file_atomic(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_replaces_an_existing_file_with_the_given_mode(tmp_path: Path) -> None:
    target = tmp_path / "hosts"
    target.write_text("old")
    write_file_atomic(target, b"new", mode=0o644, fsync=False)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts"]


def test_the_temporary_file_is_hidden_and_ends_in_tmp(tmp_path: Path) -> None:
    target = tmp_path / "10-x.conflist"
    with open_atomic(target) as f:
        f.write(b"{}")
        during = [p.name for p in tmp_path.iterdir()]
    assert len(during) == 1
    assert during[0].startswith(".10-x.conflist.")
    assert during[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["10-x.conflist"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "allocations.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="cut"), open_atomic(target) as f:
        f.write(b"half")
        raise RuntimeError("cut")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["allocations.json"]


def test_concurrent_writers_of_one_target_use_separate_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "hosts"
    with open_atomic(target) as first, open_atomic(target) as second:
        first.write(b"first")
        second.write(b"second")
    # The outer block ends last, so its content wins; neither write was mixed into the other.
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["hosts"]


def test_a_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_file_atomic(tmp_path / "absent" / "f", "x")
    assert not (tmp_path / "absent").exists()
