import os
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, SMALL_DATA, run_cli  # noqa: F401 (the old import path)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """Every test renders into its own cache, never the user's."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MTPEFT_CACHE")
    os.environ["MTPEFT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MTPEFT_CACHE", None)
    else:
        os.environ["MTPEFT_CACHE"] = old


@pytest.fixture(autouse=True)
def one_thread():
    """The tests' tensors are tiny: one thread avoids the cost of keeping several in step,
    which on a busy machine exceeds the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="session")
def pascal(tmp_path_factory):
    """A generated PASCAL-Context tree (`tests.real_trees`): (root, labels written per id)."""
    from tests.real_trees import make_pascal_tree

    root = tmp_path_factory.mktemp("pascal") / "PASCAL_MT"
    return root, make_pascal_tree(root)


@pytest.fixture(scope="session")
def nyud(tmp_path_factory):
    """A generated NYUD-v2 tree (`tests.real_trees`): (root, labels written per id)."""
    from tests.real_trees import make_nyud_tree

    root = tmp_path_factory.mktemp("nyud") / "NYUD_MT"
    return root, make_nyud_tree(root)
