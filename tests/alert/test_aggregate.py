"""The aggregation state machine, driven by plain calls and a hand-turned clock."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from preguard.alert.aggregate import Aggregator, Window
from preguard.proto import Alert, Kind, Severity
from tests.alert.conftest import make_event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def aggregator(clock: Clock, **changes: float) -> Aggregator:
    options: dict[str, float] = {"window": 60.0, "update_interval": 5.0, "grace": 2.0, **changes}
    return Aggregator(**options, clock=clock)  # type: ignore[arg-type]


def drain(agg: Aggregator) -> list[Alert]:
    agg.flush()
    agg.expire()
    return agg.take()[0]


def test_first_event_is_an_alert_at_once_and_repeats_fold_into_throttled_updates() -> None:
    clock = Clock()
    agg = aggregator(clock)
    agg.add([make_event()], seq=1)
    [new] = drain(agg)
    assert (new.state, new.count) == ("new", 1)
    agg.add([make_event()] * 10, seq=2)
    assert drain(agg) == []  # within update_interval of the first publish
    clock.now += 5
    [update] = drain(agg)
    assert (update.id, update.state, update.count) == (new.id, "update", 11)
    clock.now += 5
    assert drain(agg) == []  # nothing changed: no update


def test_window_closing_publishes_the_final_count_and_a_later_event_opens_a_new_alert() -> None:
    clock = Clock()
    agg = aggregator(clock)
    agg.add([make_event()] * 3, seq=1)
    [new] = drain(agg)
    clock.now += 62
    [final] = drain(agg)
    assert (final.id, final.state, final.count) == (new.id, "final", 3)
    agg.add([make_event()], seq=2)
    [again] = drain(agg)
    assert again.state == "new" and again.id != new.id


def test_an_event_past_the_window_in_event_time_closes_it_at_once() -> None:
    clock = Clock()
    agg = aggregator(clock)
    first = make_event()
    agg.add([first, first], seq=1)
    later = make_event(time=first.time + timedelta(seconds=60))
    agg.add([later], seq=2)
    new, final, second = drain(agg)
    assert (final.id, final.state, final.count) == (new.id, "final", 2)
    assert (second.state, second.count) == ("new", 1)


def test_redelivered_message_is_not_counted_twice_after_restore() -> None:
    clock = Clock()
    agg = aggregator(clock)
    agg.add([make_event()] * 5, seq=7)
    _, changes = agg.take()
    restored = aggregator(clock)
    for window in changes.values():
        assert window is not None
        restored.restore(msgspec.json.decode(msgspec.json.encode(window), type=Window))
    restored.add([make_event()] * 5, seq=7)  # the same message again
    restored.add([make_event()] * 2, seq=8)
    clock.now += 62
    [final] = drain(restored)
    assert (final.state, final.count) == ("final", 7)


def test_tamper_is_always_critical() -> None:
    agg = aggregator(Clock())
    agg.add([make_event(kind=Kind.TAMPER, target="/etc/ld.so.preload", severity=Severity.LOW)], seq=1)
    [alert] = drain(agg)
    assert alert.severity == Severity.CRITICAL and alert.kind == Kind.TAMPER


def test_container_hitting_many_distinct_targets_raises_one_attack_alert_naming_them() -> None:
    clock = Clock()
    agg = Aggregator(window=60, update_interval=5, attack_threshold=3, clock=clock)
    for i in range(5):
        agg.add([make_event(target=f"/bin/tool{i}")], seq=i + 1)
    alerts = drain(agg)
    attacks = [a for a in alerts if a.kind == Kind.ATTACK]
    assert [a.state for a in attacks] == ["new"]
    assert attacks[0].severity == Severity.CRITICAL and attacks[0].count == 3
    assert "/bin/tool0" in attacks[0].detail and "/bin/tool2" in attacks[0].detail
    clock.now += 62
    final = [a for a in drain(agg) if a.kind == Kind.ATTACK]
    assert [(a.state, a.count, a.id) for a in final] == [("final", 5, attacks[0].id)]


def test_below_the_attack_threshold_nothing_extra_is_raised() -> None:
    clock = Clock()
    agg = Aggregator(window=60, update_interval=5, attack_threshold=3, clock=clock)
    agg.add([make_event(target="/bin/a"), make_event(target="/bin/b")], seq=1)
    clock.now += 62
    assert all(a.kind != Kind.ATTACK for a in drain(agg))


def test_same_key_in_two_containers_gives_two_alerts() -> None:
    agg = aggregator(Clock())
    agg.add([make_event(), make_event(container_id="0123456789ab")], seq=1)
    a, b = drain(agg)
    assert a.id != b.id and {a.container_id, b.container_id} == {"c0ffee000001", "0123456789ab"}
