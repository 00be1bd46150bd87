"""Seed name from a checkout: `model_interf` is `keras_insightface.model_interf` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "model_interf")
