import os

import pytest
import torch

# At most 2 threads unless OMP_NUM_THREADS says otherwise (the suite must run on 2 shared cores);
# `OMP_NUM_THREADS=N pytest` runs it with N, e.g. 1 or the machine's cores, to check thread-count independence.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--deterministic", action="store_true",
                     help="run with torch.use_deterministic_algorithms(True): any op without a deterministic implementation fails")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--deterministic"):
        torch.use_deterministic_algorithms(True)


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: every random draw in the suite is reproducible."""
    return torch.Generator().manual_seed(1234)
