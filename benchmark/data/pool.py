"""The process pools that render synthetic scenes and decode real datasets."""

from __future__ import annotations

import multiprocessing


def pool_context():
    """The multiprocessing context of the worker pools that render scenes or decode real
    data: workers only run numpy (and PIL and scipy), so forking, where the platform offers
    it, spares re-importing the parent's modules in each one."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)
