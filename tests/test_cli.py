"""The shared command-line behaviour: one line per user error (OS errors named by file and reason), the name the tool
was run by, and outputs that are kept unless --overwrite."""
import errno
import os
import sys

import pytest

from keras_insightface import cli


@pytest.mark.parametrize("error, line", [
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/a.jpg"), "out/a.jpg: no space left on the device"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/x.bin"), "/ro/x.bin: the file system is read-only"),
    (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "train.rec"), "train.rec: is a directory, a file was expected"),
    (FileNotFoundError("Model file not found: m.h5"), "Model file not found: m.h5"),
    (ValueError("two\nlines"), "two lines"),
])
def test_a_user_error_is_one_line_naming_the_file(capsys, error, line):
    def fail():
        raise error

    assert cli.run("tool.py", fail) == 2
    assert capsys.readouterr().err == "tool.py: error: {}\n".format(line)


def test_the_console_script_name_is_the_prog(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/keras-insightface-drop-top-k", "-M", "x"])
    assert cli.prog_name("data_drop_top_k.py") == "keras-insightface-drop-top-k"
    monkeypatch.setattr(sys, "argv", ["data_drop_top_k.py"])
    assert cli.prog_name("data_drop_top_k.py") == "data_drop_top_k.py"


def test_an_existing_output_is_kept_unless_overwrite(tmp_path):
    existing = tmp_path / "result.csv"
    existing.write_text("earlier")
    with pytest.raises(FileExistsError, match="--overwrite"):
        cli.check_output_file(str(existing))
    assert cli.check_output_file(str(existing), overwrite=True) == str(existing)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        cli.check_output_file(str(tmp_path))
    with pytest.raises(NotADirectoryError):
        cli.check_output_file(str(existing / "inside.csv"))
    assert existing.read_text() == "earlier"
