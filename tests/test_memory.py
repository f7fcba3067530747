"""run_with_cache asks glibc to keep freed pages, unless LENS_KEEP_FREED_MEMORY=0."""

import sys

import pytest

from lens import memory


@pytest.fixture
def fresh():
    memory.keep_freed_memory.cache_clear()
    yield
    memory.keep_freed_memory.cache_clear()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning applies on Linux only")
def test_freed_memory_is_kept_on_glibc(fresh):
    assert memory.keep_freed_memory() is True


def test_the_environment_turns_it_off(fresh, monkeypatch):
    monkeypatch.setenv("LENS_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory() is False
