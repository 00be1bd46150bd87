"""Helpers shared by the benchmark scripts: the machine description and its load.

Usage: from bench_common import load_average, machine
"""
import os
import platform


def load_average():
    """The 1-minute load average, rounded."""
    return round(os.getloadavg()[0], 2)


def machine():
    """`N-core ARCH CPU sandbox`, noting when other jobs were loading it."""
    description = "{}-core {} CPU sandbox".format(os.cpu_count(), platform.machine())
    if load_average() > 2:
        description += ", shared with other jobs during the run"
    return description
