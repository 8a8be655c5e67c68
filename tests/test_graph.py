"""The default search width of graph engines (rechub_serving.graph)."""

from __future__ import annotations

from rechub_serving.graph import default_ef, search_width


def test_the_default_width_is_128_up_to_100000_then_doubles_per_tenfold():
    assert default_ef(0) == default_ef(1_000) == default_ef(100_000) == 128
    assert default_ef(1_000_000) == 256 and default_ef(10_000_000) == 512
    assert 128 < default_ef(300_000) < 256  # 178: grows smoothly between the decades
    widths = [default_ef(n) for n in range(100_000, 2_000_000, 50_000)]
    assert widths == sorted(widths)


def test_the_width_of_a_call_is_at_least_k():
    assert search_width(None, 10, 1_000_000) == 256 and search_width(None, 200, 1_000) == 400
    assert search_width(16, 10, 1_000_000) == 16 and search_width(4, 10, 1_000) == 10
