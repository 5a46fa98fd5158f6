"""The one atomic writer (:mod:`ievnet_bids.atomic`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ievnet_bids.atomic import staged, write_bytes_atomic, write_text_atomic


def test_writes_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.txt"
    assert write_text_atomic("é\n", target, fsync=True) == target
    assert target.read_text(encoding="utf-8") == "é\n"
    write_bytes_atomic(b"xy", target)
    assert target.read_bytes() == b"xy"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_block_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), staged(target, suffix=".nii.gz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.nii.gz"]
