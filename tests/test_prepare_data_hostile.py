"""prepare_data on hostile input: broken RecordIO copies built from the mxnet-written fixture, output folders holding
other data or half-written files, read-only and full disks, and eval `.bin` files that need a lossless conversion.

Every case ends in a correct result or in one error line naming the file (exit status 2 on the command line); the
completion marker is written only for a folder that holds exactly the dataset.
"""
import errno
import os
import pickle
import shutil
import struct

import cv2
import numpy as np
import pytest

from keras_insightface import extraction_output, prepare_data, recordio
from tests.test_prepare_data import (
    EXPECTED, EXPECTED_FILES, copy_fixture, fixture_offsets, image_files, pack_record, patch_bytes, shuffled_images, write_idx,
    write_recordio,
)
from tests.helpers import tree_sha256


def run_cli(argv, capsys):
    """(exit status, last stderr line, whole stderr) of `prepare_data.py argv` run in this process."""
    status = prepare_data.main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    return status, err.strip().splitlines()[-1] if err.strip() else "", err


def assert_cli_error(argv, capsys, *parts):
    status, last, err = run_cli(argv, capsys)
    assert status == 2 and "Traceback" not in err, err
    assert last.startswith("prepare_data.py: error: "), err  # the reason is the last line, after any progress bar
    for part in parts:
        assert part in last, last
    return last


