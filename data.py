"""Seed name from a checkout: `data` is `keras_insightface.data` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "data")
