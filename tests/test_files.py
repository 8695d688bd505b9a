"""The one atomic writer and the output checks that keep a user's files safe."""

from __future__ import annotations

import os
import stat

import pytest

from onnxcompress.errors import BadInputError
from onnxcompress.files import atomic_output, check_outputs, write_bytes, write_text


def test_an_output_may_not_be_an_input_by_any_name(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    hard = tmp_path / "hard.onnx"
    os.link(model, hard)
    for alias in (model, tmp_path / "sub" / ".." / "m.onnx", link, hard):
        with pytest.raises(BadInputError, match="same file as the model"):
            check_outputs([("-o", alias)], [("model", model)])
    check_outputs([("-o", tmp_path / "new.onnx")], [("model", model), ("--calib", None)])


def test_two_outputs_may_not_be_one_file(tmp_path):
    with pytest.raises(BadInputError, match="--json .* are the same file"):
        check_outputs([("-o", tmp_path / "a"), ("--json", tmp_path / "sub" / ".." / "a")])


def test_only_regular_files_are_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError, match="not a regular file"):
        check_outputs([("-o", fifo)])
    with pytest.raises(BadInputError, match="not a regular file"):
        write_text(fifo, "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with pytest.raises(BadInputError, match="a directory"):
        check_outputs([("-o", tmp_path)])


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash in the middle")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_long_name_is_written_and_os_errors_are_bad_input(tmp_path):
    long = tmp_path / ("n" * 250 + ".onnx")
    write_bytes(long, [b"ab", b"cd"])  # the temporary name stays short
    assert long.read_bytes() == b"abcd"
    with pytest.raises(BadInputError, match="name is too long"):
        write_text(tmp_path / ("n" * 300), "x")


def test_a_read_only_folder_is_bad_input(tmp_path, monkeypatch):
    import tempfile

    def denied(*a, **k):  # what a read-only folder does to a user who is not root
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(BadInputError, match="permission denied"):
        write_text(tmp_path / "x.json", "x")
    assert list(tmp_path.iterdir()) == []
