"""An own catalog: an interaction file plus an optional item table keyed by raw item id.

`load_catalog` runs the steps in order: read the interactions; check their items against the
table's ids (`data.items.unknown`: an error naming the interaction's row, or kept / dropped and
counted); split at `data.min_rating` (the interactions below it are counted); with `data.max_dislike_rating`,
the interactions rated at or below it become the users' observed rejections (attached to the
sequences, `rejections.Rejections`); build the user sequences (k-core, remapping); and return the factories of the surviving items' modalities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rodpo_dist.config import DataConfig
from rodpo_dist.data.errors import DataError
from rodpo_dist.data.events import (EventColumns, observed_rejections, open_events, read_events, split_by_rating,
                                    to_interactions)
from rodpo_dist.data.features import Modality
from rodpo_dist.data.item_table import ItemTableSpec, item_modalities, open_item_table, read_table_ids
from rodpo_dist.data.sources import Interactions


@dataclass(frozen=True)
class CatalogSpec:
    """The files of a catalog and the roles of their columns."""

    interactions: Path
    columns: EventColumns
    table: ItemTableSpec | None


def event_columns(cfg: DataConfig, user: str, item: str) -> EventColumns:
    """`data.columns` with the source's defaults (`user`, `item`: its id column names) filled in."""
    c = cfg.columns
    return EventColumns(c.user or user, c.item or item, c.timestamp or "timestamp", c.rating or "rating",
                        rating_required=cfg.min_rating is not None or cfg.max_dislike_rating is not None,
                        event=c.event or "event", dislike_events=tuple(cfg.dislike_events))


def interactions_spec(cfg: DataConfig) -> CatalogSpec:
    """`data.source: interactions`: `data.path` and, when `data.items.path` is set, that table."""
    items = cfg.items
    table = ItemTableSpec(Path(items.path), items.id, list(items.text),
                          dict.fromkeys(items.attributes, items.separator), dict(items.vectors)) if items.path else None
    return CatalogSpec(Path(cfg.path), event_columns(cfg, "user", "item"), table)


def check_headers(spec: CatalogSpec, chunk_rows: int) -> None:
    """Before reading any file whole: every column each file must hold, all problems at once."""
    problems = []
    openers = [lambda: open_events(spec.interactions, spec.columns, chunk_rows)]
    if spec.table is not None:
        openers.append(lambda: open_item_table(spec.table, chunk_rows))
    for opener in openers:
        try:
            opener()
        except DataError as err:
            problems.append(err)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise DataError("the input files", f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def load_catalog(spec: CatalogSpec, cfg: DataConfig,
                 progress: bool) -> tuple[Interactions, dict[str, Callable[[], Modality]], dict[str, Any]]:
    """(user sequences, modality factories of their items, counts for the manifest's stats)."""
    check_headers(spec, cfg.read_chunk_rows)
    events = read_events(spec.interactions, spec.columns, cfg.read_chunk_rows)
    stats: dict[str, Any] = {}
    if spec.table is not None:
        absent = (read_table_ids(spec.table, cfg.read_chunk_rows).lookup(events.items.values) < 0)[events.item]
        if absent.any() and cfg.items.unknown == "error":
            row = int(absent.argmax())
            raise DataError(events.path, f"item {events.items.values[events.item[row]].as_py()!r} is not in the "
                            f"item table {spec.table.path} (data.items.unknown: keep or drop to accept such "
                            f"interactions)", f"row {row + 1}, column {spec.columns.item!r}")
        if absent.any():
            stats["unknown_item_interactions"] = {"count": int(absent.sum()), "policy": cfg.items.unknown}
            events = events.select(~absent) if cfg.items.unknown == "drop" else events
    disliked = None
    if cfg.max_dislike_rating is not None or cfg.dislike_events:  # observed rejections, beside the sequence
        mask = np.zeros(len(events), dtype=bool)
        if cfg.max_dislike_rating is not None:  # rated at or below it
            if events.rating is None:
                raise DataError(events.path, f"data.max_dislike_rating={cfg.max_dislike_rating} needs a rating column",
                                f"header, column {events.columns.rating!r}")
            mask |= events.rating <= cfg.max_dislike_rating
        if events.disliked is not None:  # an event type of data.dislike_events
            mask |= events.disliked
        disliked, events = events.select(mask), events.select(~mask)
    if cfg.min_rating is not None:
        events, below = split_by_rating(events, cfg.min_rating)
        stats["below_min_rating"] = len(below) + (len(disliked) if disliked is not None else 0)
    data = to_interactions(events, cfg.min_user_items, cfg.min_item_users)
    if disliked is not None:
        data.rejections = observed_rejections(disliked, data)
        stats["rejections"] = {"rated_at_most": cfg.max_dislike_rating, "event_types": list(cfg.dislike_events),
                               "events": len(disliked),
                               **data.rejections.stats()}
    factories = (item_modalities(spec.table, data.item_ids, cfg.text_encoder, cfg.read_chunk_rows, progress)
                 if spec.table is not None else {})
    return data, factories, stats
