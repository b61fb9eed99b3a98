"""RecBole atomic files (`data.source: recbole`): `NAME.inter` and an optional `NAME.item` in `data.path`.

Headers are typed (`item_id:token`, `movie_title:token_seq`, `rating:float`, `timestamp:float`);
the columns default to RecBole's `user_id`, `item_id`, `timestamp` and `rating`. The `.item` table
is keyed by the interaction file's item column. Unless `data.items.text` / `attributes` / `vectors`
say otherwise (each on its own), its `token_seq` columns become text, its `token` columns
attributes (one value each; a `token_seq` column named as an attribute is split at spaces), and its
`float_seq` columns vectors named after the column.
"""

from __future__ import annotations

from pathlib import Path

from rodpo_dist.config import DataConfig
from rodpo_dist.data.catalog import CatalogSpec, event_columns
from rodpo_dist.data.item_table import ItemTableSpec
from rodpo_dist.data.tables import Table

def recbole_paths(folder: str | Path, name: str) -> dict[str, Path]:
    return {"interactions": Path(folder) / f"{name}.inter", "items": Path(folder) / f"{name}.item"}


def recbole_spec(cfg: DataConfig) -> CatalogSpec:
    """The catalog of `data.path` / `data.name` (see module docstring)."""
    paths = recbole_paths(cfg.path, cfg.name)
    columns = event_columns(cfg, "user_id", "item_id")
    if not paths["items"].is_file():
        return CatalogSpec(paths["interactions"], columns, None)
    types = Table(paths["items"], cfg.read_chunk_rows).types
    typed = {kind: [c for c, t in types.items() if t == kind and c != columns.item]
             for kind in ("token", "token_seq", "float_seq")}
    items = cfg.items
    attributes = list(items.attributes) or typed["token"]
    table = ItemTableSpec(paths["items"], columns.item, list(items.text) or typed["token_seq"],
                          {c: " " if types.get(c) == "token_seq" else "" for c in attributes},
                          dict(items.vectors) or {c: c for c in typed["float_seq"]})
    return CatalogSpec(paths["interactions"], columns, table)
