"""Schedule expressions: cron or friendly forms, time zones, and the slots they fire at.

Two things APScheduler 3 gets wrong for us, measured on 3.11:
- ``CronTrigger.from_crontab("0 8 * * 1")`` fires on Tuesday: its numeric day_of_week
  counts 0 as Monday, cron counts 0 as Sunday. We parse cron ourselves and hand
  APScheduler day *names*.
- On the day clocks fall back, a 01:30 slot comes back twice (01:30 before and after the
  change); asked again after the second it returns that same instant, and an hourly
  schedule loses the slot after the repeated hour. Slots are therefore computed in local
  wall-clock time (:func:`next_slots`, :class:`WallClockTrigger`) and identified by it
  (:func:`slot_key`), which the run claim in the database will be unique on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from digest.errors import InvalidInputError

DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FULL_DAYS = {name: name[:3] for name in (
    "sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")}
_TIME = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})"
_FRIENDLY = [
    (re.compile(rf"^daily at {_TIME}$"), "daily"),
    (re.compile(rf"^weekly on (?P<days>[a-z, ]+?) at {_TIME}$"), "weekly"),
    (re.compile(rf"^monthly on day (?P<day>\d{{1,2}}) at {_TIME}$"), "monthly"),
]


@dataclass(frozen=True)
class CronSpec:
    """Cron fields, with days of the week as names (never numbers)."""

    minute: str
    hour: str
    day: str
    month: str
    day_of_week: str

    def __str__(self) -> str:
        return f"{self.minute} {self.hour} {self.day} {self.month} {self.day_of_week}"


def _dow_part(part: str, where: str) -> str:
    """One comma-separated piece of a cron day-of-week field, as names."""
    step = ""
    if "/" in part:
        part, step_text = part.split("/", 1)
        step = "/" + step_text
    if part == "*":
        return "*" + step

    def name(token: str) -> str:
        token = token.strip().lower()
        if token.isdigit():
            number = int(token)
            if not 0 <= number <= 7:
                raise InvalidInputError(f"{where}: day of week {token} is not 0-7")
            return DAY_NAMES[number % 7]  # cron: 0 and 7 are Sunday
        token = _FULL_DAYS.get(token, token)
        if token not in DAY_NAMES:
            raise InvalidInputError(f"{where}: {token!r} is not a day of the week")
        return token

    if "-" in part:
        first, last = part.split("-", 1)
        start, end = name(first), name(last)
        if DAY_NAMES.index(end) < DAY_NAMES.index(start) and end != "sun":
            raise InvalidInputError(f"{where}: day range {part!r} runs backwards")
        if end == "sun" and start != "sun":  # "1-7" means Monday to Sunday
            return f"{start}-sat,sun{step}"
        return f"{start}-{end}{step}"
    return name(part) + step


def parse_expression(text: str) -> CronSpec:
    """A cron expression ("0 8 * * mon") or a friendly form ("weekly on monday at 08:00").

    Raise :class:`InvalidInputError` naming what is wrong.
    """
    cleaned = " ".join(text.strip().lower().split())
    for pattern, kind in _FRIENDLY:
        match = pattern.match(cleaned)
        if not match:
            continue
        hour, minute = int(match["hour"]), int(match["minute"])
        if hour > 23 or minute > 59:
            raise InvalidInputError(f"{text!r}: {hour:02d}:{minute:02d} is not a time of day")
        if kind == "daily":
            spec = CronSpec(str(minute), str(hour), "*", "*", "*")
        elif kind == "weekly":
            days = [d for d in re.split(r"[ ,]+|\band\b", match["days"]) if d]
            names = ",".join(_dow_part(d, repr(text)) for d in days)
            spec = CronSpec(str(minute), str(hour), "*", "*", names)
        else:
            day_number = int(match["day"])
            if not 1 <= day_number <= 31:
                raise InvalidInputError(
                    f"{text!r}: day {day_number} is not a day of the month")
            spec = CronSpec(str(minute), str(hour), str(day_number), "*", "*")
        return _checked(spec, text)
    fields = cleaned.split(" ")
    if len(fields) != 5:
        raise InvalidInputError(
            f"{text!r} is neither a cron expression (5 fields: minute hour day month "
            "day-of-week) nor a form like 'weekly on monday at 08:00', 'daily at 07:30' or "
            "'monthly on day 1 at 09:00'")
    names = ",".join(_dow_part(p, repr(text)) for p in fields[4].split(","))
    return _checked(CronSpec(fields[0], fields[1], fields[2], fields[3], names), text)


def _checked(spec: CronSpec, text: str) -> CronSpec:
    try:
        CronTrigger(minute=spec.minute, hour=spec.hour, day=spec.day, month=spec.month,
                    day_of_week=spec.day_of_week, timezone=ZoneInfo("UTC"))
    except ValueError as e:
        raise InvalidInputError(f"{text!r} is not a valid schedule: {e}") from e
    return spec


def time_zone(name: str) -> ZoneInfo:
    """An IANA time zone by name, or a clear error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidInputError(f"{name!r} is not an IANA time zone (like Europe/London)") \
            from e


