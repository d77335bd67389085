"""Schedule expressions: day names, friendly forms, time zones, DST slots once each."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from digest.errors import InvalidInputError
from schedules.expressions import (
    WallClockTrigger,
    next_slots,
    parse_expression,
    slot_key,
    time_zone,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("0 8 * * 1", "0 8 * * mon"),            # cron's 1 is Monday (APScheduler's is Tuesday)
    ("0 8 * * 0", "0 8 * * sun"),
    ("0 8 * * 7", "0 8 * * sun"),
    ("30 7 * * 1-5", "30 7 * * mon-fri"),
    ("0 9 * * 1-7", "0 9 * * mon-sat,sun"),
    ("0 8 * * MON,Wed", "0 8 * * mon,wed"),
    ("weekly on monday at 08:00", "0 8 * * mon"),
    ("weekly on monday and thursday at 18:05", "5 18 * * mon,thu"),
    ("daily at 07:30", "30 7 * * *"),
    ("monthly on day 1 at 09:00", "0 9 1 * *"),
])
def test_expressions(text: str, expected: str) -> None:
    assert str(parse_expression(text)) == expected


@pytest.mark.parametrize("text", ["0 8 * *", "0 25 * * mon", "0 8 * * 8", "0 8 * * funday",
                                  "weekly on someday at 08:00", "daily at 24:10",
                                  "monthly on day 32 at 09:00", "every now and then"])
def test_bad_expressions_say_what_is_wrong(text: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_expression(text)
    assert repr(text) in str(info.value) or text in str(info.value)


def test_unknown_time_zone() -> None:
    with pytest.raises(InvalidInputError, match="IANA"):
        time_zone("Europe/Londres")


def test_monday_is_monday_in_the_lists_zone() -> None:
    zone = ZoneInfo("Europe/London")
    slots = next_slots(parse_expression("0 8 * * 1"), zone,
                       datetime(2026, 11, 23, 9, tzinfo=zone), count=3)  # a Monday, 09:00
    assert [s.strftime("%A %d %H:%M") for s in slots] == [
        "Monday 30 08:00", "Monday 07 08:00", "Monday 14 08:00"]


@pytest.mark.parametrize(("zone_name", "day"), [
    ("Europe/London", "2026-03-29"), ("Europe/London", "2026-10-25"),
    ("America/New_York", "2026-03-08"), ("America/New_York", "2026-11-01")])
def test_a_0130_slot_on_dst_days_fires_once(zone_name: str, day: str) -> None:
    zone = ZoneInfo(zone_name)
    slots = next_slots(parse_expression("daily at 01:30"), zone,
                       datetime.fromisoformat(day + "T00:00").replace(tzinfo=zone), count=3)
    keys = [slot_key(s, zone) for s in slots]
    assert keys[0].startswith(day), keys
    assert len(set(keys)) == 3, "each day's slot once"
    assert [k[:10] for k in keys] == sorted({k[:10] for k in keys})
    # Consecutive days: no day skipped, none twice.
    days = [datetime.fromisoformat(k).date() for k in keys]
    assert [(b - a).days for a, b in itertools.pairwise(days)] == [1, 1]
    # Each slot is in the future of the previous one, in real (UTC) time.
    instants = [s.astimezone(UTC) for s in slots]
    assert instants == sorted(instants)


@pytest.mark.parametrize(("zone_name", "day", "expected"), [
    ("Europe/London", "2026-10-25",
     ["00:00Z", "01:00+01", "02:00+00", "03:00+00", "04:00+00"]),
    ("Europe/London", "2026-03-29",
     ["00:00Z", "01:00+00", "02:00+01", "03:00+01", "04:00+01"]),
])
def test_hourly_slots_around_the_clock_change(zone_name: str, day: str,
                                              expected: list[str]) -> None:
    """Every local hour once: the repeated hour once; the missing hour once, as the gap
    ends (the same moment as the next hour's slot, as cron does)."""
    zone = ZoneInfo(zone_name)
    start = datetime.fromisoformat(day + "T00:00").replace(tzinfo=zone)
    slots = next_slots(parse_expression("0 * * * *"), zone, start - timedelta(minutes=1), 5)
    shown = [s.strftime("%H:%M") + ("Z" if i == 0 and s.utcoffset() == timedelta(0)
                                    else f"+{s.utcoffset() // timedelta(hours=1):02d}")
             for i, s in enumerate(slots)]
    assert shown[1:] == expected[1:]
    instants = [s.astimezone(UTC) for s in slots]
    assert instants == sorted(instants), "never earlier than the slot before"
    assert len({slot_key(s, zone) for s in slots}) == 5, "five distinct slots"


def test_wall_clock_trigger_never_repeats_a_slot() -> None:
    zone = ZoneInfo("Europe/London")
    trigger = WallClockTrigger(parse_expression("daily at 01:30"), zone)
    now = datetime(2026, 10, 24, 12, tzinfo=UTC)
    fired: list[datetime] = []
    previous = None
    for _ in range(4):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        fired.append(fire)
        previous, now = fire, fire + timedelta(seconds=1)
    assert [slot_key(f, zone) for f in fired] == [
        "2026-10-25T01:30", "2026-10-26T01:30", "2026-10-27T01:30", "2026-10-28T01:30"]
