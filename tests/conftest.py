"""pytest setup: TensorFlow quiet and on the CPU; shared fixtures of the test modules."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
