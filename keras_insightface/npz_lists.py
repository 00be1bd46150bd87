"""Image lists stored as `.npz` (`image_names`, `image_classes`, optionally teacher `embeddings`), read and checked, and
the one rule for class ids: whole numbers in [0, MAX_CLASS_ID], never rounded or wrapped.

Usage:
    image_names, image_classes, embeddings = npz_lists.load_npz("faces_shuffle_label_embs_normed_512.npz")
    image_classes = npz_lists.checked_class_ids([0, 1, 1], "my labels")
"""
import pickle
import zipfile

import numpy as np

MAX_CLASS_ID = 2**31 - 1  # labels are int32 in training


def load_npz(data_path):
    """(image_names, image_classes, embeddings or None) of an npz, checked: readable, one integer class and one finite
    float teacher embedding row per image name; anything else is a ValueError naming the file and an example.

    Usage: image_names, image_classes, embeddings = load_npz("faces_shuffle_label_embs_normed_512.npz")
    """
    try:
        arrays = _npz_arrays(np.load(data_path, allow_pickle=False))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:  # numpy's, zipfile's, pickle's own
        raise ValueError("{}: not a readable .npz of image_names, image_classes[, embeddings] ({})".format(data_path, error)) from None
    if arrays is None:
        raise ValueError("{}: holds a single .npy array; expected an .npz of image_names, image_classes[, embeddings]".format(data_path))
    missing = [key for key in ("image_names", "image_classes") if key not in arrays]
    if missing:
        raise ValueError("{}: missing key(s) {}; expected image_names, image_classes[, embeddings]".format(data_path, missing))
    image_names = _image_names(arrays["image_names"], data_path)
    image_classes = checked_class_ids(arrays["image_classes"], data_path)
    embeddings = arrays.get("embeddings")
    if len(image_classes) != len(image_names):
        raise ValueError("{}: {} image_classes for {} image_names".format(data_path, len(image_classes), len(image_names)))
    if embeddings is not None:
        _check_teacher_embeddings(embeddings, len(image_names), data_path)
    return image_names, image_classes, embeddings


def _npz_arrays(loaded):
    """{key: array} of the dataset keys of a loaded npz, None when np.load gave a single array (a .npy file)."""
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return None
    with loaded:
        return {key: loaded[key] for key in ("image_names", "image_classes", "embeddings") if key in loaded}


def _image_names(names, data_path):
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ValueError("{}: image_names of dtype {} and shape {}; expected a 1-D array of path strings".format(data_path, names.dtype, names.shape))
    return names.astype(str)


def checked_class_ids(labels, source, name="image_classes"):
    """`labels` as int64 class ids, refused (ValueError naming `source`, `name` and an example) unless every one is a
    whole number in [0, MAX_CLASS_ID]: fractional, non-finite, negative, boolean, text or too large ids are never
    rounded or wrapped.  Usage: image_classes = checked_class_ids(loaded["image_classes"], "train.npz")
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iuf":
        raise ValueError("{}: {} of dtype {} and shape {}; expected a 1-D array of integer class ids".format(source, name, labels.dtype, labels.shape))
    if labels.dtype.kind == "f":
        fractional = ~np.isfinite(labels) | (labels != np.round(labels))
        if fractional.any():
            index = int(np.argmax(fractional))
            raise ValueError("{}: {} holds {} value(s) that are not whole numbers (e.g. {!r} at index {}); expected integer class ids".format(
                source, name, int(fractional.sum()), labels[index].item(), index))
    if labels.size and labels.min() < 0:
        raise ValueError("{}: {} image(s) have a negative class label (e.g. {}); expected class ids >= 0".format(
            source, int((labels < 0).sum()), labels.min().item()))
    if labels.size and labels.max() > MAX_CLASS_ID:
        raise ValueError("{}: {} holds class id {} (at index {}), beyond the int32 class ids training uses (at most {})".format(
            source, name, labels.max().item(), int(np.argmax(labels)), MAX_CLASS_ID))
    return labels.astype("int64")


def _check_teacher_embeddings(embeddings, num_images, data_path):
    """One finite float row per image; NaN / inf rows are refused (a broken teacher, not data to train towards)."""
    if embeddings.ndim != 2 or len(embeddings) != num_images:
        raise ValueError("{}: embeddings of shape {} for {} images; expected one teacher embedding row per image".format(
            data_path, embeddings.shape, num_images))
    if embeddings.dtype.kind != "f":
        raise ValueError("{}: embeddings of dtype {}; expected float teacher embeddings".format(data_path, embeddings.dtype))
    bad_rows = ~np.isfinite(embeddings).all(axis=1)
    if bad_rows.any():
        raise ValueError("{}: {} teacher embedding row(s) hold NaN or inf (first: row {}); extract them again (data_distiller) "
                         "or leave those images out".format(data_path, int(bad_rows.sum()), int(np.argmax(bad_rows))))
