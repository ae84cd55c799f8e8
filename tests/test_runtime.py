"""bdense_core.runtime: the CPU threads a process uses."""

import pytest
import torch

from bdense_core.runtime import THREADS_ENV, cpu_threads, usable_cores


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bdense_num_threads_sets_torchs_cpu_threads(monkeypatch, restore_threads):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    unset = cpu_threads()
    assert unset == torch.get_num_threads()  # unset: torch's own choice is left alone
    monkeypatch.setenv(THREADS_ENV, "1")
    assert cpu_threads() == 1 == torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, " 2 ")
    assert cpu_threads() == 2 == torch.get_num_threads()
    assert 1 <= usable_cores() <= (__import__("os").cpu_count() or 1)


@pytest.mark.parametrize("value", ["0", "-3", "two", "1.5"])
def test_a_bad_thread_count_names_the_fix(monkeypatch, restore_threads, value):
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(ValueError, match=rf"BDENSE_NUM_THREADS='{value}': give a whole number of CPU threads, 1 or more"):
        cpu_threads()
    assert torch.get_num_threads() == before
