from __future__ import annotations

from warmd.events import SUBSCRIBER_BACKLOG, EventBus


def test_filters_by_kind_prefix_and_model() -> None:
    bus = EventBus()
    sub = bus.subscribe(kinds=["model."], model="a")
    bus.publish("catalog.added", model="a")
    bus.publish("model.loaded", model="b")
    bus.publish("model.loaded", model="a", message="yes")
    event = sub.get(timeout=1)
    assert event is not None and event.message == "yes" and event.seq == 3
    assert sub.get(timeout=0.05) is None


def test_a_subscriber_that_falls_behind_is_closed_not_silently_skipped() -> None:
    bus = EventBus()
    slow, other = bus.subscribe(), bus.subscribe(kinds=["never."])
    for _ in range(SUBSCRIBER_BACKLOG + 1):
        bus.publish("job.progress")
    assert slow.closed and slow.overflowed
    assert not other.closed
    bus.close_all()
    assert other.closed and other.get(timeout=0.05) is None
