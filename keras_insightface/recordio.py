"""Native reader for MXNet RecordIO files (`train.rec` + `train.idx`), no mxnet needed.

Format: each record is uint32 magic 0xced7230a, uint32 `lrec` (upper 3 bits: continue flag
0 whole / 1 first / 2 middle / 3 last part; lower 29 bits: payload length), the payload, and
zero padding to a multiple of 4 bytes. The `.idx` file is text, `key<TAB>byte offset` per line.
An image payload starts with the header `<IfQQ` (flag, label, id, id2); when flag > 0, `flag`
float32 labels follow. The rest is the encoded image.

Usage:
    with RecordReader("faces_emore/train.rec") as reader:
        for key, header, image in iter_images(reader):
            print(key, class_of(header), len(image))
"""
import collections
import math
import os
import struct

MAGIC = 0xCED7230A
_RECORD_HEAD = struct.Struct("<II")
_IMAGE_HEAD = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1
_MIN_RECORD_SIZE = _RECORD_HEAD.size + _IMAGE_HEAD.size  # the smallest record an image or header can take
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3

IRHeader = collections.namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = "Image record header: `label` is a float, or a tuple of floats when flag > 0."


class RecordIOError(ValueError):
    """A `.rec` / `.idx` file that does not follow the RecordIO format."""


def unpack(payload):
    """Split a record payload into (IRHeader, image_bytes).  Usage: header, image = unpack(payload)"""
    if len(payload) < _IMAGE_HEAD.size:
        raise RecordIOError("record payload of {} bytes is shorter than the {}-byte header".format(len(payload), _IMAGE_HEAD.size))
    flag, label, id1, id2 = _IMAGE_HEAD.unpack_from(payload)
    start = _IMAGE_HEAD.size
    if flag > 0:
        end = start + 4 * flag
        if end > len(payload):
            raise RecordIOError("record payload of {} bytes is too short for its {} labels".format(len(payload), flag))
        label = struct.unpack_from("<{}f".format(flag), payload, start)
        start = end
    bad = [value for value in (label if flag > 0 else (label,)) if not math.isfinite(value)]
    if bad:
        raise RecordIOError("label {} is not a finite number".format(bad[0]))
    return IRHeader(flag, label, id1, id2), payload[start:]


def class_of(header):
    """The class of an image record: the scalar label, or the first of the labels."""
    label = header.label[0] if isinstance(header.label, tuple) else header.label
    return int(label)


