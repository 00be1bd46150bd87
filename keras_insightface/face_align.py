"""Face alignment to the ArcFace 112x112 five-point template, and the face detectors that give the five points.

Alignment: the similarity transform (rotation, uniform scale, translation; no reflection) that maps a face's five
landmarks (left eye, right eye, nose, left and right mouth corners; x, y in pixels) onto `ARCFACE_TEMPLATE` in the
least-squares sense (Umeyama 1991), then a bilinear warp to 112x112 with black borders.

Detectors (nothing is downloaded; the user gives one):
    a path to an insightface SCRFD `.onnx` model with keypoints (e.g. `scrfd_10g_bnkps.onnx`), run by onnxruntime
    a callable `image -> landmarks`: uint8 RGB [H, W, 3] in, an array reshapeable to [N, 5, 2] out, best face first

Usage:
    from keras_insightface import face_align
    detector = face_align.load_detector("~/models/scrfd_10g_bnkps.onnx")
    face = face_align.align_face(rgb_image, detector(rgb_image)[0])          # uint8 [112, 112, 3]
    aligned_root = face_align.detect_and_align_folder(detector, "faces_raw/")  # -> faces_raw_aligned_112_112/
"""
import os

import cv2
import numpy as np
from tqdm import tqdm

from . import cli
from . import data
from . import face_io
from .io_utils import atomic_path

ARCFACE_SIZE = (112, 112)
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], dtype="float32"
)
ALIGNED_SUFFIX = "_aligned_112_112"  # the original's output folder: <data_path>_aligned_112_112


# ------------------------------------------------------------------------------------------------ alignment
def similarity_transform(src, dst):
    """The 2x3 matrix of the least-squares similarity transform taking points `src` [N, 2] onto `dst` [N, 2].

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", TPAMI 1991: from
    the SVD of the covariance of the centred points; a reflection is never chosen.
    Usage: matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE); cv2.warpAffine(image, matrix, (112, 112))
    """
    src, dst = np.asarray(src, "float64").reshape(-1, 2), np.asarray(dst, "float64").reshape(-1, 2)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    src_variance = np.mean(np.sum(np.square(src_centred), axis=1))
    if not np.isfinite(src_variance) or src_variance < 1e-12:
        raise ValueError("landmarks {} do not define a similarity transform".format(src.tolist()))
    covariance = dst_centred.T @ src_centred / len(src)
    left, singular, right = np.linalg.svd(covariance)
    signs = np.array([1.0, -1.0 if np.linalg.det(left) * np.linalg.det(right) < 0 else 1.0])
    rotation = left @ np.diag(signs) @ right
    scale = np.sum(singular * signs) / src_variance
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image, landmarks, template=ARCFACE_TEMPLATE, image_size=ARCFACE_SIZE):
    """`image` warped so its 5 `landmarks` ([5, 2] or [10], x then y) land on the template: uint8 [112, 112, 3].

    Usage: face = align_face(rgb_image, landmarks)
    """
    landmarks = np.asarray(landmarks, "float64")
    if landmarks.size != 10:
        raise ValueError("landmarks must be 5 (x, y) points, got an array of shape {}".format(landmarks.shape))
    matrix = similarity_transform(landmarks.reshape(5, 2), template)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, tuple(image_size), borderValue=0.0)


# ------------------------------------------------------------------------------------------------ SCRFD (insightface)
def _nms(boxes, scores, iou_threshold):
    """Indices kept by greedy non-maximum suppression, best score first (insightface's `+1` pixel area convention)."""
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = np.argsort(scores)[::-1], []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = np.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        inter = np.prod(np.maximum(0.0, bottom_right - top_left + 1), axis=1)
        order = rest[inter / (areas[best] + areas[rest] - inter) <= iou_threshold]
    return np.array(keep, "int64")


def anchor_centres(height, width, stride, num_anchors):
    """(x, y) pixel centres of a feature map's anchors, row by row, each repeated `num_anchors` times."""
    ys, xs = np.mgrid[:height, :width]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype("float32") * stride
    return np.repeat(centres, num_anchors, axis=0)


