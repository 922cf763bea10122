"""Atomic files (soap.files): readers see the old file or the whole new one; figures embed by value."""

import base64
import os

import pytest

from soap.files import png_data_uri, write_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def half_then_fail(tmp):
        with open(tmp, "w") as handle:
            handle.write("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_a_write_lands_whole_in_new_folders_with_the_umask_permissions(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_atomic(target, lambda tmp: open(tmp, "w").write("new"))
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_png_data_uri_round_trips_the_bytes(tmp_path):
    png = tmp_path / "fig.png"
    payload = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    png.write_bytes(payload)
    uri = png_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == payload
