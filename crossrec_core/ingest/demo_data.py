"""``crossrec demo-data``: synthetic two-domain logs with a real cross-domain signal.

The generative model (all numpy, vectorised; deterministic for a seed and an end date):

* One taste space of :data:`TASTE_DIM` dimensions for both domains. It holds a few taste
  centres (unit vectors) and every item of both domains (standard normal vectors).
* Each user has a primary and a secondary taste centre, the SAME in both domains: this is
  the signal a cross-domain model learns (a user's target choices follow from their
  source choices). An event draws the primary centre with probability
  :data:`PRIMARY_TASTE`, else the secondary one, then an item ``j`` with probability
  ``softmax_j(AFFINITY * centre . item_j - ZIPF_EXPONENT * log(1 + popularity rank_j))``,
  the second term a Zipf-like popularity. Sampling is inverse-CDF per centre
  (``searchsorted``), so its cost does not grow with users x items.
* Users overlap partially: :data:`SOURCE_ONLY_SHARE` are active in the source only,
  :data:`TARGET_ONLY_SHARE` in the target only, the rest in both. The target is sparser:
  :data:`TARGET_VOLUME` times the source's events and half its catalogue. A user's share of
  events follows a log-normal activity level.
* Events are ``view`` / ``click`` / ``purchase`` (purchases carry a quantity ``value``),
  at uniformly random seconds of their day.

Files per (domain, day), so that the clean stage sees every format: the source domain's
``events.csv`` (ts as epoch seconds), the target domain's ``events.jsonl.gz`` (ts as
ISO-8601), and for both a typed ``events.parquet`` (ts as int64 epoch milliseconds) with
:data:`PARQUET_SHARE` of the day's events.

Malformed rows: exactly ``round(bad_fraction * rows)`` of each file, spread evenly over
the kinds of :class:`BadKind` that its format can hold (a typed Parquet file has no
unparseable timestamp and no malformed line), except 10 KB ids: at most
:data:`MAX_OVERSIZE_PER_FILE` per file. Each such row is bad in one way only, so
the clean stage quarantines exactly that share.
"""

from __future__ import annotations

import gzip
import io
import logging
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from crossrec_core.config import Settings
from crossrec_core.contracts import RAW
from crossrec_core.dates import parse_ds
from crossrec_core.errors import InputError
from crossrec_core.ingest.landing import (
    SECONDS_PER_DAY,
    DomainSummary,
    ImportSummary,
    day_of_ds,
    ds_of_day,
    log_landed,
    warn_other_partitions,
    yesterday_utc,
)
from crossrec_core.lake import Lake

log = logging.getLogger(__name__)

TASTE_DIM = 16
PRIMARY_TASTE = 0.75
AFFINITY = 3.0
ZIPF_EXPONENT = 0.7
SOURCE_ONLY_SHARE = 0.15
TARGET_ONLY_SHARE = 0.10
TARGET_VOLUME = 0.35
EVENTS_PER_USER_PER_DAY = 8
USERS_PER_CENTRE = 50
MAX_CENTRES = 64
EVENT_TYPES = pa.array(["view", "click", "purchase"])
EVENT_TYPE_SHARES = (0.70, 0.22, 0.08)
PURCHASE = 2
PARQUET_SHARE = 0.2
TWO_DIGITS = pa.array([f"{n:02d}" for n in range(60)])

OVERSIZE_ID = "u" + "x" * 10_239  # 10 KB
MAX_OVERSIZE_PER_FILE = 3
BLANK_ID = "   "
UNPARSEABLE_TS = "not-a-time"
UNKNOWN_EVENT_TYPE = "hover"
NEGATIVE_VALUE = -1.0
FUTURE_SHIFT_SECONDS = 3 * SECONDS_PER_DAY  # beyond the clean stage's tolerance of a day


class BadKind(StrEnum):
    MISSING_USER_ID = "missing_user_id"
    BLANK_ITEM_ID = "blank_item_id"
    UNPARSEABLE_TS = "unparseable_ts"
    FUTURE_TS = "future_ts"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    NEGATIVE_VALUE = "negative_value"
    OVERSIZE_ID = "oversize_id"
    MALFORMED_LINE = "malformed_line"


TEXT_BAD_KINDS = tuple(BadKind)
TYPED_BAD_KINDS = tuple(k for k in BadKind if k not in (BadKind.UNPARSEABLE_TS, BadKind.MALFORMED_LINE))


@dataclass(frozen=True)
class TasteModel:
    user_ids: pa.Array
    primary: np.ndarray  # user -> taste centre
    secondary: np.ndarray
    members: dict[str, np.ndarray]  # domain -> users active there
    activity_cdf: dict[str, np.ndarray]  # domain -> CDF over its members
    item_ids: dict[str, pa.Array]
    item_cdf: dict[str, np.ndarray]  # domain -> (centres x items) CDF, row c shifted by +c and flattened