def letterbox(image, input_size):
    """`image` resized to fit `input_size` (width, height) keeping its aspect, zero-padded bottom / right; the scale."""
    height, width = image.shape[:2]
    image_ratio = height / width
    if image_ratio > input_size[1] / input_size[0]:
        new_height, new_width = input_size[1], int(input_size[1] / image_ratio)
    else:
        new_width, new_height = input_size[0], int(input_size[0] * image_ratio)
    padded = np.zeros((input_size[1], input_size[0], 3), "uint8")
    padded[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
    return padded, new_height / height


def scrfd_blob(padded_rgb):
    """SCRFD input: RGB float32 NCHW `(x - 127.5) / 128`.  Usage: blob = scrfd_blob(letterbox(rgb, (640, 640))[0])"""
    return ((padded_rgb.astype("float32") - 127.5) / 128.0).transpose(2, 0, 1)[None]


# outputs with keypoints: {number of outputs: (strides, anchors per position)}, as insightface's SCRFD reads them
SCRFD_LAYOUTS = {9: ((8, 16, 32), 2), 15: ((8, 16, 32, 64, 128), 1)}


class SCRFDDetector:
    """insightface's SCRFD face detector (`scrfd_*_bnkps.onnx`, with keypoints) run by onnxruntime, as insightface decodes it.

    `__call__(image)` gives the landmarks [N, 5, 2] of the faces of a uint8 RGB image, best score first; `detect(image)`
    also gives the boxes [N, 4] (x1, y1, x2, y2) and scores [N]. A model with a dynamic input size runs at `input_size`.
    Usage: detector = SCRFDDetector("scrfd_10g_bnkps.onnx"); landmarks = detector(rgb_image)
    """

    def __init__(self, model_path, input_size=(640, 640), score_threshold=0.5, iou_threshold=0.4):
        model_path = os.path.expanduser(os.fspath(model_path))
        if not os.path.isfile(model_path):
            raise FileNotFoundError("face detector model not found: {}".format(model_path))
        ort = cli.require("onnxruntime", "onnx", "{}: the SCRFD face detector".format(model_path))
        self.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        outputs = self.session.get_outputs()
        if len(outputs) not in SCRFD_LAYOUTS:
            raise ValueError("{}: {} outputs; expected an insightface SCRFD model with keypoints (9 or 15 outputs, "
                             "e.g. scrfd_10g_bnkps.onnx)".format(model_path, len(outputs)))
        self.strides, self.num_anchors = SCRFD_LAYOUTS[len(outputs)]
        self.input_name, self.output_names = self.session.get_inputs()[0].name, [output.name for output in outputs]
        shape = self.session.get_inputs()[0].shape
        fixed = all(isinstance(dim, int) for dim in shape[2:4])
        self.input_size = (shape[3], shape[2]) if fixed else tuple(input_size)
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold

    def _decode(self, outputs, input_height, input_width):
        """Boxes, scores and landmarks of every anchor above the score threshold, in input pixels."""
        levels = len(self.strides)
        boxes, scores, landmarks = [], [], []
        for level, stride in enumerate(self.strides):
            score, box, kps = (np.asarray(outputs[level + levels * part]).reshape(-1, width)
                               for part, width in ((0, 1), (1, 4), (2, 10)))
            centres = anchor_centres(input_height // stride, input_width // stride, stride, self.num_anchors)
            picked = score[:, 0] >= self.score_threshold
            box, kps, centres = box[picked] * stride, kps[picked] * stride, centres[picked]
            boxes.append(np.concatenate([centres - box[:, :2], centres + box[:, 2:]], axis=1))
            landmarks.append(kps.reshape(-1, 5, 2) + centres[:, None])
            scores.append(score[picked, 0])
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(landmarks)

    def detect(self, image):
        """(boxes [N, 4], scores [N], landmarks [N, 5, 2]) of a uint8 RGB image, best score first, in its pixels."""
        padded, scale = letterbox(np.asarray(image), self.input_size)
        outputs = self.session.run(self.output_names, {self.input_name: scrfd_blob(padded)})
        boxes, scores, landmarks = self._decode(outputs, padded.shape[0], padded.shape[1])
        keep = _nms(boxes, scores, self.iou_threshold)
        return boxes[keep] / scale, scores[keep], landmarks[keep] / scale

    def __call__(self, image):
        return self.detect(image)[2]


def load_detector(detector):
    """A callable `uint8 RGB image -> landmarks [N, 5, 2]` from a SCRFD `.onnx` path or a callable of that kind.

    Usage: detector = load_detector("scrfd_10g_bnkps.onnx")
    """
    if callable(detector):
        return detector
    if isinstance(detector, (str, os.PathLike)) and os.fspath(detector).endswith(".onnx"):
        return SCRFDDetector(detector)
    raise ValueError("detection: expected the path of an insightface SCRFD .onnx model with keypoints, or a callable "
                     "image -> landmarks [N, 5, 2]; got {!r} (nothing is downloaded)".format(detector))


def face_landmarks(detector, image, source):
    """The landmarks [5, 2] of the best face the detector finds in `image` (from file `source`), or None."""
    landmarks = np.asarray(detector(image), "float64")
    if landmarks.size == 0:
        return None
    if landmarks.size % 10:
        raise ValueError("{}: the detector gave landmarks of shape {}; expected [N, 5, 2]".format(source, landmarks.shape))
    return landmarks.reshape(-1, 5, 2)[0]


def detect_and_align_folder(detector, data_path, dest_path=None):
    """Align the best face of every image of `<data_path>/<class>/<image>` into `dest_path` (default
    `<data_path>_aligned_112_112`, as the original), same class folders and file names; returns dest_path.

    Images without a face are left out and counted. `detector`: see load_detector.
    Usage: aligned_root = detect_and_align_folder("scrfd_10g_bnkps.onnx", "faces_raw/")
    """
    detector = load_detector(detector)
    data_path = os.path.normpath(os.fspath(data_path))
    dest_path = dest_path or data_path + ALIGNED_SUFFIX
    image_names, _, _, _ = data.pre_process_folder(data_path)
    missed = []
    for path in tqdm(image_names, "Detecting"):
        image = face_io.read_image(path)
        landmarks = face_landmarks(detector, image, path)
        if landmarks is None:
            missed.append(path)
            continue
        target = os.path.join(dest_path, os.path.relpath(path, data_path))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with atomic_path(target) as tmp:
            cv2.imwrite(tmp, cv2.cvtColor(align_face(image, landmarks), cv2.COLOR_RGB2BGR))
    if missed:
        print(">>>> No face detected in {} of {} images, left out (e.g. {})".format(len(missed), len(image_names), missed[0]))
    if len(missed) == len(image_names):
        raise ValueError("{}: no face detected in any of the {} images".format(data_path, len(image_names)))
    print(">>>> Saved aligned face images in:", dest_path)
    return dest_path
