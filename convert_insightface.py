#!/usr/bin/env python3
"""Seed-style name from a checkout: `convert_insightface` is `keras_insightface.convert_insightface` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "convert_insightface")
