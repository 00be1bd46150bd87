"""What every image record of a RecordIO dataset must be before `prepare_data.py` writes it anywhere: stored under its
key, a whole image that decodes, of the dataset's image size, with an integer class label in range; and, once all are
read, as many classes as `property` or the header record announce.

Usage:
    with recordio.RecordReader("/datasets/faces_emore/train.rec") as reader:
        entries, limits = recordio.index_images(reader), record_checks.dataset_limits("/datasets/faces_emore", reader)
        for key, label, image in record_checks.verified_images(reader, entries, limits): ...
        record_checks.check_counts(reader, limits, classes)
"""
import collections
import os
from concurrent.futures import ThreadPoolExecutor

from . import face_io, recordio
from .npz_lists import MAX_CLASS_ID

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHECK_CHUNK = 256  # records read in a row, then decoded in parallel threads (OpenCV releases the GIL)

DatasetLimits = collections.namedtuple("DatasetLimits", ["num_classes", "announced_by", "image_size", "size_by"])
DatasetLimits.__doc__ = """What a dataset announces: its class count (None: unknown) and which file says so, the (height, width)
of its images (None: that of the first image) and what says so."""


def read_property(dataset_dir):
    """{"num_classes", "height", "width"} from `<dataset_dir>/property`, or None when there is none."""
    path = os.path.join(dataset_dir, "property")
    if not os.path.exists(path):
        return None
    with open(path) as ff:
        text = ff.read().strip()
    try:
        num_classes, height, width = (int(value) for value in text.split(","))
    except ValueError:
        raise ValueError("{}: expected 'num_classes,height,width', got {!r}".format(path, text)) from None
    if min(num_classes, height, width) <= 0:
        raise ValueError("{}: expected positive 'num_classes,height,width', got {!r}".format(path, text))
    return {"num_classes": num_classes, "height": height, "width": width}


def dataset_limits(dataset_dir, reader):
    """The class count and image size `<dataset_dir>/property` announces; without it, the identity count of an
    insightface header record (key 0), if any.  Usage: limits = dataset_limits("/datasets/faces_emore", reader)"""
    properties = read_property(dataset_dir)
    if properties is not None:
        announced_by = "{} (num_classes={})".format(os.path.join(dataset_dir, "property"), properties["num_classes"])
        return DatasetLimits(properties["num_classes"], announced_by, (properties["height"], properties["width"]), "property")
    if reader.offsets and 0 in reader.offsets:
        header, image = recordio.read_image(reader, reader.offsets[0])
        if header.flag > 0 and not image:
            num_ids = recordio.header_counts(reader, header, reader.offsets[0])[1]
            if num_ids:
                return DatasetLimits(num_ids, "{}'s header record ({} identities)".format(reader.rec_path, num_ids), None, None)
    return DatasetLimits(None, None, None, None)


def check_image_record(reader, key, offset, header, image, limits):
    """The class label of an image record, after refusing one that is not what it must be (a RecordIOError naming the
    file, byte offset and key): with an `.idx`, the header `id` equals the key (a wrong or duplicated offset reads
    another record); the bytes are a whole JPEG (signature ... end marker) or a PNG, and decode, to the dataset's image
    size when `limits` gives one; the label is an integer >= 0, below the announced class count and int32's limit.
    Returns (label, (height, width)).
    Usage: label, size = check_image_record(reader, key, offset, *recordio.read_image(reader, offset), limits)
    """
    if reader.offsets is not None and header.id != key:
        raise reader.error(offset, "{} lists key {} here, but the record's header id is {}".format(reader.idx_path, key, header.id))
    is_jpeg = image.startswith(JPEG_MAGIC) and image.rstrip(b"\0").endswith(JPEG_END)
    if not (is_jpeg or image.startswith(PNG_MAGIC)):
        raise reader.error(offset, "key {}: {} image bytes are not a whole JPEG (FF D8 FF ... FF D9) nor a PNG, starting {}".format(
            key, len(image), image[:8].hex(" ")))
    label = _checked_label(reader, key, offset, header, limits)
    try:
        size = face_io.decode_image(image, "key {}: its image".format(key)).shape[:2]
    except ValueError as error:
        raise reader.error(offset, str(error)) from None
    if limits.image_size is not None and tuple(size) != tuple(limits.image_size):
        raise reader.error(offset, "key {}: a {}x{} image, but {} says {}x{}".format(key, size[0], size[1], limits.size_by, *limits.image_size))
    return label, tuple(size)


def _checked_label(reader, key, offset, header, limits):
    label = header.label[0] if isinstance(header.label, tuple) else header.label
    if label < 0 or label != int(label):
        raise reader.error(offset, "key {}: class label {} is not an integer >= 0".format(key, label))
    if limits.num_classes is not None and label >= limits.num_classes:
        raise reader.error(offset, "key {}: class label {} is not below the {} classes of {}".format(key, int(label), limits.num_classes, limits.announced_by))
    if label > MAX_CLASS_ID:
        raise reader.error(offset, "key {}: class label {} is beyond the int32 labels training uses".format(key, int(label)))
    return int(label)


def verified_images(reader, entries, limits):
    """Yield (key, class label, image bytes) of each `(key, offset)` entry in order, every record checked by
    `check_image_record` (decoded in parallel threads, CHECK_CHUNK records at a time); the first faulty one raises.
    Without an image size in `limits`, every image must have the first one's.

    Usage: for key, label, image in verified_images(reader, recordio.index_images(reader), limits): ...
    """
    def check(item):
        key, offset, (header, image) = item
        return key, check_image_record(reader, key, offset, header, image, limits)[0], image

    with ThreadPoolExecutor() as pool:
        for start in range(0, len(entries), CHECK_CHUNK):
            chunk = [(key, offset, recordio.read_image(reader, offset)) for key, offset in entries[start : start + CHECK_CHUNK]]
            if limits.image_size is None:
                key, offset, (header, image) = chunk[0]
                size = check_image_record(reader, key, offset, header, image, limits)[1]
                limits = limits._replace(image_size=size, size_by="the first image (key {})".format(key))
            yield from pool.map(check, chunk)


def check_counts(reader, limits, classes):
    """The classes found must be as many as `limits` announce (property, or the header record), else ValueError.

    (The image count is checked against the header by `recordio.index_images`.)
    Usage: check_counts(reader, limits, {0, 1, 2})
    """
    if limits.num_classes is not None and limits.num_classes != len(classes):
        raise recordio.RecordIOError("{}: {} announces {} classes, but the records hold {} classes".format(
            reader.rec_path, limits.announced_by, limits.num_classes, len(classes)))