def read_index(idx_path):
    """Read a `.idx` file into {key: byte offset}, in file order.  Usage: offsets = read_index("train.idx")"""
    offsets, line_of = {}, {}
    with open(idx_path, "r") as ff:
        for line_no, line in enumerate(ff, start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise RecordIOError("{}, line {}: expected 'key<TAB>offset', got {!r}".format(idx_path, line_no, line.rstrip("\n"))) from None
            if offset < 0:
                raise RecordIOError("{}, line {}: negative byte offset {} for key {}".format(idx_path, line_no, offset, key))
            if key in offsets:
                raise RecordIOError("{}, line {}: key {} is listed again (first on line {})".format(idx_path, line_no, key, line_of[key]))
            offsets[key], line_of[key] = offset, line_no
    return offsets


class RecordReader:
    """Random and sequential access to the records of one `.rec` file.

    Usage:
        reader = RecordReader("train.rec")   # uses train.idx beside it when present
        payload = reader.read_key(1)
        for offset, payload in reader.scan(): ...
    """

    def __init__(self, rec_path, idx_path=None):
        self.rec_path = os.fspath(rec_path)
        if idx_path is None:
            idx_path = os.path.splitext(self.rec_path)[0] + ".idx"
        self.idx_path = idx_path if os.path.exists(idx_path) else None
        self.offsets = read_index(self.idx_path) if self.idx_path else None
        self.size = os.path.getsize(self.rec_path)
        self._file = open(self.rec_path, "rb")
        if self.offsets:
            self._check_index()

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def error(self, offset, what):
        """A RecordIOError naming this file and the byte offset of the faulty record."""
        return RecordIOError("{}: corrupt or truncated RecordIO at byte offset {}: {}".format(self.rec_path, offset, what))

    def _check_index(self):
        """Fail early on a truncated copy: the last record the `.idx` places inside the file must be whole,
        and no offset may lie past the end."""
        inside = [offset for offset in self.offsets.values() if offset < self.size]
        if inside:
            self.read_at(max(inside))
        beyond = [offset for offset in self.offsets.values() if offset >= self.size]
        if beyond:
            raise self.error(min(beyond), "{} places a record there, past the end of the file ({} bytes)".format(self.idx_path, self.size))

    def _read_head(self, offset):
        """Read the 8-byte head of the physical record at `offset`: (continue flag, payload length); the file is left
        positioned at the payload."""
        self._file.seek(offset)
        head = self._file.read(_RECORD_HEAD.size)
        if len(head) < _RECORD_HEAD.size:
            raise self.error(offset, "record header cut off by the end of the file ({} bytes)".format(self.size))
        magic, lrec = _RECORD_HEAD.unpack(head)
        if magic != MAGIC:
            raise self.error(offset, "bad magic 0x{:08x}, expected 0x{:08x}".format(magic, MAGIC))
        return lrec >> 29, lrec & _LENGTH_MASK

    @staticmethod
    def _part_end(offset, length):
        return offset + _RECORD_HEAD.size + ((length + 3) & ~3)

    def _read_part(self, offset):
        """Read one physical record at `offset`: (continue flag, data, offset of the next record)."""
        cflag, length = self._read_head(offset)
        data = self._file.read(length)
        if len(data) < length:
            raise self.error(offset, "record of {} bytes runs past the end of the file ({} bytes)".format(length, self.size))
        return cflag, data, self._part_end(offset, length)

    def starts_record(self, offset):
        """True when a record head (the magic) lies at `offset`."""
        self._file.seek(offset)
        head = self._file.read(_RECORD_HEAD.size)
        return len(head) == _RECORD_HEAD.size and _RECORD_HEAD.unpack(head)[0] == MAGIC

    def record_end(self, offset):
        """The byte offset just past the logical record at `offset` (all its parts), reading record heads only.

        Usage: next_offset = reader.record_end(reader.offsets[5])
        """
        cflag, length = self._read_head(offset)
        end = self._part_end(offset, length)
        while cflag in (_FIRST, _MIDDLE):
            cflag, length = self._read_head(end)
            end = self._part_end(end, length)
        if end > self.size:
            raise self.error(offset, "record of {} bytes runs past the end of the file ({} bytes)".format(length, self.size))
        return end

    def read_at(self, offset):
        """Read the logical record starting at `offset`, joining multi-part records: (payload, next offset)."""
        cflag, data, next_offset = self._read_part(offset)
        if cflag == _WHOLE:
            return data, next_offset
        if cflag != _FIRST:
            raise self.error(offset, "record starts with continue flag {}, expected 0 or 1".format(cflag))
        parts = [data]
        while cflag != _LAST:
            part_offset = next_offset
            cflag, data, next_offset = self._read_part(part_offset)
            if cflag not in (_MIDDLE, _LAST):
                raise self.error(part_offset, "multi-part record continues with flag {}, expected 2 or 3".format(cflag))
            parts.append(data)
        # The writer cuts a payload at each 4-byte-aligned occurrence of the magic and drops it: put it back.
        return struct.pack("<I", MAGIC).join(parts), next_offset

    def read_key(self, key):
        """Read the record stored under `key` in the `.idx` file."""
        if self.offsets is None:
            raise RecordIOError("{}: no .idx file beside it, records can only be read sequentially".format(self.rec_path))
        if key not in self.offsets:
            raise RecordIOError("{}: key {} is not listed in {}".format(self.rec_path, key, self.idx_path))
        return self.read_at(self.offsets[key])[0]

    def scan(self):
        """Yield (offset, payload) for every record, in file order."""
        offset = 0
        while offset < self.size:
            payload, next_offset = self.read_at(offset)
            yield offset, payload
            offset = next_offset


def _is_metadata(header, image):
    """insightface's header and identity records: labels only, no image bytes."""
    return header.flag > 0 and len(image) == 0


def header_counts(reader, header, offset):
    """(number of images, number of identity records) that an insightface header record (a, b) announces.

    Images are records 1 .. a-1, identity records a .. b-1; counts the file cannot hold are refused.
    Usage: num_images, num_ids = header_counts(reader, header, 0)
    """
    first_id, end = header.label[0], header.label[1] if len(header.label) > 1 else header.label[0]
    if first_id != int(first_id) or end != int(end) or not 1 <= first_id <= end:
        raise reader.error(offset, "header record labels {} are not integers 1 <= a <= b".format(header.label))
    capacity = reader.size // _MIN_RECORD_SIZE
    if end > capacity + 1:
        raise reader.error(offset, "header record announces {} records, but {} bytes hold at most {}".format(int(end) - 1, reader.size, capacity))
    return int(first_id) - 1, int(end - first_id)


def _check_header_layout(reader, num_images, num_ids):
    """The `.idx` of an insightface file lists keys 0 .. b-1, image records end at key a-1 and identity records start at a."""
    expected = 1 + num_images + num_ids
    keys = reader.offsets
    if len(keys) != expected or min(keys) != 0 or max(keys) != expected - 1:
        raise RecordIOError("{}: header record announces keys 0 .. {} ({} images, {} identities), but {} lists {} keys from {} to {}".format(
            reader.rec_path, expected - 1, num_images, num_ids, reader.idx_path, len(keys), min(keys), max(keys)))
    if num_images and _is_metadata(*read_image(reader, keys[num_images])):
        raise reader.error(keys[num_images], "key {}, the last image the header record announces, holds no image".format(num_images))
    if num_ids and not _is_metadata(*read_image(reader, keys[num_images + 1])):
        raise reader.error(keys[num_images + 1], "key {}, the first identity record the header announces, holds an image".format(num_images + 1))


def image_keys(reader):
    """The keys of the image records of an indexed file, in order.

    insightface layout: record 0 holds labels (a, b) and no image; images are keys 1 .. a-1, identity
    records a .. b-1; the `.idx` must agree. A shuffled file has no such header: every key is an image.
    """
    if 0 in reader.offsets:
        header, image = read_image(reader, reader.offsets[0])
        if _is_metadata(header, image):
            num_images, num_ids = header_counts(reader, header, reader.offsets[0])
            _check_header_layout(reader, num_images, num_ids)
            return list(range(1, num_images + 1))
    return sorted(reader.offsets, key=reader.offsets.get)


def index_images(reader):
    """[(key, offset)] of every image record, in reading order.

    With an `.idx` file the keys come from it. Without one the file is scanned in order (this also
    checks the whole file before anything is extracted); records without image bytes (insightface's
    header / identity records) are skipped, and each image is keyed by the `id` of its header (the key
    mxnet's writers store there), or by its position among the images when those ids are not unique.
    Usage: for key, offset in index_images(reader): header, image = read_image(reader, offset)
    """
    if reader.offsets is not None:
        check_index_covers_file(reader)
        return _some_images(reader, [(key, reader.offsets[key]) for key in image_keys(reader)])
    found, announced = [], None
    for offset, payload in reader.scan():
        header, image = _unpack_at(reader, offset, payload)
        if not _is_metadata(header, image):
            found.append((header.id, offset))
        elif header.id == 0:
            announced = header_counts(reader, header, offset)[0]
    _check_scanned_count(reader, announced, found)
    if len({key for key, _ in found}) < len(found):
        found = [(position, offset) for position, (_, offset) in enumerate(found)]
    return _some_images(reader, found)


def _some_images(reader, entries):
    """`entries`, refused when there are none: an empty or header-only file is no dataset."""
    if not entries:
        raise RecordIOError("{}: holds no image records ({} bytes{})".format(
            reader.rec_path, reader.size, "" if reader.idx_path is None else ", {} keys in {}".format(len(reader.offsets), reader.idx_path)))
    return entries


def check_index_covers_file(reader):
    """The records the `.idx` lists must tile the `.rec`: the first at byte 0, each one ending where the next listed
    one starts, the last at the end of the file. A line missing from the `.idx` (a record it does not list), an offset
    inside another record and an empty `.idx` beside records are refused naming the byte offset.
    Reads the record heads only.  Usage: check_index_covers_file(RecordReader("train.rec"))
    """
    if not reader.offsets:
        if reader.size:
            raise RecordIOError("{}: lists no records, but {} holds {} bytes".format(reader.idx_path, reader.rec_path, reader.size))
        return
    _refuse_shared_offsets(reader)
    expected, previous = 0, None
    for offset in sorted(reader.offsets.values()):
        if offset != expected:
            raise _not_tiling(reader, previous, expected, offset)
        expected, previous = reader.record_end(offset), offset
    if expected != reader.size:
        raise _not_tiling(reader, previous, expected, None)


def _refuse_shared_offsets(reader):
    """Two keys at one byte offset: name the one the record's header id does not match."""
    keys_at = collections.defaultdict(list)
    for key, offset in reader.offsets.items():
        keys_at[offset].append(key)
    for offset, keys in keys_at.items():
        if len(keys) > 1:
            record_id = read_image(reader, offset)[0].id
            wrong = next((key for key in keys if key != record_id), keys[-1])
            raise reader.error(offset, "{} lists key {} here, but the record's header id is {} (keys {} share this offset)".format(
                reader.idx_path, wrong, record_id, " and ".join(str(key) for key in keys)))


def _not_tiling(reader, previous, expected, offset):
    """The error for a listed `offset` (None: the end of the file) that is not where the record before it, at
    `previous`, ends (`expected`): an offset inside that record, a record the `.idx` does not list, or a damaged length."""
    if offset is not None and offset < expected:
        return reader.error(offset, "{} lists a record here, inside the record that starts before it and ends at {}".format(reader.idx_path, expected))
    following = "the file holds {} bytes".format(reader.size) if offset is None else "the next one {} lists is at {}".format(reader.idx_path, offset)
    if previous is not None and not reader.starts_record(expected):
        key = next(key for key, start in reader.offsets.items() if start == previous)
        return reader.error(previous, "key {}: the record ends at byte {}, where no record starts; {} (a damaged length field?)".format(
            key, expected, following))
    return reader.error(expected, "a record starts here that {} does not list (a missing line?); {}".format(reader.idx_path, following))


def _check_scanned_count(reader, announced, found):
    """A scanned file must hold the images its header record (key 0) announces; images keyed 1 .. n without
    a header record are insightface's layout whose header, written last by mxnet, was cut off."""
    if announced is not None and announced != len(found):
        raise RecordIOError("{}: the header record announces {} images, but the file holds {} (a truncated or damaged copy?)".format(
            reader.rec_path, announced, len(found)))
    if announced is None and found and min(key for key, _ in found) == 1:
        raise RecordIOError("{}: images are keyed from 1 (insightface layout) but there is no header record (key 0): "
                            "a truncated copy? {} images found, the last at byte offset {}".format(reader.rec_path, len(found), found[-1][1]))


def read_image(reader, offset):
    """(IRHeader, image_bytes) of the record at `offset`."""
    return _unpack_at(reader, offset, reader.read_at(offset)[0])


def _unpack_at(reader, offset, payload):
    try:
        return unpack(payload)
    except RecordIOError as error:
        raise reader.error(offset, str(error)) from None


def iter_images(reader):
    """Yield (key, IRHeader, image_bytes) for every image record of `reader`."""
    for key, offset in index_images(reader):
        yield (key,) + read_image(reader, offset)