def shuffled_dataset(folder, images=None, with_idx=True):
    """A RecordIO dataset without header record written here: `shuffled_images()` by default."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [(key, pack_record(key, label, image)) for key, label, image in (images or shuffled_images())]
    write_recordio(folder / "train.rec", folder / "train.idx" if with_idx else None, records)
    return folder


def no_marker(save_dir):
    return not os.path.exists(os.path.join(save_dir, prepare_data.COMPLETION_MARKER))


# ---- RecordIO files that hold nothing, or not what the .idx lists ----------------------------------------------


@pytest.mark.parametrize("with_idx", [True, False], ids=["empty_idx", "no_idx"])
def test_empty_rec_is_refused(tmp_path, with_idx):
    dataset_dir = tmp_path / "empty"
    dataset_dir.mkdir()
    (dataset_dir / "train.rec").write_bytes(b"")
    if with_idx:
        (dataset_dir / "train.idx").write_text("")
    with pytest.raises(recordio.RecordIOError, match=r"empty/train.rec: holds no image records \(0 bytes"):
        prepare_data.extract_recordio(dataset_dir)
    assert not os.path.exists(prepare_data.default_save_dir(str(dataset_dir)))


@pytest.mark.parametrize("tfrecord", [False, True], ids=["folders", "shards"])
def test_empty_idx_beside_records_is_refused(tmp_path, capsys, tfrecord):
    dataset_dir = copy_fixture(tmp_path, names=("train.rec", "train.idx"))  # no property: nothing else would notice
    (dataset_dir / "train.idx").write_text("")
    assert_cli_error(["-D", dataset_dir] + (["--tfrecord"] if tfrecord else []), capsys,
                     "train.idx: lists no records, but", "train.rec holds {} bytes".format(os.path.getsize(dataset_dir / "train.rec")))
    assert not os.path.exists(str(dataset_dir) + ("_112x112_tfrecord" if tfrecord else "_112x112_folders"))


@pytest.mark.parametrize("layout", ["insightface", "shuffled"])
@pytest.mark.parametrize("missing", ["middle", "last"])
def test_idx_missing_a_line_is_refused_before_writing(tmp_path, layout, missing):
    """The records the .idx lists must tile train.rec: a key's line missing is a record nobody would extract."""
    if layout == "insightface":
        dataset_dir = copy_fixture(tmp_path, names=("train.rec", "train.idx"))
        offsets = fixture_offsets()
    else:
        dataset_dir = shuffled_dataset(tmp_path / "shuffled")
        offsets = {int(line.split("\t")[0]): int(line.split("\t")[1]) for line in open(dataset_dir / "train.idx")}
    by_offset = sorted(offsets, key=offsets.get)
    dropped = by_offset[len(by_offset) // 2] if missing == "middle" else by_offset[-1]
    write_idx(dataset_dir / "train.idx", {key: offset for key, offset in offsets.items() if key != dropped})
    with pytest.raises(recordio.RecordIOError, match=r"byte offset {}: a record starts here that .*train.idx does not list \(a missing line\?\)".format(
            offsets[dropped])):
        prepare_data.extract_recordio(dataset_dir)
    assert not os.path.exists(prepare_data.default_save_dir(str(dataset_dir)))


def test_idx_listing_a_key_twice_is_refused(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    with open(dataset_dir / "train.idx", "a") as ff:
        ff.write("7\t0\n")
    with pytest.raises(recordio.RecordIOError, match=r"train.idx, line 38: key 7 is listed again \(first on line 7\)"):
        prepare_data.extract_recordio(dataset_dir)


def test_offset_inside_another_record_is_refused(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    offsets = fixture_offsets()
    offsets[5] = offsets[4] + 8
    write_idx(dataset_dir / "train.idx", offsets)
    with pytest.raises(recordio.RecordIOError, match=r"byte offset {}: .*train.idx lists a record here, inside the record".format(offsets[5])):
        prepare_data.extract_recordio(dataset_dir)


# ---- records that do not decode, or do not fit what the dataset announces ------------------------------------


def undecodable_jpeg():
    """JPEG signature, noise, JPEG end marker: passes a signature check, decodes to nothing."""
    noise = np.random.default_rng(11).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    return b"\xff\xd8\xff\xe0" + noise + b"\xff\xd9"


@pytest.mark.parametrize("tfrecord", [False, True], ids=["folders", "shards"])
def test_undecodable_image_that_looks_like_a_jpeg_is_refused(tmp_path, capsys, tfrecord):
    images = shuffled_images()
    images[4] = (images[4][0], images[4][1], undecodable_jpeg())  # key 6
    dataset_dir = shuffled_dataset(tmp_path / "shuffled", images)
    save_dir = tmp_path / "out"
    last = assert_cli_error(["-D", dataset_dir, "-S", save_dir] + (["--tfrecord"] if tfrecord else []), capsys,
                            "train.rec: corrupt or truncated RecordIO at byte offset", "key 6: its image (3006 bytes) could not be decoded")
    written = image_files(save_dir) if not tfrecord else {}
    assert "6.jpg" not in " ".join(written) and no_marker(save_dir)
    assert not os.path.exists(save_dir / "tfrecord_shards.json"), last


def test_label_beyond_the_announced_classes_is_refused(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    offset = fixture_offsets()[7]
    patch_bytes(dataset_dir / "train.rec", offset + 8 + 4, struct.pack("<f", 6.0))  # property: 6 classes, 0 .. 5
    with pytest.raises(recordio.RecordIOError, match=r"byte offset {}: key 7: class label 6 is not below the 6 classes of .*property".format(offset)):
        prepare_data.extract_recordio(dataset_dir)


def test_label_beyond_the_header_identities_is_refused_without_property(tmp_path):
    dataset_dir = copy_fixture(tmp_path, names=("train.rec", "train.idx"))
    offset = fixture_offsets()[7]
    patch_bytes(dataset_dir / "train.rec", offset + 8 + 4, struct.pack("<f", 40.0))
    with pytest.raises(recordio.RecordIOError, match=r"key 7: class label 40 is not below the 6 classes of .*header record \(6 identities\)"):
        prepare_data.extract_recordio(dataset_dir)


def test_label_beyond_int32_is_refused(tmp_path):
    images = shuffled_images()
    images[0] = (images[0][0], 2.0**31, images[0][2])  # key 3; float32 holds 2**31 exactly
    dataset_dir = shuffled_dataset(tmp_path / "shuffled", images)
    with pytest.raises(recordio.RecordIOError, match=r"key 3: class label 2147483648 is beyond the int32 labels"):
        prepare_data.extract_recordio(dataset_dir)


def test_image_size_other_than_property_is_refused(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    (dataset_dir / "property").write_text("6,96,96")
    with pytest.raises(recordio.RecordIOError, match=r"key 1: a 112x112 image, but property says 96x96"):
        prepare_data.extract_recordio(dataset_dir)


def test_image_size_other_than_the_first_is_refused_without_property(tmp_path):
    images = shuffled_images()
    big = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    images[3] = (images[3][0], images[3][1], big)  # key 1
    dataset_dir = shuffled_dataset(tmp_path / "shuffled", images)
    with pytest.raises(recordio.RecordIOError, match=r"key 1: a 16x16 image, but the first image \(key 3\) says 8x8"):
        prepare_data.extract_recordio(dataset_dir)


# ---- files where a folder is expected, folders where a file is expected -------------------------------------------


@pytest.mark.parametrize("name", ["train.rec", "train.idx", "property"])
@pytest.mark.parametrize("mode", ["folders", "shards", "bins"])
def test_a_directory_in_place_of_a_dataset_file(tmp_path, capsys, name, mode):
    dataset_dir = copy_fixture(tmp_path)
    os.remove(dataset_dir / name)
    os.mkdir(dataset_dir / name)
    extra = {"folders": [], "shards": ["--tfrecord"], "bins": ["-T", "lfw.bin"]}[mode]
    assert_cli_error(["-D", dataset_dir] + extra, capsys, str(dataset_dir / name), "is a directory")


def test_a_directory_where_an_image_goes_is_named(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "out"
    assert prepare_data.main(["-D", str(dataset_dir), "-S", str(save_dir), "-L", "2"]) == 0
    os.makedirs(save_dir / "0" / "3.jpg")
    assert_cli_error(["-D", dataset_dir, "-S", save_dir], capsys, str(save_dir / "0" / "3.jpg"), "is a directory")
    assert no_marker(save_dir)


def test_a_file_as_output_folder_is_refused(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    (tmp_path / "out").write_text("my notes")
    assert_cli_error(["-D", dataset_dir, "-S", tmp_path / "out"], capsys, "output folder {}: is a file".format(tmp_path / "out"))
    assert (tmp_path / "out").read_text() == "my notes"


# ---- read-only and full disks -------------------------------------------------------------------------------------


def failing_replace(error_number, only=lambda dst: True):
    """An os.replace that fails as a read-only or full file system does (errno, source and target named)."""
    real_replace = os.replace

    def replace(src, dst):
        if only(os.fspath(dst)):
            raise OSError(error_number, os.strerror(error_number), os.fspath(src), None, os.fspath(dst))
        return real_replace(src, dst)

    return replace


def leftovers(folder):
    return [path for path in tree_sha256(folder) if ".tmp" in path] if os.path.isdir(folder) else []


@pytest.mark.parametrize("error_number, reason", [(errno.EROFS, "the file system is read-only"), (errno.ENOSPC, "no space left on the device")])
@pytest.mark.parametrize("mode", ["folders", "shards"])
def test_read_only_or_full_output_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, error_number, reason, mode):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "out"
    target = "4.jpg" if mode == "folders" else "train-00001-of-00004.tfrecord"
    monkeypatch.setattr(os, "replace", failing_replace(error_number, lambda dst: dst.endswith(target)))
    extra = [] if mode == "folders" else ["--tfrecord", "--shard_images", "8"]
    last = assert_cli_error(["-D", dataset_dir, "-S", save_dir] + extra, capsys, reason)
    assert last.endswith("error: {}: {}".format(os.path.join(save_dir, "0", "4.jpg") if mode == "folders" else save_dir / target, reason))
    assert not leftovers(save_dir) and no_marker(save_dir) and not os.path.exists(save_dir / "tfrecord_shards.json")
    monkeypatch.undo()
    assert prepare_data.main(["-D", str(dataset_dir), "-S", str(save_dir)] + extra) == 0  # space freed: the rerun finishes


def test_read_only_folder_fails_at_the_claim(tmp_path, capsys, monkeypatch):
    dataset_dir = copy_fixture(tmp_path)
    monkeypatch.setattr(os, "replace", failing_replace(errno.EROFS))
    save_dir = tmp_path / "out"
    assert_cli_error(["-D", dataset_dir, "-S", save_dir], capsys, "{}: the file system is read-only".format(save_dir / extraction_output.SOURCE_FILE))


def test_tensorflow_write_error_of_a_shard_is_one_line(tmp_path, capsys, monkeypatch):
    import tensorflow as tf

    class FullDiskWriter:
        def __init__(self, path):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return False

        def write(self, record):
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device\nmore detail")

    monkeypatch.setattr(tf.io, "TFRecordWriter", FullDiskWriter)
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "shards"
    assert_cli_error(["-D", dataset_dir, "-S", save_dir, "--tfrecord"], capsys,
                     "{}: cannot write the TFRecord shard (No space left on device)".format(save_dir / "train-00000-of-00001.tfrecord"))
    assert not leftovers(save_dir)


# ---- output folders that hold something else, or half-written files --------------------------------------------


def test_half_written_image_of_an_interrupted_copy_is_replaced(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = prepare_data.extract_recordio(dataset_dir)
    half = os.path.join(save_dir, "0", "4.jpg")
    with open(half, "r+b") as ff:
        ff.truncate(os.path.getsize(half) // 2)  # a copy cut off midway, the completion marker copied before it
    capsys.readouterr()
    prepare_data.extract_recordio(dataset_dir)
    out = capsys.readouterr().out
    assert "changed since its extraction" in out and "1 replaced (they differed from the records)" in out
    assert image_files(save_dir) == EXPECTED_FILES and not no_marker(save_dir)

    os.remove(os.path.join(save_dir, prepare_data.COMPLETION_MARKER))  # interrupted before the marker
    with open(half, "r+b") as ff:
        ff.truncate(100)
    prepare_data.extract_recordio(dataset_dir)
    assert "1 replaced" in capsys.readouterr().out and image_files(save_dir) == EXPECTED_FILES


@pytest.mark.parametrize("tfrecord", [False, True], ids=["folders", "shards"])
@pytest.mark.parametrize("complete", [True, False], ids=["complete", "partial"])
def test_folder_of_another_dataset_is_refused_and_untouched(tmp_path, capsys, tfrecord, complete):
    first = copy_fixture(tmp_path)
    second = shuffled_dataset(tmp_path / "shuffled")
    save_dir = tmp_path / "out"
    extra = ["--tfrecord"] if tfrecord else []
    assert prepare_data.main(["-D", str(first), "-S", str(save_dir)] + extra) == 0
    if not complete:
        os.remove(save_dir / ("tfrecord_shards.json" if tfrecord else prepare_data.COMPLETION_MARKER))
    before = tree_sha256(save_dir)
    assert_cli_error(["-D", second, "-S", save_dir] + extra, capsys, "{}: holds the extraction of {}".format(save_dir, first / "train.rec"),
                     "not of {}".format(second / "train.rec"))
    assert tree_sha256(save_dir) == before


@pytest.mark.parametrize("first", ["folders", "shards"])
def test_folders_and_shards_of_one_dataset_never_share_a_folder(tmp_path, capsys, first):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "out"
    shards = ["--tfrecord"]
    assert prepare_data.main(["-D", str(dataset_dir), "-S", str(save_dir)] + (shards if first == "shards" else [])) == 0
    before = tree_sha256(save_dir)
    held, asked = ("image folders", "TFRecord shards") if first == "folders" else ("TFRecord shards", "image folders")
    assert_cli_error(["-D", dataset_dir, "-S", save_dir] + (shards if first == "folders" else []), capsys,
                     "{}: holds the {} of {}; choose another output folder (-S) for its {}".format(save_dir, held, dataset_dir / "train.rec", asked))
    assert tree_sha256(save_dir) == before


@pytest.mark.parametrize("tfrecord", [False, True], ids=["folders", "shards"])
def test_non_empty_folder_without_a_claim_is_refused_and_untouched(tmp_path, capsys, tfrecord):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "mine"
    (save_dir / "0").mkdir(parents=True)
    (save_dir / "0" / "photo.jpg").write_bytes(b"my own photo")
    (save_dir / "train-00000-of-00001.tfrecord").write_bytes(b"my own records")
    before = tree_sha256(save_dir)
    assert_cli_error(["-D", dataset_dir, "-S", save_dir] + (["--tfrecord"] if tfrecord else []), capsys,
                     "{}: not empty (2 entries, e.g. 0) and not an extraction of".format(save_dir))
    assert tree_sha256(save_dir) == before


def test_foreign_image_in_the_dataset_folder_blocks_the_completion_marker(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = prepare_data.extract_recordio(dataset_dir, limit=3)
    foreign = os.path.join(save_dir, "0", "mine.jpg")
    shutil.copyfile(os.path.join(save_dir, "0", "1.jpg"), foreign)
    with pytest.raises(ValueError, match=r"holds 1 image file\(s\) that are no record of .*train.rec \(e.g. 0/mine.jpg\)"):
        prepare_data.extract_recordio(dataset_dir)
    assert no_marker(save_dir) and os.path.exists(foreign)


def test_stale_shards_of_an_interrupted_conversion_are_replaced(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "shards"
    prepare_data.write_tfrecord_shards(dataset_dir, save_dir, shard_images=4)
    os.remove(save_dir / "tfrecord_shards.json")  # interrupted before the description
    prepare_data.write_tfrecord_shards(dataset_dir, save_dir, shard_images=8)
    assert "Removed 8 shard file(s) of an interrupted earlier conversion" in capsys.readouterr().out
    assert sorted(name for name in os.listdir(save_dir) if name.endswith(".tfrecord")) == [
        "train-0000{}-of-00004.tfrecord".format(ii) for ii in range(4)]


def test_changed_shard_set_is_converted_again(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "shards"
    prepare_data.write_tfrecord_shards(dataset_dir, save_dir, shard_images=8)
    shard = save_dir / "train-00001-of-00004.tfrecord"
    whole = shard.read_bytes()
    shard.write_bytes(whole[:-10])
    capsys.readouterr()
    prepare_data.write_tfrecord_shards(dataset_dir, save_dir, shard_images=8)
    assert "truncated or changed" in capsys.readouterr().out and shard.read_bytes() == whole


# ---- -T: eval .bin files --------------------------------------------------------------------------------------------


def cfp_style_bin(path, encode=".png", bad_index=None):
    """A .bin of uint8 arrays of encoded 24x24 images (as CFP-FP / AgeDB-30 store them), 2 pairs; returns the pixels."""
    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(4)]
    arrays = [cv2.imencode(encode, picture)[1] for picture in pictures]
    if bad_index is not None:
        arrays[bad_index] = np.frombuffer(undecodable_jpeg(), np.uint8)
    with open(path, "wb") as ff:
        pickle.dump((arrays, np.array([True, False])), ff, protocol=2)
    return pictures


def test_undecodable_array_image_is_named_by_pair_and_index(tmp_path, capsys):
    cfp_style_bin(tmp_path / "cfp.bin", bad_index=3)
    original = (tmp_path / "cfp.bin").read_bytes()
    assert_cli_error(["-D", tmp_path, "-T", "cfp.bin"], capsys,
                     "{}: pair 1, image 2 of 2 (index 3) (3006 bytes) could not be decoded as an image".format(tmp_path / "cfp.bin"))
    assert (tmp_path / "cfp.bin").read_bytes() == original and sorted(os.listdir(tmp_path)) == ["cfp.bin"]


@pytest.mark.parametrize("encode", [".png", ".bmp"])
def test_png_bin_keeps_its_pixels_and_the_original(tmp_path, capsys, encode):
    pictures = cfp_style_bin(tmp_path / "cfp.bin", encode)
    original = (tmp_path / "cfp.bin").read_bytes()
    status, _, err = run_cli(["-D", tmp_path, "-T", "cfp.bin"], capsys)
    assert status == 0, err
    with open(tmp_path / "cfp.bin", "rb") as ff:
        bins, issame = pickle.load(ff)
    assert issame == [True, False]
    for image, picture in zip(bins, pictures):
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED), picture)
    assert (tmp_path / "cfp.orig.bin").read_bytes() == original


def test_existing_copy_of_another_original_is_kept_unless_overwrite(tmp_path, capsys):
    cfp_style_bin(tmp_path / "cfp.bin")
    original = (tmp_path / "cfp.bin").read_bytes()
    (tmp_path / "cfp.orig.bin").write_bytes(b"an earlier original")
    assert_cli_error(["-D", tmp_path, "-T", "cfp.bin"], capsys, "copy of the original .bin {}: already exists; it is kept (pass --overwrite".format(
        tmp_path / "cfp.orig.bin"))
    assert (tmp_path / "cfp.orig.bin").read_bytes() == b"an earlier original" and (tmp_path / "cfp.bin").read_bytes() == original
    assert prepare_data.main(["-D", str(tmp_path), "-T", "cfp.bin", "--overwrite"]) == 0
    assert (tmp_path / "cfp.orig.bin").read_bytes() == original


def test_directory_in_place_of_the_copy_is_refused_even_with_overwrite(tmp_path, capsys):
    cfp_style_bin(tmp_path / "cfp.bin")
    (tmp_path / "cfp.orig.bin").mkdir()
    assert_cli_error(["-D", tmp_path, "-T", "cfp.bin", "--overwrite"], capsys, "cfp.orig.bin: is a directory")


def test_conversion_interrupted_after_the_copy_resumes(tmp_path, monkeypatch):
    cfp_style_bin(tmp_path / "cfp.bin")
    original = (tmp_path / "cfp.bin").read_bytes()
    monkeypatch.setattr(os, "replace", failing_replace(errno.ENOSPC, lambda dst: dst.endswith("cfp.bin") and not dst.endswith("orig.bin")))
    with pytest.raises(OSError, match="cfp.bin"):
        prepare_data.convert_bin(tmp_path / "cfp.bin")
    monkeypatch.undo()
    assert (tmp_path / "cfp.bin").read_bytes() == original == (tmp_path / "cfp.orig.bin").read_bytes()
    assert not leftovers(tmp_path)
    assert prepare_data.convert_bin(tmp_path / "cfp.bin") is True  # the copy is the original itself: no --overwrite needed
    assert (tmp_path / "cfp.orig.bin").read_bytes() == original


def test_fixture_bins_convert_keeping_the_original(tmp_path):
    dataset_dir = copy_fixture(tmp_path, names=("cfp_fp.bin",))
    original = (dataset_dir / "cfp_fp.bin").read_bytes()
    assert prepare_data.convert_bin(dataset_dir / "cfp_fp.bin") is True
    assert (dataset_dir / "cfp_fp.orig.bin").read_bytes() == original
    with open(dataset_dir / "cfp_fp.bin", "rb") as ff:
        assert pickle.load(ff)[1] == EXPECTED["cfp_fp_issame"]


# ---- arguments and small files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, part", [
    (["-L", "-1"], "-L/--limit: expected a number of images >= 0 (0: all), got -1"),
    (["--tfrecord", "--shard_images", "0"], "--shard_images: expected a number of images per shard > 0, got 0"),
    (["-T", "."], "faces_rec/.: is a directory"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, part):
    dataset_dir = copy_fixture(tmp_path)
    assert_cli_error(["-D", dataset_dir] + argv, capsys, part)
    assert not os.path.exists(prepare_data.default_save_dir(str(dataset_dir)))


@pytest.mark.parametrize("text", ["0,112,112", "6,-1,112", "6,112"])
def test_malformed_property_is_named_before_the_long_work(tmp_path, capsys, text):
    dataset_dir = copy_fixture(tmp_path)
    (dataset_dir / "property").write_text(text)
    assert_cli_error(["-D", dataset_dir], capsys, "{}: expected".format(dataset_dir / "property"), repr(text))
    assert not os.path.exists(prepare_data.default_save_dir(str(dataset_dir)))