def trigger(spec: CronSpec, zone: ZoneInfo) -> CronTrigger:
    """The APScheduler trigger for a spec in a zone (day names only)."""
    return CronTrigger(minute=spec.minute, hour=spec.hour, day=spec.day, month=spec.month,
                       day_of_week=spec.day_of_week, timezone=zone)


def slot_key(fire_time: datetime, zone: ZoneInfo) -> str:
    """A slot's identity: its local wall-clock minute ("2026-10-25T01:30").

    A run claim unique on it lets each slot fire once, whatever the clock does.
    """
    return fire_time.astimezone(zone).strftime("%Y-%m-%dT%H:%M")


def _real(local: datetime, zone: ZoneInfo) -> datetime:
    """A local wall-clock time as an instant.

    fold=0: a time that happens twice (fall back) is its first occurrence; a time that
    never happens (spring forward) takes the offset from before the gap, so it fires once,
    just after the gap.
    """
    return local.replace(tzinfo=zone, fold=0)


def next_slots(spec: CronSpec, zone: ZoneInfo, after: datetime,
               count: int = 3) -> list[datetime]:
    """The next ``count`` slots strictly after ``after``, as aware local times.

    Computed in local wall-clock time, where there is no DST: the cron runs over naive
    local times, and each slot becomes an instant by :func:`_real`. APScheduler's own
    zone handling repeats fall-back slots and loses the hour after them.
    """
    wall = trigger(spec, ZoneInfo("UTC"))  # naive local times, carried as UTC
    cursor = after.astimezone(zone).replace(tzinfo=ZoneInfo("UTC"), fold=0)
    # A second occurrence of an ambiguous hour: start from its first, and let the
    # `> after` test below drop what already happened.
    cursor -= timedelta(hours=2) if after.astimezone(zone).fold else timedelta(0)
    slots: list[datetime] = []
    for _ in range(count + 400):
        fire = wall.get_next_fire_time(None, cursor)
        if fire is None:
            break
        real = _real(fire.replace(tzinfo=None), zone)
        if real > after:
            slots.append(real)
            if len(slots) == count:
                break
        cursor = fire + timedelta(seconds=1)
    return slots


class WallClockTrigger(BaseTrigger):  # type: ignore[misc]
    """An APScheduler trigger that fires each local wall-clock slot exactly once."""

    def __init__(self, spec: CronSpec, zone: ZoneInfo) -> None:
        self.spec = spec
        self.zone = zone

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime | None:
        after = max(now, previous_fire_time) if previous_fire_time else now
        found = next_slots(self.spec, self.zone, after - timedelta(microseconds=1), 1)
        if not found:
            return None
        if previous_fire_time is not None and found[0] <= previous_fire_time:
            found = next_slots(self.spec, self.zone, previous_fire_time, 1)
        return found[0] if found else None

    def __str__(self) -> str:
        return f"wallclock[{self.spec} {self.zone.key}]"
