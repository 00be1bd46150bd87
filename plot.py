"""Seed name from a checkout: `plot` is `keras_insightface.plot` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "plot")
