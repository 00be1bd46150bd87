"""The output folder of a dataset extraction (`prepare_data.py`): whose it is, and whether it is complete.

An extraction claims its folder before writing into it: `.extraction_source.json` records the source `train.rec`
and its fingerprint (byte size, first and last MiB, the `.idx` beside it). A rerun continues a folder claimed by the
same source (a moved copy of it too); a folder claimed by another source, or a non-empty folder nobody claimed, is
refused, so that no two datasets are ever mixed and nothing found there is deleted. A completion record (the folder
extraction's `.extraction_complete.json`, the shard set's `tfrecord_shards.json`) is written last and names the
same fingerprint.

Usage:
    identity = extraction_output.source_identity("/datasets/faces_emore/train.rec")
    extraction_output.claim("/datasets/faces_emore_112x112_folders", identity, "folders")
"""
import hashlib
import json
import os

from . import io_utils

SOURCE_FILE = ".extraction_source.json"
FINGERPRINT_SPAN = 1 << 20  # bytes read from each end of train.rec
KIND_NAMES = {"folders": "image folders", "shards": "TFRecord shards"}


def source_identity(rec_path):
    """{"source": absolute path of `rec_path`, "fingerprint": ...}: what makes an extraction's output this dataset's.

    The fingerprint hashes the file size, its first and last FINGERPRINT_SPAN bytes and the `.idx` beside it, if any:
    another dataset, or a changed copy of this one, gets another fingerprint.
    Usage: identity = source_identity("/datasets/faces_emore/train.rec")
    """
    rec_path = os.path.abspath(rec_path)
    size = os.path.getsize(rec_path)
    digest = hashlib.sha256(str(size).encode())
    with open(rec_path, "rb") as ff:
        digest.update(ff.read(FINGERPRINT_SPAN))
        ff.seek(max(0, size - FINGERPRINT_SPAN))
        digest.update(ff.read(FINGERPRINT_SPAN))
    idx_path = os.path.splitext(rec_path)[0] + ".idx"
    if os.path.isfile(idx_path):
        with open(idx_path, "rb") as ff:
            for block in iter(lambda: ff.read(FINGERPRINT_SPAN), b""):
                digest.update(block)
    return {"source": rec_path, "fingerprint": digest.hexdigest()}


def read_record(path):
    """The JSON object of a marker file, None when there is none; an unreadable one is a ValueError naming it."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as ff:
            record = json.load(ff)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("{}: not a readable JSON record ({}); remove it or choose another output folder".format(path, error)) from None
    if not isinstance(record, dict):
        raise ValueError("{}: expected a JSON object, got {}".format(path, type(record).__name__))
    return record


def is_same_source(record, identity):
    """True when a marker `record` names the dataset `identity`: the same fingerprint (records written before
    fingerprints existed: the same source path)."""
    if "fingerprint" in record:
        return record["fingerprint"] == identity["fingerprint"]
    return record.get("source") == identity["source"]


def refuse_other_source(save_dir, record, identity):
    """A ValueError when the marker `record` found in `save_dir` belongs to another dataset than `identity`."""
    if not is_same_source(record, identity):
        raise ValueError("{}: holds the extraction of {}, not of {} (another dataset, or a changed copy); choose another "
                         "output folder (-S) or remove that one".format(save_dir, record.get("source", "another dataset"), identity["source"]))


def claim(save_dir, identity, kind):
    """Make `save_dir` the output folder of the dataset `identity` written as `kind` ("folders" or "shards"), or refuse it.

    A missing or empty folder is created and claimed; a folder already claimed by the same dataset and kind is a rerun
    (True is returned); one claimed by another dataset or for the other kind, or holding anything without a claim, is
    refused (ValueError) and left as it is. Usage: resumed = claim("/datasets/faces_emore_112x112_folders", identity, "folders")
    """
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise NotADirectoryError("output folder {}: is a file; give a folder (-S)".format(save_dir))
    source_path = os.path.join(save_dir, SOURCE_FILE)
    record = read_record(source_path)
    if record is not None:
        refuse_other_source(save_dir, record, identity)
        if record.get("kind", kind) != kind:
            raise ValueError("{}: holds the {} of {}; choose another output folder (-S) for its {}".format(
                save_dir, KIND_NAMES.get(record["kind"], record["kind"]), identity["source"], KIND_NAMES.get(kind, kind)))
        return True
    found = sorted(os.listdir(save_dir)) if os.path.isdir(save_dir) else []
    leftovers = [name for name in found if name.startswith("." + SOURCE_FILE + ".")]  # a claim interrupted while written
    for name in leftovers:
        os.remove(os.path.join(save_dir, name))
    found = [name for name in found if name not in leftovers]
    if found:
        raise ValueError("{}: not empty ({} entries, e.g. {}) and not an extraction of {} (no {}); choose an empty or new "
                         "output folder (-S)".format(save_dir, len(found), found[0], identity["source"], SOURCE_FILE))
    io_utils.atomic_write_text(source_path, json.dumps(dict(identity, kind=kind), indent=1))
    return False


def read_completion(marker_path, identity, kind):
    """The completion record at `marker_path` (None when there is none), refused when it names another dataset than
    `identity`; a folder completed before claims existed is claimed for `identity` and `kind` on the way.
    Usage: record = read_completion("/d/faces_emore_112x112_folders/.extraction_complete.json", identity, "folders")
    """
    record = read_record(marker_path)
    save_dir = os.path.dirname(marker_path)
    if record is not None:
        refuse_other_source(save_dir, record, identity)
        if not os.path.exists(os.path.join(save_dir, SOURCE_FILE)):
            io_utils.atomic_write_text(os.path.join(save_dir, SOURCE_FILE), json.dumps(dict(identity, kind=kind), indent=1))
    return record
