"""The outputs of data_drop_top_k, data_distiller and export: an existing file is kept unless --overwrite, a directory is
refused, a read-only or full disk ends in one line naming the output (nothing earlier lost, no temporary file left),
and every error line names the program as it was run."""
import errno
import os
import sys

import keras
import pytest

from keras_insightface import data, data_distiller, data_drop_top_k, export, io_utils, models
from tests.helpers import file_size_limit, make_image_folder, make_read_only, tiny_basic_model

EARLIER = b"an earlier result the user keeps"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 2-class dataset (scanned once, so its cache exists), a sub-center model of 2 classes and a basic model."""
    root = tmp_path_factory.mktemp("inputs")
    dataset = make_image_folder(str(root / "train"), num_classes=2, images_per_class=4)
    data.pre_process_folder(dataset)
    keras.utils.set_random_seed(0)
    basic_model = tiny_basic_model()
    basic_model.save(str(root / "basic.keras"))
    head = models.NormDense(2, loss_top_k=3, name="NormDense")
    keras.Model(basic_model.inputs, head(basic_model.outputs[0])).save(str(root / "topk.h5"))
    return {"dataset": dataset, "basic": str(root / "basic.keras"), "topk": str(root / "topk.h5")}


def tool_run(tool, files, output, *extra):
    """(main, argv) of `tool` writing `output`."""
    if tool == "data_drop_top_k":
        return data_drop_top_k.main, ["-M", files["topk"], "-D", files["dataset"], "-d", output, *extra]
    if tool == "data_distiller":
        return data_distiller.main, ["-M", files["basic"], "-D", files["dataset"], "-d", output, "-b", "4", *extra]
    return export.main, ["-m", files["basic"], "-o", output, "-n", "2", *extra]


OUTPUT_NAMES = {"data_drop_top_k": "cleaned.npz", "data_distiller": "embs.tfrecord", "export": "model.tflite"}
TOOLS = list(OUTPUT_NAMES)


def run_tool(main, argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(err, prog, *parts):
    """stderr ends with one line `prog: error: ...` holding `parts` (progress bars before it end in carriage returns)."""
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert line.startswith(prog + ": error: ") and err.count(": error: ") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in line, err


def hidden_files(folder):
    return [name for name in os.listdir(folder) if name.startswith(".")]


@pytest.mark.parametrize("tool", TOOLS)
def test_an_output_that_is_a_directory_is_refused(files, tmp_path, capsys, tool):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    status, out, err = run_tool(*tool_run(tool, files, str(folder)), capsys)
    assert status == 2
    assert_one_line_error(err, tool + ".py", str(folder), "is a directory")
    assert os.listdir(folder) == []


@pytest.mark.parametrize("tool", TOOLS)
def test_an_existing_output_is_kept_unless_overwrite(files, tmp_path, capsys, tool):
    output = tmp_path / OUTPUT_NAMES[tool]
    output.write_bytes(EARLIER)
    status, out, err = run_tool(*tool_run(tool, files, str(output)), capsys)
    assert status == 2
    assert_one_line_error(err, tool + ".py", str(output), "already exists", "--overwrite")
    assert output.read_bytes() == EARLIER
    assert ">>>> Image length" not in out and ">>>> Converting" not in out  # refused before any work

    status, out, err = run_tool(*tool_run(tool, files, str(output), "--overwrite"), capsys)
    assert status == 0, err
    assert output.read_bytes() != EARLIER and hidden_files(tmp_path) == []


@pytest.mark.parametrize("tool", TOOLS)
def test_a_read_only_output_folder_is_one_line_before_any_work(files, tmp_path, capsys, monkeypatch, tool):
    folder = tmp_path / "read_only"
    folder.mkdir()
    make_read_only(monkeypatch, folder)
    output = str(folder / OUTPUT_NAMES[tool])
    status, out, err = run_tool(*tool_run(tool, files, output), capsys)
    assert status == 2
    assert_one_line_error(err, tool + ".py", output + ": the file system is read-only")
    assert ">>>> Image length" not in out and ">>>> Converting" not in out
    assert os.listdir(folder) == []


@pytest.fixture()
def cached_tflite(files, monkeypatch):
    """export's conversion done before the size limit (its SavedModel step writes files of its own)."""
    content = export.to_tflite_bytes(export.load_basic_model(files["basic"]))
    monkeypatch.setattr(export, "to_tflite_bytes", lambda *args, **kwargs: content)
    return content


@pytest.mark.parametrize("tool", TOOLS)
def test_a_full_disk_keeps_the_earlier_output_and_leaves_no_temporary_file(files, tmp_path, capsys, cached_tflite, tool):
    output = tmp_path / OUTPUT_NAMES[tool]
    output.write_bytes(EARLIER)
    main, argv = tool_run(tool, files, str(output), "--overwrite")
    with file_size_limit(len(EARLIER) + 16):  # the earlier result fits, the new one does not
        status, out, err = run_tool(main, argv, capsys)
    assert status == 2
    assert_one_line_error(err, tool + ".py", str(output) + ": ")
    assert "size limit" in err or "could not be written" in err, err
    assert output.read_bytes() == EARLIER
    assert sorted(os.listdir(tmp_path)) == [OUTPUT_NAMES[tool]]  # no temporary file, no sidecar of a failed write


@pytest.mark.parametrize("tool, script", [
    ("data_drop_top_k", "keras-insightface-drop-top-k"),
    ("data_distiller", "keras-insightface-distiller"),
    ("export", "keras-insightface-export"),
])
def test_errors_name_the_console_script_as_run(files, tmp_path, capsys, monkeypatch, tool, script):
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/" + script])
    status, _, err = run_tool(*tool_run(tool, files, str(tmp_path)), capsys)
    assert status == 2
    assert_one_line_error(err, script, "is a directory")
    main, argv = tool_run(tool, files, str(tmp_path / "out"), "--no_such_flag")
    with pytest.raises(SystemExit):
        main(argv)
    assert script + ": error: unrecognized arguments: --no_such_flag" in capsys.readouterr().err


def test_an_os_error_while_writing_names_the_output_not_the_temporary_file(tmp_path):
    target = str(tmp_path / "result.npz")
    with pytest.raises(OSError) as info:
        with io_utils.atomic_path(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write() on a full disk names no file
    assert info.value.errno == errno.ENOSPC and info.value.filename == target
    with pytest.raises(OSError, match="result.npz: could not be written \\(File write failed\\)"):
        with io_utils.atomic_path(target):
            raise OSError("File write failed")  # h5py's error carries no errno
    with pytest.raises(FileNotFoundError) as info:
        with io_utils.atomic_path(target):
            open(str(tmp_path / "other" / "input.txt"))  # an error about another file stays about it
    assert info.value.filename == str(tmp_path / "other" / "input.txt")
    assert os.listdir(tmp_path) == []
