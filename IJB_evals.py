#!/usr/bin/env python3
"""Seed name from a checkout: `IJB_evals` is `keras_insightface.IJB_evals` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "IJB_evals")
