"""Tests of recordio.py and prepare_data.py against the mxnet-written fixture and RecordIO files written here."""
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from keras_insightface import extraction_output, face_io, io_utils
from keras_insightface import prepare_data
from keras_insightface import recordio
from tests.helpers import tree_sha256

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "data", "faces_rec")
MAGIC = struct.pack("<I", 0xCED7230A)

with open(os.path.join(FIXTURE, "expected.json")) as _ff:
    EXPECTED = json.load(_ff)
EXPECTED_FILES = {"{}/{}.jpg".format(rr["label"], rr["key"]): rr["sha256"] for rr in EXPECTED["records"]}
MARKERS = [prepare_data.COMPLETION_MARKER, extraction_output.SOURCE_FILE]


# ---- helpers ---------------------------------------------------------------------------------------------


def copy_fixture(tmp_path, names=("train.rec", "train.idx", "property", "lfw.bin", "cfp_fp.bin")):
    dataset_dir = tmp_path / "faces_rec"
    dataset_dir.mkdir()
    for name in names:
        shutil.copyfile(os.path.join(FIXTURE, name), dataset_dir / name)
    return dataset_dir


def image_files(folder):
    return {path: sha for path, sha in tree_sha256(folder).items() if not os.path.basename(path).startswith(".")}


def pack_record(key, label, image):
    """An image payload as mxnet.recordio.pack makes it: `<IfQQ` header, float32 labels when flag > 0, image."""
    if isinstance(label, (tuple, list)):
        return struct.pack("<IfQQ", len(label), 0.0, key, 0) + struct.pack("<{}f".format(len(label)), *label) + image
    return struct.pack("<IfQQ", 0, float(label), key, 0) + image


def write_recordio(rec_path, idx_path, records):
    """Write (key, payload) records the way dmlc's RecordIOWriter does; returns the number of parts written.

    The payload is cut at every 4-byte-aligned copy of the magic, which is dropped; the parts are written
    with continue flags 1 / 2 / 3 (0 for a whole record), and zero padding to 4 bytes follows the last part.
    """
    num_parts = 0
    with open(rec_path, "wb") as rec, (open(idx_path, "w") if idx_path else open(os.devnull, "w")) as idx:
        for key, payload in records:
            idx.write("{}\t{}\n".format(key, rec.tell()))
            cuts = [ii for ii in range(0, len(payload) - len(payload) % 4, 4) if payload[ii : ii + 4] == MAGIC]
            starts, ends = [0] + [ii + 4 for ii in cuts], cuts + [len(payload)]
            parts = [payload[start:end] for start, end in zip(starts, ends)]
            for nn, part in enumerate(parts):
                cflag = 0 if len(parts) == 1 else 1 if nn == 0 else 3 if nn == len(parts) - 1 else 2
                rec.write(MAGIC + struct.pack("<I", (cflag << 29) | len(part)) + part)
            rec.write(b"\0" * (-len(payload) % 4))
            num_parts += len(parts)
    return num_parts


