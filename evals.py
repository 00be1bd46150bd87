"""Seed name from a checkout: `evals` is `keras_insightface.evals` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "evals")