def _ids(prefix: str, count: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(np.arange(count)).cast(pa.string()), "")


def _item_cdf(rng: np.random.Generator, centres: np.ndarray, n_items: int) -> np.ndarray:
    vectors = rng.standard_normal((n_items, centres.shape[1]))
    popularity_rank = rng.permutation(n_items)
    logits = AFFINITY * centres @ vectors.T - ZIPF_EXPONENT * np.log1p(popularity_rank)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(weights, axis=1) / weights.sum(axis=1, keepdims=True)
    cdf[:, -1] = 1.0
    return (cdf + np.arange(len(centres))[:, None]).ravel()


def taste_model(rng: np.random.Generator, users: int, source: str, target: str) -> TasteModel:
    n_centres = int(np.clip(users // USERS_PER_CENTRE, 4, MAX_CENTRES))
    centres = rng.standard_normal((n_centres, TASTE_DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    role = rng.random(users)
    activity = rng.lognormal(0.0, 1.0, users)
    members = {
        source: np.flatnonzero(role >= TARGET_ONLY_SHARE),
        target: np.flatnonzero((role < TARGET_ONLY_SHARE) | (role >= TARGET_ONLY_SHARE + SOURCE_ONLY_SHARE)),
    }
    n_items = {source: max(20, users // 4), target: max(10, users // 8)}
    return TasteModel(
        user_ids=_ids("u", users),
        primary=rng.integers(0, n_centres, users),
        secondary=rng.integers(0, n_centres, users),
        members=members,
        activity_cdf={d: np.cumsum(activity[m]) / activity[m].sum() for d, m in members.items()},
        item_ids={d: _ids(f"{d}-", n) for d, n in n_items.items()},
        item_cdf={d: _item_cdf(rng, centres, n) for d, n in n_items.items()},
    )


def _inverse_cdf(cdf: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``searchsorted(cdf, keys)``; the keys are searched in sorted order, three times faster
    on a large CDF (each search starts near the previous one, in cache)."""
    order = np.argsort(keys)
    found = np.empty(len(keys), dtype=np.int64)
    found[order] = np.searchsorted(cdf, keys[order], side="right")
    return found


def sample_events(model: TasteModel, domain: str, day: int, n: int, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """``n`` events of one domain and day, ordered by time: (table with int64 epoch-second
    ``ts`` and float ``value``, user index per row, item index per row)."""
    members, cdf = model.members[domain], model.activity_cdf[domain]
    user = members[np.minimum(_inverse_cdf(cdf, rng.random(n)), len(members) - 1)]
    centre = np.where(rng.random(n) < PRIMARY_TASTE, model.primary[user], model.secondary[user])
    n_items = len(model.item_ids[domain])
    flat = _inverse_cdf(model.item_cdf[domain], centre + rng.random(n))
    item = np.clip(flat - centre * n_items, 0, n_items - 1)
    ts = day * SECONDS_PER_DAY + rng.integers(0, SECONDS_PER_DAY, n)
    event_type = rng.choice(len(EVENT_TYPE_SHARES), size=n, p=EVENT_TYPE_SHARES)
    quantity = rng.integers(1, 4, n).astype(np.float64)
    order = np.argsort(ts, kind="stable")
    user, item, ts, event_type, quantity = user[order], item[order], ts[order], event_type[order], quantity[order]
    table = pa.table(
        {
            "event_id": _ids(f"{domain}-{ds_of_day(day)}-", n),
            "user_id": model.user_ids.take(user),
            "item_id": model.item_ids[domain].take(item),
            "ts": ts,
            "event_type": EVENT_TYPES.take(event_type),
            "value": pa.array(quantity, mask=event_type != PURCHASE),
        }
    )
    return table, user, item


def _replace(column: pa.Array | pa.ChunkedArray, kind_of: np.ndarray, kind: BadKind, value: object) -> pa.Array:
    """``column`` with ``value`` in the rows of ``kind``. (``replace_with_mask`` takes only
    the replaced values: ``if_else`` with a 10 KB scalar sizes its output for every row.)"""
    mask = kind_of == TEXT_BAD_KINDS.index(kind)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.replace_with_mask(column, pa.array(mask), pa.repeat(pa.scalar(value, column.type), int(mask.sum())))


def corrupt(table: pa.Table, kinds: tuple[BadKind, ...], bad_fraction: float, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray]:
    """Make ``round(bad_fraction * rows)`` rows bad, one kind each, kinds evenly spread.

    Returns the table (kinds that need a string ts or a raw line are applied by the
    writer) and the kind index per row into ``TEXT_BAD_KINDS`` (-1: a good row)."""
    n = table.num_rows
    n_bad = round(bad_fraction * n)
    kind_of = np.full(n, -1)
    # 10 KB ids are few (a handful per file), else they would be most of the bytes
    n_oversize = min(MAX_OVERSIZE_PER_FILE, n_bad // len(kinds))
    others = np.array([TEXT_BAD_KINDS.index(k) for k in kinds if k is not BadKind.OVERSIZE_ID])
    codes = np.concatenate(
        [others[np.arange(n_bad - n_oversize) % len(others)], np.full(n_oversize, TEXT_BAD_KINDS.index(BadKind.OVERSIZE_ID))]
    )
    kind_of[rng.choice(n, size=n_bad, replace=False)] = rng.permutation(codes)

    user = _replace(table["user_id"], kind_of, BadKind.MISSING_USER_ID, None)
    user = _replace(user, kind_of, BadKind.OVERSIZE_ID, OVERSIZE_ID)
    item = _replace(table["item_id"], kind_of, BadKind.BLANK_ITEM_ID, BLANK_ID)
    future = kind_of == TEXT_BAD_KINDS.index(BadKind.FUTURE_TS)
    ts = pa.array(table["ts"].to_numpy() + np.where(future, FUTURE_SHIFT_SECONDS, 0))
    event_type = _replace(table["event_type"], kind_of, BadKind.UNKNOWN_EVENT_TYPE, UNKNOWN_EVENT_TYPE)
    value = _replace(table["value"], kind_of, BadKind.NEGATIVE_VALUE, NEGATIVE_VALUE)
    columns = {"event_id": table["event_id"], "user_id": user, "item_id": item, "ts": ts, "event_type": event_type, "value": value}
    return pa.table(columns), kind_of


def _text_rows(table: pa.Table, kind_of: np.ndarray, ts_text: pa.ChunkedArray) -> tuple[pa.Table, pa.Table]:
    """(well-formed rows with ts as text, rows to render as malformed lines)."""
    ts_text = _replace(ts_text, kind_of, BadKind.UNPARSEABLE_TS, UNPARSEABLE_TS)
    table = table.set_column(table.schema.get_field_index("ts"), "ts", ts_text)
    malformed = kind_of == TEXT_BAD_KINDS.index(BadKind.MALFORMED_LINE)
    return table.filter(pa.array(~malformed)), table.filter(pa.array(malformed))


def _lines(strings: pa.ChunkedArray) -> bytes:
    """Strings joined as lines, each ending with a newline."""
    if not len(strings):
        return b""
    joined = pc.binary_join(pa.ListArray.from_arrays([0, len(strings)], strings.combine_chunks()), "\n")
    return joined[0].as_py().encode() + b"\n"


def csv_bytes(table: pa.Table, kind_of: np.ndarray) -> bytes:
    """CSV with a header; ts as epoch seconds; a malformed line has two fields only."""
    good, malformed = _text_rows(table, kind_of, table["ts"].cast(pa.string()))
    buffer = io.BytesIO()
    pacsv.write_csv(good, buffer)
    return buffer.getvalue() + _lines(pc.binary_join_element_wise(malformed["user_id"], malformed["item_id"], ","))


def iso_utc(seconds: np.ndarray) -> pa.Array:
    """Epoch seconds as ``YYYY-MM-DDTHH:MM:SSZ``, assembled from lookups: ``pc.strftime``
    costs about 2 us a row, a tenth of all the generation time."""
    days, day_index = np.unique(seconds // SECONDS_PER_DAY, return_inverse=True)
    dates = pa.array([ds_of_day(day) for day in days]).take(day_index)  # a few distinct days
    second = seconds % SECONDS_PER_DAY
    hh, mm, ss = (TWO_DIGITS.take(part) for part in (second // 3600, second // 60 % 60, second % 60))
    return pc.binary_join_element_wise(dates, "T", hh, ":", mm, ":", ss, "Z", "")


def jsonl_gz_bytes(table: pa.Table, kind_of: np.ndarray) -> bytes:
    """Gzipped JSON Lines; ts as ISO-8601; a malformed line is a cut-off object."""
    good, malformed = _text_rows(table, kind_of, iso_utc(table["ts"].to_numpy()))
    cut_off = pc.binary_join_element_wise('{"user_id": "', malformed["user_id"], '", "item_id": ', "")
    frame = pl.from_arrow(good)
    assert isinstance(frame, pl.DataFrame)  # a table gives a frame (a bare array a Series)
    text = frame.write_ndjson().encode() + _lines(cut_off)
    return gzip.compress(text, compresslevel=1, mtime=0)  # fast; mtime=0: the same seed gives the same bytes


def parquet_bytes(table: pa.Table, kind_of: np.ndarray) -> bytes:
    """Typed Parquet; ts as int64 epoch milliseconds (its bad kinds are all in ``table``)."""
    buffer = io.BytesIO()
    pq.write_table(table.set_column(table.schema.get_field_index("ts"), "ts", pc.multiply(table["ts"], 1000)), buffer)
    return buffer.getvalue()


def generate_demo_data(
    lake: Lake,
    settings: Settings,
    users: int = 2000,
    days: int = 3,
    seed: int = 7,
    bad_fraction: float = 0.02,
    end_date: str | None = None,
    events_per_day: int | None = None,
) -> ImportSummary:
    """Write ``days`` days ending at ``end_date`` (default: yesterday, UTC) of synthetic
    events for ``settings.domains`` into raw/, each (domain, day) replaced atomically.

    ``events_per_day`` is the source domain's (default ``8 * users``); the target gets
    :data:`TARGET_VOLUME` of it."""
    clock = time.perf_counter()
    if users < 20:
        raise InputError(f"users must be at least 20 (some only in each domain, most in both), got {users}")
    if days < 1:
        raise InputError(f"days must be at least 1, got {days}")
    if not 0 <= bad_fraction < 1:
        raise InputError(f"bad_fraction must be in [0, 1), got {bad_fraction}")
    events_per_day = EVENTS_PER_USER_PER_DAY * users if events_per_day is None else events_per_day
    if events_per_day < 1:
        raise InputError(f"events_per_day must be at least 1, got {events_per_day}")
    end_date = parse_ds(end_date or yesterday_utc(), settings.ds_range)
    source, target = settings.domains.all
    model = taste_model(np.random.default_rng([seed, 0]), users, source, target)
    volume = {source: events_per_day, target: max(1, round(TARGET_VOLUME * events_per_day))}
    main_file = {source: ("events.csv", csv_bytes, TEXT_BAD_KINDS), target: ("events.jsonl.gz", jsonl_gz_bytes, TEXT_BAD_KINDS)}
    parquet_file = ("events.parquet", parquet_bytes, TYPED_BAD_KINDS)
    all_days = list(range(day_of_ds(end_date) - days + 1, day_of_ds(end_date) + 1))

    summary = ImportSummary(domains=[])
    active = {}
    bad_counts = np.zeros(len(TEXT_BAD_KINDS), dtype=np.int64)
    for role, domain in enumerate((source, target)):
        domain_clock = time.perf_counter()
        warn_other_partitions(lake, domain, {ds_of_day(d) for d in all_days})
        seen_users = np.zeros(users, dtype=bool)
        seen_items = np.zeros(len(model.item_ids[domain]), dtype=bool)
        rows = size = bad = 0
        for n_day, day in enumerate(all_days):
            rng = np.random.default_rng([seed, 1, role, n_day])
            events, user, item = sample_events(model, domain, day, volume[domain], rng)
            in_parquet = rng.random(events.num_rows) < PARQUET_SHARE
            with lake.replace_partition(RAW, domain=domain, ds=ds_of_day(day)) as staged:
                for (name, render, kinds), part in ((main_file[domain], ~in_parquet), (parquet_file, in_parquet)):
                    table, kind_of = corrupt(events.filter(pa.array(part)), kinds, bad_fraction, rng)
                    data = render(table, kind_of)
                    (staged / name).write_bytes(data)
                    good = kind_of < 0
                    seen_users[user[part][good]] = True
                    seen_items[item[part][good]] = True
                    bad_counts += np.bincount(kind_of[~good], minlength=len(TEXT_BAD_KINDS))
                    rows, size, bad = rows + table.num_rows, size + len(data), bad + int((~good).sum())
            log.info("demo-data %s %s: %d events", domain, ds_of_day(day), events.num_rows)
        active[domain] = seen_users
        landed = DomainSummary(
            domain=domain,
            days=days,
            first_ds=ds_of_day(all_days[0]),
            last_ds=end_date,
            rows=rows,
            users=int(seen_users.sum()),
            items=int(seen_items.sum()),
            bytes=size,
            files=2 * days,
        )
        log_landed(landed, time.perf_counter() - domain_clock)
        summary.domains.append(landed)
        summary.details[f"{domain} bad rows"] = bad
    summary.details["users in both domains"] = int((active[source] & active[target]).sum())
    summary.details[f"users only in {source}"] = int((active[source] & ~active[target]).sum())
    summary.details[f"users only in {target}"] = int((active[target] & ~active[source]).sum())
    for kind, count in zip(TEXT_BAD_KINDS, bad_counts, strict=True):
        summary.details[f"bad rows: {kind}"] = int(count)
    summary.details["seed"] = seed
    summary.seconds = time.perf_counter() - clock
    return summary