def small_picture(seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def jpeg_with_comment(seed, comment=b""):
    """A decodable JPEG whose bytes 6 .. hold `comment` (a COM segment right after the start marker FF D8, its
    big-endian length at bytes 4-5), so that image byte i >= 6 is comment byte i - 6."""
    jpeg = cv2.imencode(".jpg", small_picture(seed))[1].tobytes()
    if not comment:
        return jpeg
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def shuffled_images():
    """(key, label, image bytes) in file order: no header record, key 0 an image with array labels,
    payloads holding the magic at aligned places (multi-part, magic right after the image signature,
    magic at the end: an empty last part) and at an unaligned place (no cut), lengths not multiple of 4
    (padding). Images are decodable 8x8 JPEGs (the magic inside a comment segment) or a PNG."""
    rng = np.random.default_rng(7)

    def noise(size):
        return rng.integers(0, 256, size, dtype=np.uint8).tobytes().replace(MAGIC, b"\0\0\0\0")

    png = cv2.imencode(".png", small_picture(5))[1].tobytes()
    magic_after_signature = jpeg_with_comment(2, MAGIC[2:] + noise(struct.unpack(">H", MAGIC[:2])[0] - 4))  # length bytes 0A 23
    assert magic_after_signature[4:8] == MAGIC
    return [
        (3, 1, jpeg_with_comment(3)),
        (0, (2.0, 0.25), jpeg_with_comment(0, noise(38) + MAGIC + MAGIC + noise(15) + MAGIC + noise(9))),  # bytes 44, 48; 67 unaligned
        (5, 0, png + b"\0" * (-len(png) % 4) + MAGIC),  # ends with the magic: an empty last part
        (1, (0.0, 1.0, 5.0), jpeg_with_comment(1, noise(2) + MAGIC + noise(101))),  # byte 8
        (6, 2, jpeg_with_comment(6)),
        (2, (1.0,), magic_after_signature),
        (4, 2, jpeg_with_comment(4)),
    ]


def class_of_label(label):
    return int(label[0]) if isinstance(label, tuple) else int(label)


# ---- extraction of the mxnet-written fixture -------------------------------------------------------------


def test_extract_fixture_matches_expected(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = prepare_data.extract_recordio(str(dataset_dir) + "/")
    assert save_dir == str(tmp_path / "faces_rec_112x112_folders")
    assert image_files(save_dir) == EXPECTED_FILES
    assert sorted(os.listdir(save_dir)) == sorted(MARKERS + [str(cc) for cc in range(EXPECTED["num_classes"])])
    assert ">>>> " in capsys.readouterr().out


def test_extract_without_idx_scans_sequentially(tmp_path):
    dataset_dir = copy_fixture(tmp_path, names=("train.rec", "property"))
    save_dir = prepare_data.extract_recordio(dataset_dir, save_dir=tmp_path / "out")
    assert image_files(save_dir) == EXPECTED_FILES


def test_reader_by_key_and_header_record():
    with recordio.RecordReader(os.path.join(FIXTURE, "train.rec")) as reader:
        header, image = recordio.read_image(reader, reader.offsets[0])
        assert header.flag > 0 and image == b""
        assert recordio.image_keys(reader) == [rr["key"] for rr in EXPECTED["records"]]
        for rr in EXPECTED["records"][:3]:
            header, image = recordio.unpack(reader.read_key(rr["key"]))
            assert recordio.class_of(header) == rr["label"]
            assert hashlib.sha256(image).hexdigest() == rr["sha256"]


def test_rerun_skips_work_done(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = prepare_data.extract_recordio(dataset_dir)
    inodes = {path: os.stat(os.path.join(save_dir, path)).st_ino for path in EXPECTED_FILES}

    capsys.readouterr()
    prepare_data.extract_recordio(dataset_dir)
    assert "skipping dataset conversion" in capsys.readouterr().out
    assert {path: os.stat(os.path.join(save_dir, path)).st_ino for path in EXPECTED_FILES} == inodes

    # An interrupted run (no completion marker, one image missing) only writes what is missing.
    os.remove(os.path.join(save_dir, prepare_data.COMPLETION_MARKER))
    removed = sorted(EXPECTED_FILES)[4]
    os.remove(os.path.join(save_dir, removed))
    prepare_data.extract_recordio(dataset_dir)
    assert "(1 written, {} already there)".format(len(EXPECTED_FILES) - 1) in capsys.readouterr().out
    assert image_files(save_dir) == EXPECTED_FILES
    assert all(os.stat(os.path.join(save_dir, path)).st_ino == inode for path, inode in inodes.items() if path != removed)


def test_limit_extracts_first_images_without_marker(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = prepare_data.extract_recordio(dataset_dir, limit=4)
    assert image_files(save_dir) == {path: sha for path, sha in EXPECTED_FILES.items() if path in {"0/1.jpg", "0/2.jpg", "0/3.jpg", "0/4.jpg"}}
    assert not os.path.exists(os.path.join(save_dir, prepare_data.COMPLETION_MARKER))


def test_property_class_count_mismatch_is_an_error(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    (dataset_dir / "property").write_text("7,112,112")
    with pytest.raises(ValueError, match="property.*num_classes=7.*6 classes"):
        prepare_data.extract_recordio(dataset_dir)
    assert not os.path.exists(os.path.join(prepare_data.default_save_dir(str(dataset_dir)), prepare_data.COMPLETION_MARKER))


# ---- corrupt input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", [("train.rec", "train.idx"), ("train.rec",)], ids=["idx", "no_idx"])
def test_truncated_rec_fails_before_writing_naming_file_and_offset(tmp_path, names):
    dataset_dir = copy_fixture(tmp_path, names=names)
    rec_path = dataset_dir / "train.rec"
    cut = 100000
    with open(rec_path, "r+b") as ff:
        ff.truncate(cut)
    offsets = sorted(int(line.split("\t")[1]) for line in open(os.path.join(FIXTURE, "train.idx")) if line.strip())
    cut_record = max(offset for offset in offsets if offset < cut)  # the record the cut falls into
    assert cut_record == 93876

    with pytest.raises(recordio.RecordIOError) as error:
        prepare_data.extract_recordio(dataset_dir)
    assert str(error.value).startswith(str(rec_path) + ":") and "byte offset {}".format(cut_record) in str(error.value)
    assert not os.path.exists(prepare_data.default_save_dir(str(dataset_dir)))


def test_corrupt_record_head_midway_is_found_before_writing(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    with open(dataset_dir / "train.rec", "r+b") as ff:
        ff.seek(93876)  # key 12 in train.idx
        ff.write(b"\0\0\0\0")
    with pytest.raises(recordio.RecordIOError, match="train.rec: .* byte offset 93876: bad magic 0x00000000"):
        prepare_data.extract_recordio(dataset_dir)
    assert not os.path.exists(prepare_data.default_save_dir(str(dataset_dir)))


def test_undecodable_image_midway_leaves_only_complete_files(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    offset = fixture_offsets()[12]
    patch_bytes(dataset_dir / "train.rec", offset + 8 + 24 + 600, bytes(200))  # inside the JPEG data: signature and end kept
    with pytest.raises(recordio.RecordIOError, match=r"train.rec: .* byte offset {}: key 12: its image \(\d+ bytes\) could not be decoded".format(offset)):
        prepare_data.extract_recordio(dataset_dir)
    on_disk = tree_sha256(prepare_data.default_save_dir(str(dataset_dir)))  # hidden temporary files included
    expected = {path: sha for path, sha in EXPECTED_FILES.items() if int(path.split("/")[1][:-4]) < 12}
    assert {path: sha for path, sha in on_disk.items() if path != extraction_output.SOURCE_FILE} == expected
    assert extraction_output.SOURCE_FILE in on_disk and prepare_data.COMPLETION_MARKER not in on_disk


def test_idx_pointing_past_the_end_is_an_error(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    with open(dataset_dir / "train.idx", "a") as ff:
        ff.write("37\t999999\n")
    with pytest.raises(recordio.RecordIOError, match="train.rec: .* byte offset 999999: .*train.idx"):
        prepare_data.extract_recordio(dataset_dir)


def test_missing_rec_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.rec"):
        prepare_data.extract_recordio(tmp_path)


# ---- records that are not what the index and header say: refused before the completion marker -----------


def fixture_offsets():
    return {int(line.split("\t")[0]): int(line.split("\t")[1]) for line in open(os.path.join(FIXTURE, "train.idx")) if line.strip()}


def patch_bytes(path, offset, data):
    with open(path, "r+b") as ff:
        ff.seek(offset)
        ff.write(data)


def write_idx(path, offsets):
    with open(path, "w") as ff:
        ff.writelines("{}\t{}\n".format(key, offset) for key, offset in offsets.items())


def assert_refused(dataset_dir, match, error=recordio.RecordIOError):
    with pytest.raises(error, match=match):
        prepare_data.extract_recordio(dataset_dir)
    assert not os.path.exists(os.path.join(prepare_data.default_save_dir(str(dataset_dir)), prepare_data.COMPLETION_MARKER))


@pytest.mark.parametrize("change", ["swapped", "duplicated"])
def test_idx_offset_of_another_record_is_an_error(tmp_path, change):
    dataset_dir = copy_fixture(tmp_path)
    offsets = fixture_offsets()
    if change == "swapped":
        offsets[4], offsets[5] = offsets[5], offsets[4]
    else:
        offsets[5] = offsets[4]
    write_idx(dataset_dir / "train.idx", offsets)
    assert_refused(dataset_dir, r"byte offset \d+: .*train.idx lists key [45] here, but the record's header id is [45]")


@pytest.mark.parametrize("damage", ["flipped", "shortened"])
def test_payload_that_is_no_whole_image_is_an_error(tmp_path, damage):
    dataset_dir = copy_fixture(tmp_path)
    offset = fixture_offsets()[3]
    rec_path = dataset_dir / "train.rec"
    if damage == "flipped":
        patch_bytes(rec_path, offset + 8 + 24, b"\x00")  # first byte of the JPEG signature
        message = r"byte offset {}: key 3: .* not a whole JPEG"
    else:
        with open(rec_path, "rb") as ff:
            ff.seek(offset + 4)
            lrec = struct.unpack("<I", ff.read(4))[0]
        patch_bytes(rec_path, offset + 4, struct.pack("<I", lrec - 100))  # 100 image bytes fewer
        end = offset + 8 + ((lrec - 100 + 3) & ~3)
        message = r"byte offset {{}}: key 3: the record ends at byte {}, where no record starts; the next one .*train.idx lists is at {} \(a damaged length"
        message = message.format(end, fixture_offsets()[4])
    assert_refused(dataset_dir, message.format(offset))
    if damage == "shortened":  # the .idx and the record lengths disagree: found before anything is written
        assert not os.path.exists(prepare_data.default_save_dir(str(dataset_dir)))


@pytest.mark.parametrize("first_id", [1.0, 10.0, 40.0])
def test_corrupted_header_count_without_property_is_an_error(tmp_path, first_id):
    dataset_dir = copy_fixture(tmp_path, names=("train.rec", "train.idx"))
    patch_bytes(dataset_dir / "train.rec", fixture_offsets()[0] + 8 + 24, struct.pack("<f", first_id))  # header labels (a, b) = (31, 37)
    assert_refused(dataset_dir, "train.rec: .*(header|holds)")


def test_rec_without_idx_cut_at_a_record_boundary_is_an_error(tmp_path):
    dataset_dir = copy_fixture(tmp_path, names=("train.rec", "property"))
    with open(dataset_dir / "train.rec", "r+b") as ff:
        ff.truncate(fixture_offsets()[15])
    assert_refused(dataset_dir, "train.rec: images are keyed from 1 .* no header record .* 14 images found")


def test_rec_without_idx_missing_images_is_an_error(tmp_path):
    dataset_dir = copy_fixture(tmp_path, names=("train.rec",))
    offsets = fixture_offsets()
    with open(dataset_dir / "train.rec", "rb") as ff:
        data = ff.read()
    with open(dataset_dir / "train.rec", "wb") as ff:
        ff.write(data[: offsets[15]] + data[offsets[16] :])  # record 15 dropped, the header record kept
    assert_refused(dataset_dir, "train.rec: the header record announces 30 images, but the file holds 29")


@pytest.mark.parametrize("names", [("train.rec", "train.idx"), ("train.rec",)], ids=["idx", "no_idx"])
def test_header_count_larger_than_the_file_is_an_error(tmp_path, names):
    dataset_dir = copy_fixture(tmp_path, names=names)
    patch_bytes(dataset_dir / "train.rec", fixture_offsets()[0] + 8 + 24, struct.pack("<ff", 1e9, 1e9 + 6))
    assert_refused(dataset_dir, r"byte offset \d+: header record announces \d+ records, but \d+ bytes hold at most")


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_label_is_an_error_with_the_offset(tmp_path, value):
    dataset_dir = copy_fixture(tmp_path)
    offset = fixture_offsets()[7]
    patch_bytes(dataset_dir / "train.rec", offset + 8 + 4, struct.pack("<f", value))
    assert_refused(dataset_dir, r"byte offset {}: label (inf|nan) is not a finite number".format(offset))


def test_negative_idx_offset_is_an_error(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    offsets = fixture_offsets()
    offsets[9] = -8
    write_idx(dataset_dir / "train.idx", offsets)
    assert_refused(dataset_dir, r"train.idx, line 9: negative byte offset -8 for key 9")


def test_temporary_names_are_no_images_and_leftovers_are_removed(tmp_path, monkeypatch):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "out"
    temporary_names = []
    real_replace = os.replace

    def killed_after_first_write(src, dst):
        if not dst.endswith(".jpg"):
            return real_replace(src, dst)  # the claim of the folder
        temporary_names.append(os.path.basename(src))
        raise KeyboardInterrupt  # the kill at the first image: the temporary file is left behind by a real one

    monkeypatch.setattr(os, "replace", killed_after_first_write)
    monkeypatch.setattr(os, "remove", lambda path: None)  # a kill runs no cleanup
    with pytest.raises(KeyboardInterrupt):
        prepare_data.extract_recordio(dataset_dir, save_dir)
    monkeypatch.undo()
    assert temporary_names and not any(face_io.is_image_file(name) or name.lower().endswith(face_io.IMAGE_EXTENSIONS) for name in temporary_names)
    (save_dir / "0" / ".1.jpg.abc123.tmp.jpg").write_bytes(b"half")  # the older naming, ending in .jpg
    assert len(tree_sha256(save_dir)) == 3  # the claim and two temporary files

    prepare_data.extract_recordio(dataset_dir, save_dir)
    files = tree_sha256(save_dir)
    assert {path: sha for path, sha in files.items() if path not in MARKERS} == EXPECTED_FILES
    assert real_replace is os.replace


# ---- shuffled RecordIO without header, written here ------------------------------------------------------


@pytest.mark.parametrize("with_idx", [True, False])
def test_shuffled_multipart_array_labels(tmp_path, with_idx):
    images = shuffled_images()
    dataset_dir = tmp_path / "shuffled"
    dataset_dir.mkdir()
    records = [(key, pack_record(key, label, image)) for key, label, image in images]
    write_recordio(dataset_dir / "train.rec", dataset_dir / "train.idx" if with_idx else None, records)
    assert os.path.getsize(dataset_dir / "train.rec") % 4 == 0

    save_dir = prepare_data.extract_recordio(dataset_dir)
    expected = {"{}/{}.jpg".format(class_of_label(label), key): hashlib.sha256(image).hexdigest() for key, label, image in images}
    assert image_files(save_dir) == expected


def test_multipart_payloads_read_back_whole(tmp_path):
    records = [(key, pack_record(key, label, image)) for key, label, image in shuffled_images()]
    num_parts = write_recordio(tmp_path / "a.rec", tmp_path / "a.idx", records)
    assert num_parts == len(records) + 2 + 1 + 1 + 1  # the cuts of keys 0 (two), 5, 1 and 2
    with recordio.RecordReader(tmp_path / "a.rec") as reader:
        assert [reader.read_key(key) for key, _ in records] == [payload for _, payload in records]
        assert [payload for _, payload in reader.scan()] == [payload for _, payload in records]
        header, _ = recordio.unpack(reader.read_key(1))
        assert header.flag == 3 and header.label == (0.0, 1.0, 5.0) and header.id == 1


def test_duplicate_ids_without_idx_are_keyed_by_position(tmp_path):
    images = shuffled_images()[:4]
    records = [(key, pack_record(0, label, image)) for key, label, image in images]  # every header id is 0
    write_recordio(tmp_path / "train.rec", None, records)
    save_dir = prepare_data.extract_recordio(tmp_path, save_dir=tmp_path / "out")
    expected = {"{}/{}.jpg".format(class_of_label(label), position): hashlib.sha256(image).hexdigest() for position, (_, label, image) in enumerate(images)}
    assert image_files(save_dir) == expected


# ---- eval .bin conversion --------------------------------------------------------------------------------


def test_convert_cfp_fp_bin(tmp_path):
    import tensorflow as tf

    dataset_dir = copy_fixture(tmp_path, names=("cfp_fp.bin",))
    bin_path = dataset_dir / "cfp_fp.bin"
    with open(bin_path, "rb") as ff:
        before_bins, _ = pickle.load(ff, encoding="bytes")  # the trusted fixture
    assert all(isinstance(image, np.ndarray) for image in before_bins)

    assert prepare_data.convert_bin(bin_path) is True
    with open(bin_path, "rb") as ff:
        after_bins, after_issame = pickle.load(ff)
    assert after_issame == EXPECTED["cfp_fp_issame"]
    assert len(after_bins) == len(before_bins) == 2 * len(after_issame)
    for before, after in zip(before_bins, after_bins):
        assert isinstance(after, bytes)
        pixels = tf.image.decode_jpeg(after).numpy()
        assert pixels.shape == (112, 112, 3)
        np.testing.assert_array_equal(pixels, tf.image.decode_jpeg(before.tobytes()).numpy())

    converted = bin_path.read_bytes()
    mtime = os.stat(bin_path).st_mtime_ns
    assert prepare_data.convert_bin(bin_path) is False
    assert bin_path.read_bytes() == converted and os.stat(bin_path).st_mtime_ns == mtime


def test_convert_lfw_bin_is_a_noop(tmp_path):
    dataset_dir = copy_fixture(tmp_path, names=("lfw.bin",))
    bin_path = dataset_dir / "lfw.bin"
    original, mtime = bin_path.read_bytes(), os.stat(bin_path).st_mtime_ns
    assert prepare_data.convert_bin(bin_path) is False
    assert bin_path.read_bytes() == original and os.stat(bin_path).st_mtime_ns == mtime


def test_convert_is_lossless_for_png_and_other_encodings(tmp_path):
    """PNG is kept byte for byte, a BMP becomes a PNG of the very same pixels (decoded before and after), the original
    file is kept as <name>.orig.bin."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:32, 0:32]
    pictures = [np.stack([yy * 8, xx * 8, (yy + xx) * 4], axis=-1).astype(np.uint8) for _ in range(2)]
    pictures[1] = np.clip(pictures[1].astype(int) + rng.integers(-3, 4, pictures[1].shape), 0, 255).astype(np.uint8)
    png = cv2.imencode(".png", pictures[0])[1]  # uint8 array of a PNG, as cfp_fp stores arrays
    bmp = cv2.imencode(".bmp", pictures[1])[1].tobytes()  # raw bytes of a BMP
    bin_path = tmp_path / "mixed.bin"
    with open(bin_path, "wb") as ff:
        pickle.dump(([png, bmp], np.array([True])), ff, protocol=2)
    original = bin_path.read_bytes()

    assert prepare_data.convert_bin(bin_path) is True
    with open(bin_path, "rb") as ff:
        bins, issame = pickle.load(ff)
    assert issame == [True] and all(isinstance(image, bytes) for image in bins)
    assert bins[0] == png.tobytes()
    assert bins[1].startswith(b"\x89PNG\r\n\x1a\n")
    for image, picture in zip(bins, pictures):
        decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decoded, picture)  # both BGR, as cv2 wrote them: not a single pixel changed
    assert (tmp_path / "mixed.orig.bin").read_bytes() == original
    assert prepare_data.convert_bin(bin_path) is False  # plain PNG bytes now: nothing to do


def test_convert_refuses_undecodable_image(tmp_path):
    bin_path = tmp_path / "bad.bin"
    with open(bin_path, "wb") as ff:
        pickle.dump(([b"\xff\xd8\xff\xe0" + b"\0" * 80, b"not an image" * 8], [False]), ff, protocol=4)
    original = bin_path.read_bytes()
    with pytest.raises(ValueError, match=r"bad.bin: pair 0, image 1 of 2 \(index 0\) \(84 bytes\) could not be decoded"):
        prepare_data.convert_bin(bin_path)  # starts like a JPEG: refused all the same
    assert bin_path.read_bytes() == original and os.listdir(tmp_path) == ["bad.bin"]


def test_malicious_bin_is_refused_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch {}".format(sentinel),))

    bin_path = tmp_path / "evil.bin"
    with open(bin_path, "wb") as ff:
        pickle.dump(([Exploit(), b"\xff\xd8\xff"], [True]), ff)
    original = bin_path.read_bytes()
    with pytest.raises(io_utils.UnsafePickleError, match="evil.bin"):
        prepare_data.convert_bin(bin_path)
    assert not sentinel.exists() and bin_path.read_bytes() == original


# ---- the command line ------------------------------------------------------------------------------------


def test_cli(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    save_dir = tmp_path / "folders"
    command = [sys.executable, os.path.join(REPO, "prepare_data.py"), "-D", str(dataset_dir), "-S", str(save_dir), "-T", "cfp_fp.bin", str(dataset_dir / "lfw.bin")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ">>>> Converted" in result.stdout and ">>>> Extracting" in result.stdout
    assert image_files(save_dir) == EXPECTED_FILES
    with open(dataset_dir / "cfp_fp.bin", "rb") as ff:
        assert all(isinstance(image, bytes) for image in pickle.load(ff)[0])

    missing = subprocess.run(command[:-3] + ["-T", "agedb_30.bin"], capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "agedb_30.bin" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_is_executable_and_the_flat_name_is_the_package_module():
    assert os.access(os.path.join(REPO, "prepare_data.py"), os.X_OK)
    with open(os.path.join(REPO, "prepare_data.py")) as ff:
        assert ff.readline() == "#!/usr/bin/env python3\n"
    code = "import prepare_data, keras_insightface.prepare_data as package_module; assert prepare_data is package_module"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


# ---- TFRecord shards (--tfrecord) -------------------------------------------------------------------------


def shard_pairs(save_dir):
    """[(label, sha256 of the image bytes)] of every record of the shards listed in the description, in order."""
    import tensorflow as tf

    with open(os.path.join(save_dir, "tfrecord_shards.json")) as ff:
        files = [os.path.join(save_dir, shard["file"]) for shard in json.load(ff)["shards"]]
    pairs = []
    for record in tf.data.TFRecordDataset(files):
        example = tf.train.Example.FromString(record.numpy())
        image = example.features.feature["image"].bytes_list.value[0]
        pairs.append((example.features.feature["label"].int64_list.value[0], hashlib.sha256(image).hexdigest()))
    return pairs


def test_tfrecord_shards_hold_the_records_of_the_folder_extraction(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    shards_dir = prepare_data.write_tfrecord_shards(dataset_dir, shard_images=8)
    assert shards_dir == str(dataset_dir) + "_112x112_tfrecord"
    pairs = shard_pairs(shards_dir)
    assert pairs == [(rr["label"], rr["sha256"]) for rr in EXPECTED["records"]]  # mxnet's own record order
    folders = prepare_data.extract_recordio(dataset_dir)
    assert sorted(pairs) == sorted((int(path.split("/")[0]), sha) for path, sha in image_files(folders).items())
    with open(os.path.join(shards_dir, "tfrecord_shards.json")) as ff:
        description = json.load(ff)
    assert [shard["images"] for shard in description["shards"]] == [8, 8, 8, 6]
    assert [shard["file"] for shard in description["shards"]][-1] == "train-00003-of-00004.tfrecord"
    assert (description["num_classes"], description["total_images"], description["height"], description["width"]) == (
        EXPECTED["num_classes"], EXPECTED["num_images"], 112, 112)


def test_tfrecord_description_is_written_only_after_the_counts_check(tmp_path):
    dataset_dir = copy_fixture(tmp_path)
    (dataset_dir / "property").write_text("7,112,112")
    with pytest.raises(ValueError, match="num_classes=7"):
        prepare_data.write_tfrecord_shards(dataset_dir, shard_images=8)
    shards_dir = str(dataset_dir) + "_112x112_tfrecord"
    assert os.listdir(shards_dir) and not os.path.exists(os.path.join(shards_dir, "tfrecord_shards.json"))
    (dataset_dir / "property").write_text("6,112,112")
    prepare_data.write_tfrecord_shards(dataset_dir, shard_images=8)  # a rerun converts again and completes
    assert len(shard_pairs(shards_dir)) == EXPECTED["num_images"]


def test_tfrecord_cli_refuses_limit(tmp_path, capsys):
    dataset_dir = copy_fixture(tmp_path)
    assert prepare_data.main(["-D", str(dataset_dir), "--tfrecord", "-L", "3"]) == 2
    assert "--tfrecord" in capsys.readouterr().err
