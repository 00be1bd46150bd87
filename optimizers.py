"""Seed name from a checkout: `optimizers` is `keras_insightface.optimizers` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "optimizers")
