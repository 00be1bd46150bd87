#!/usr/bin/env python3
"""Seed name from a checkout: `eval_folder` is `keras_insightface.eval_folder` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "eval_folder")
