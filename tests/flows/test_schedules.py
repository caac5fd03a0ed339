"""The schedules of `prefect.yaml`: each names its time zone, docs/orchestration.md says when the
nightly runs in UTC and in the user's terms, and what it says of daylight saving time holds for
the installed Prefect's cron schedules (one run a day across both switch days). References: the
standard library's ``zoneinfo`` and dates written out by hand, not prh's code."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "orchestration.md").read_text(encoding="utf-8")


def _schedules() -> dict[str, list[dict]]:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]
    return {d["name"]: d.get("schedules") or [] for d in deployments}


def test_every_schedule_names_its_time_zone_and_the_docs_table_says_it() -> None:
    """A cron without ``timezone`` is UTC in Prefect, which nobody reading `prefect.yaml` can
    tell; each schedule names one, and the deployments table of docs/orchestration.md gives the
    same cron and zone."""
    scheduled = {name: entries for name, entries in _schedules().items() if entries}
    assert set(scheduled) == {"nightly", "nightly-staged"}
    for name, entries in scheduled.items():
        for entry in entries:
            assert entry.get("timezone"), f"prefect.yaml: a schedule of {name} names no timezone"
            ZoneInfo(entry["timezone"])  # a real IANA name
            row = next(line for line in PAGE.splitlines() if line.startswith("| `prh-") and f"/{name}` |" in line)
            assert f"`{entry['cron']}` {entry['timezone']}" in row, row


def test_the_docs_say_when_the_nightly_runs_in_local_terms() -> None:
    """02:00 UTC in the zones the page names, worked out with ``zoneinfo`` on a winter and a
    summer night (the page's words for each)."""
    entry = _schedules()["nightly"][0]
    assert (entry["cron"], entry["timezone"]) == ("0 2 * * *", "UTC")
    paragraph = PAGE.split("02:00 UTC is the same moment all year", 1)[1].split("\n\n", 1)[0]
    paragraph = " ".join(paragraph.split())
    stated = {("America/New_York", 1): "21:00 the evening before in New York in winter (EST)",
              ("America/New_York", 7): "22:00 in summer (EDT)",
              ("Europe/Berlin", 1): "03:00 in Berlin in winter (CET)",
              ("Europe/Berlin", 7): "04:00 in summer (CEST)",
              ("Asia/Kolkata", 1): "07:30 in Kolkata (IST",
              ("Asia/Kolkata", 7): "07:30 in Kolkata (IST"}
    for (zone, month), words in stated.items():
        local = datetime(2026, month, 15, 2, tzinfo=timezone.utc).astimezone(ZoneInfo(zone))
        assert f"{local:%H:%M}" in words and local.tzname() in words, (zone, month, local)
        assert local.day == (14 if zone == "America/New_York" else 15), (zone, month)  # New York: the evening before
        assert words in paragraph, words


def _local_runs(cron: str, zone: str, first: str, days: int) -> list[datetime]:
    from prefect.server.schemas.schedules import CronSchedule

    start = datetime.fromisoformat(first).replace(tzinfo=ZoneInfo(zone))
    dates = asyncio.run(CronSchedule(cron=cron, timezone=zone).get_dates(n=days + 2, start=start,
                                                                          end=start + timedelta(days=days)))
    return [d.astimezone(ZoneInfo(zone)) for d in dates]


def test_a_local_hour_runs_once_a_day_across_daylight_saving_time_as_the_docs_say() -> None:
    """New York, 2026: clocks go from 02:00 to 03:00 on 8 March and from 02:00 back to 01:00 on
    1 November. ``0 2 * * *`` runs at 03:00 local on 8 March (02:00 does not exist), ``30 1 * * *``
    once at the first 01:30 on 1 November (it happens twice); every other day at its hour, one run
    a day."""
    spring = _local_runs("0 2 * * *", "America/New_York", "2026-03-06T12:00:00", 5)
    assert [(d.day, d.hour, d.minute) for d in spring] == [(7, 2, 0), (8, 3, 0), (9, 2, 0), (10, 2, 0), (11, 2, 0)]
    assert spring[1].astimezone(timezone.utc) == datetime(2026, 3, 8, 7, tzinfo=timezone.utc)  # 03:00 EDT
    autumn = _local_runs("30 1 * * *", "America/New_York", "2026-10-30T12:00:00", 5)
    assert [(d.day if d.month == 10 else 31 + d.day, d.hour, d.minute) for d in autumn] == \
        [(31, 1, 30), (32, 1, 30), (33, 1, 30), (34, 1, 30), (35, 1, 30)]
    assert autumn[1].astimezone(timezone.utc) == datetime(2026, 11, 1, 5, 30, tzinfo=timezone.utc)  # the first 01:30 (EDT)
    paragraph = " ".join(PAGE.split("To run at a local hour", 1)[1].split("\n\n", 1)[0].split())
    for words in ("once a day, never twice and never skipped", "(`0 2 * * *` in New York on 2026-03-08) runs an hour later, at 03:00 local",
                  "(`30 1 * * *` on 2026-11-01) runs once, at the first 01:30"):
        assert words in paragraph, words
    assert re.search(r"`tests/flows/test_schedules\.py`", paragraph)
