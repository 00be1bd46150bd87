#!/usr/bin/env python3
"""Seed name from a checkout: `export` is `keras_insightface.export` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "export")
