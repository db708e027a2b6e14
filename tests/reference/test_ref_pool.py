"""PagePool: ids, order, all-or-nothing failures."""

import pytest

from kvspec.errors import ProtocolError
from kvspec.reference.pool import NULL_PAGE, PagePool


def test_ids_start_at_one_and_null_page_is_never_handed_out() -> None:
    pool = PagePool(4)
    pages = pool.allocate_n(4)
    assert sorted(pages) == [1, 2, 3, 4]
    assert NULL_PAGE not in pages
    assert pool.num_free_pages == 0


def test_allocate_in_id_order_and_lifo_reuse() -> None:
    pool = PagePool(5)
    assert pool.allocate_n(3) == [1, 2, 3]
    pool.free_n([2])
    assert pool.allocate_n(1) == [2]
    assert pool.allocate_n(0) == []


def test_over_allocation_raises_before_mutating() -> None:
    pool = PagePool(2)
    before = pool.get_free_pages()
    with pytest.raises(ProtocolError, match="only 2 free"):
        pool.allocate_n(3)
    with pytest.raises(ProtocolError, match="n must be >= 0"):
        pool.allocate_n(-1)
    assert pool.get_free_pages() == before


def test_overflowing_double_free_raises_before_mutating() -> None:
    pool = PagePool(2)
    pool.allocate_n(1)
    with pytest.raises(ProtocolError, match="freed twice"):
        pool.free_n([1, 2])
    assert pool.num_free_pages == 1


def test_empty_pool() -> None:
    pool = PagePool(0, "host")
    assert pool.num_free_pages == 0
    assert pool.allocate_n(0) == []
    with pytest.raises(ProtocolError, match="host pool"):
        pool.allocate_n(1)
