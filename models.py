"""Seed name from a checkout: `models` is `keras_insightface.models` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "models")
