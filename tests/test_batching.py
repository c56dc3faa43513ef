"""Batch queues: bounded per camera, never blocking the producer, fair, and prompt."""

from __future__ import annotations

import threading
import time

import pytest

from birdwatch.runtime.batching import Batcher


def test_full_batch_is_taken_at_once() -> None:
    b: Batcher[int] = Batcher(max_batch=4, max_wait_s=60, capacity_per_key=10)
    for i in range(4):
        b.put("a", i)
    assert b.get_batch(timeout=1) == [0, 1, 2, 3]


@pytest.mark.timeout(10)
def test_partial_batch_waits_for_the_oldest_items_deadline() -> None:
    b: Batcher[int] = Batcher(max_batch=8, max_wait_s=0.2, capacity_per_key=10)
    b.put("a", 1)
    started = time.monotonic()
    assert b.get_batch(timeout=5) == [1]
    assert time.monotonic() - started >= 0.15


def test_empty_after_timeout() -> None:
    b: Batcher[int] = Batcher(max_batch=2, max_wait_s=0.01, capacity_per_key=2)
    assert b.get_batch(timeout=0.05) == []


def test_full_queue_drops_the_oldest_of_that_camera_only() -> None:
    b: Batcher[str] = Batcher(max_batch=100, max_wait_s=0, capacity_per_key=2)
    for i in range(5):
        b.put("busy", f"busy{i}")
    b.put("quiet", "quiet0")
    assert b.dropped == {"busy": 3, "quiet": 0}
    assert sorted(b.get_batch(timeout=1)) == ["busy3", "busy4", "quiet0"]


def test_round_robin_no_camera_starves() -> None:
    b: Batcher[str] = Batcher(max_batch=3, max_wait_s=0, capacity_per_key=100)
    for i in range(50):
        b.put("busy", f"b{i}")
    b.put("quiet", "q0")
    first = b.get_batch(timeout=1)
    assert "q0" in first, "a camera with one frame is served in the first batch beside a busy one"


def test_batch_size_counts_work_not_items() -> None:
    # Classify batches count crops: a frame with 3 boxes is 3 units of work, and stays whole.
    b: Batcher[tuple[str, int]] = Batcher(max_batch=4, max_wait_s=0, capacity_per_key=10, size_of=lambda x: x[1])
    b.put("a", ("a0", 3))
    b.put("a", ("a1", 1))
    b.put("b", ("b0", 3))
    assert b.get_batch(timeout=1) == [("a0", 3), ("b0", 3)]
    assert b.get_batch(timeout=1) == [("a1", 1)]


@pytest.mark.timeout(10)
def test_producers_never_block_and_close_drains() -> None:
    b: Batcher[int] = Batcher(max_batch=10, max_wait_s=1.0, capacity_per_key=3)
    started = time.monotonic()
    for i in range(10_000):
        b.put("cam", i)
    assert time.monotonic() - started < 5
    assert b.depth() == 3 and b.dropped["cam"] == 9_997
    got: list[list[int]] = []
    consumer = threading.Thread(target=lambda: got.append(b.get_batch(timeout=5)))
    consumer.start()
    b.close()
    consumer.join(5)
    assert got == [[9_997, 9_998, 9_999]], "closing hands over what is queued at once"
    assert b.get_batch(timeout=0.1) == []


def test_take_hands_each_batch_on_while_the_queue_is_held() -> None:
    """What `then` does (queue the batch for the next stage) happens in the order batches are taken."""
    batcher: Batcher[int] = Batcher(max_batch=2, max_wait_s=0.0, capacity_per_key=8)
    handed: list[list[int]] = []
    for i in range(4):
        batcher.put("cam", i)
    assert batcher.take(0.1, lambda batch: handed.append(batch) or len(batch)) == 2
    assert batcher.take(0.1, lambda batch: handed.append(batch) or len(batch)) == 2
    assert handed == [[0, 1], [2, 3]]
    assert batcher.take(0.05, handed.append) is None, "nothing queued: then is not called"
    assert len(handed) == 2
