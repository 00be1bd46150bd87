"""face_align.py: Umeyama similarity against known transforms and scikit-image, the warp on a synthetic image, SCRFD decoding."""
import math

import cv2
import numpy as np
import pytest

from keras_insightface import face_align

TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], "uint8")


def similarity(scale, degrees, shift):
    angle = math.radians(degrees)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return np.hstack([rotation, np.reshape(shift, (2, 1))])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_similarity_transform_undoes_a_known_similarity():
    moved = apply(similarity(1.8, 25.0, (30.0, -12.0)), TEMPLATE)  # the face as a detector would see it
    matrix = face_align.similarity_transform(moved, TEMPLATE)
    np.testing.assert_allclose(apply(matrix, moved), TEMPLATE, atol=1e-9)
    np.testing.assert_allclose(matrix[:, :2], similarity(1 / 1.8, -25.0, (0, 0))[:, :2], atol=1e-12)


def test_similarity_transform_equals_scikit_image_on_noisy_and_mirrored_points():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(5)
    for landmarks in (TEMPLATE * 1.3 + rng.normal(0, 3, (5, 2)), TEMPLATE * [-1, 1] + [200, 0]):  # the second is mirrored
        if hasattr(SimilarityTransform, "from_estimate"):
            reference = SimilarityTransform.from_estimate(landmarks, TEMPLATE)
        else:
            reference = SimilarityTransform()
            reference.estimate(landmarks, TEMPLATE)
        matrix = face_align.similarity_transform(landmarks, TEMPLATE)
        np.testing.assert_allclose(matrix, reference.params[:2], atol=1e-9)
        assert np.linalg.det(matrix[:, :2]) > 0  # a rotation and a scale, never a reflection
    with pytest.raises(ValueError, match="do not define a similarity transform"):
        face_align.similarity_transform(np.ones((5, 2)), TEMPLATE)
    with pytest.raises(ValueError, match="5 \\(x, y\\) points"):
        face_align.align_face(np.zeros((50, 50, 3), "uint8"), np.ones(8))


def test_align_face_puts_the_landmarks_on_the_template():
    """Five coloured dots drawn at the landmarks of a tilted, scaled face land on the 112x112 template after alignment."""
    landmarks = apply(similarity(2.2, -17.0, (60.0, 35.0)), TEMPLATE)
    image = np.zeros((400, 360, 3), "uint8")
    for point, colour in zip(landmarks, COLOURS):
        cv2.circle(image, (int(round(point[0] * 16)), int(round(point[1] * 16))), 5 * 16, colour.tolist(), -1, cv2.LINE_AA, shift=4)
    aligned = face_align.align_face(image, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    for point, colour in zip(TEMPLATE, COLOURS):
        weight = np.all(np.abs(aligned.astype(int) - colour) < 60, axis=-1).astype(float)
        ys, xs = np.nonzero(weight)
        np.testing.assert_allclose([xs.mean(), ys.mean()], point, atol=0.6)


# ------------------------------------------------------------------ SCRFD decoding on a tiny synthetic ONNX model
STRIDES, INPUT = (8, 16, 32), 64


def scrfd_outputs():
    """Fixed outputs of a 64x64 SCRFD with keypoints (2 anchors per position): two overlapping faces and a separate one."""
    counts = [(INPUT // stride) ** 2 * 2 for stride in STRIDES]
    scores = [np.full((count, 1), 0.1, "float32") for count in counts]
    boxes = [np.zeros((count, 4), "float32") for count in counts]
    kps = [np.zeros((count, 10), "float32") for count in counts]
    faces = [  # (level, anchor index, score, box distances, keypoint offsets) in stride units
        (0, (3 * 8 + 4) * 2, 0.9, [1, 1, 1, 1], np.linspace(-1, 1, 10)),
        (0, (3 * 8 + 4) * 2 + 1, 0.8, [1.1, 1, 1, 1], np.zeros(10)),  # same place, lower score: suppressed
        (1, (3 * 4 + 0) * 2, 0.7, [0.5, 0.5, 0.5, 0.5], np.linspace(0.5, -0.5, 10)),
    ]
    for level, index, score, box, offsets in faces:
        scores[level][index], boxes[level][index], kps[level][index] = score, box, offsets
    return scores + boxes + kps, faces


def write_scrfd_onnx(path, outputs):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0), helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    initializers = [numpy_helper.from_array(np.zeros((), "float32"), "zero")]
    graph_outputs = []
    for index, value in enumerate(outputs):
        initializers.append(numpy_helper.from_array(value, "const{}".format(index)))
        nodes.append(helper.make_node("Add", ["const{}".format(index), "nothing"], ["out{}".format(index)]))
        graph_outputs.append(helper.make_tensor_value_info("out{}".format(index), TensorProto.FLOAT, list(value.shape)))
    graph = helper.make_graph(nodes, "scrfd_like", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
                              graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_scrfd_detector_decodes_boxes_landmarks_and_suppresses_overlaps(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs, faces = scrfd_outputs()
    detector = face_align.load_detector(write_scrfd_onnx(tmp_path / "scrfd.onnx", outputs))
    image = np.full((96, 128, 3), 90, "uint8")  # fits the 64x64 input at scale 0.5: 64 x 48, zero rows below
    boxes, scores, landmarks = detector.detect(image)
    expected_boxes, expected_landmarks = [], []
    for level, index, _, box, offsets in (faces[0], faces[2]):
        stride = STRIDES[level]
        cell = index // 2
        centre = np.array([cell % (INPUT // stride), cell // (INPUT // stride)]) * stride
        expected_boxes.append(np.concatenate([centre - np.array(box[:2]) * stride, centre + np.array(box[2:]) * stride]) / 0.5)
        expected_landmarks.append((centre + np.reshape(offsets, (5, 2)) * stride) / 0.5)
    np.testing.assert_allclose(scores, [0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(boxes, expected_boxes, atol=1e-4)
    np.testing.assert_allclose(landmarks, expected_landmarks, atol=1e-4)
    np.testing.assert_allclose(detector(image), expected_landmarks, atol=1e-4)


def test_scrfd_input_is_letterboxed_and_normalized():
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3)).astype("uint8")
    padded, scale = face_align.letterbox(image, (64, 64))
    assert scale == 0.5 and padded.shape == (64, 64, 3) and not padded[48:].any()
    np.testing.assert_array_equal(padded[:48], cv2.resize(image, (64, 48)))
    blob = face_align.scrfd_blob(padded)
    assert blob.shape == (1, 3, 64, 64)
    assert blob[0, 2, 5, 7] == pytest.approx((float(padded[5, 7, 2]) - 127.5) / 128)


def test_detector_errors_name_the_problem(tmp_path):
    pytest.importorskip("onnxruntime")
    outputs, _ = scrfd_outputs()
    no_keypoints = write_scrfd_onnx(tmp_path / "no_kps.onnx", outputs[:6])
    with pytest.raises(ValueError, match="no_kps.onnx: 6 outputs; expected an insightface SCRFD model with keypoints"):
        face_align.load_detector(no_keypoints)
    with pytest.raises(FileNotFoundError, match="face detector model not found: .*missing.onnx"):
        face_align.load_detector(str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match="nothing is downloaded"):
        face_align.load_detector("retinaface_r50")
