import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def gen():
    """A fresh, seeded generator per test: every random draw in the suite is reproducible."""
    return torch.Generator().manual_seed(1234)


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: bad inputs, faults and lost work (run alone with -m reliability)")
