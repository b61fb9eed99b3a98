"""Interaction files: columns by name, formats, timestamps, ratings, k-core, remapping and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rodpo_dist.data.errors import DataError
from rodpo_dist.data.events import EventColumns, read_events, split_by_rating, to_interactions

COLUMNS = EventColumns("user", "item", "timestamp", "rating")


def read_interactions(path, min_user_items, min_item_users, columns=COLUMNS, chunk_rows=4):
    """Read in chunks of 4 rows, so every test also crosses chunk boundaries."""
    return to_interactions(read_events(path, columns, chunk_rows), min_user_items, min_item_users)


def _rows(n_users: int = 6, n_items: int = 5):
    """Every user rates every item, in reverse time order, plus noise users and items."""
    rows = [(f"u{u}", f"i{i}", 100 - i) for u in range(n_users) for i in range(n_items)]
    rows += [("lonely", "i0", 1), ("lonely", "i1", 2)]  # 2 items: dropped (< 3)
    rows += [(f"u{u}", "rare", 5) for u in range(2)]  # rated by 2 users: dropped by min_item_users=3
    rows += [("u0", "i0", 50)]  # repeated (user, item): the first (earlier) occurrence wins
    return rows


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "csv.gz", "tsv.bz2", "jsonl.gz"])
def test_generic_kcore_and_remap(tmp_path, fmt):
    import bz2
    import gzip

    path = tmp_path / f"inter.{fmt}"
    rows = _rows()
    if fmt.startswith("jsonl"):
        text = "\n".join(json.dumps({"user": u, "item": i, "timestamp": t}) for u, i, t in rows)
    else:
        sep = "," if fmt.startswith("csv") else "\t"
        text = f"timestamp{sep}user{sep}item\n" + "\n".join(f"{t}{sep}{u}{sep}{i}" for u, i, t in rows)
    compress = {"gz": gzip.compress, "bz2": bz2.compress}.get(fmt.rpartition(".")[2])
    path.write_bytes(compress(text.encode()) if compress else text.encode())  # read compressed, never unpacked
    data = read_interactions(path, min_user_items=3, min_item_users=3)
    assert data.user_ids == [f"u{u}" for u in range(6)]
    assert data.item_ids == [f"i{i}" for i in range(5)]
    assert (data.num_users, data.num_items) == (6, 5)
    # chronological (i4 at time 96 ... i0 at 100); u0 also had i0 at time 50: the earliest occurrence is kept
    assert data.sequence(2).tolist() == [5, 4, 3, 2, 1]
    assert data.sequence(1).tolist() == [1, 5, 4, 3, 2]
    assert np.all(data.lengths == 5)


def test_generic_kcore_iterates_to_fixpoint(tmp_path):
    # item "b" has 3 users, but one of them ("x") drops (2 items), which then drops "b" (2 users left)
    rows = [(u, i, 0) for u in ("p", "q", "r") for i in ("a", "c", "d")] + [("p", "b", 1), ("q", "b", 1)]
    rows += [("x", "b", 0), ("x", "a", 1)]
    path = tmp_path / "inter.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(f"{u},{i},{t}" for u, i, t in rows))
    data = read_interactions(path, min_user_items=3, min_item_users=3)
    assert data.item_ids == ["a", "c", "d"] and data.user_ids == ["p", "q", "r"]


def test_generic_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("user,item,timestamp\nu1,i1,5\nu1,i2,yesterday\n")
    with pytest.raises(DataError, match=r"bad\.csv, row 2, column 'timestamp': unparsable timestamp 'yesterday'"):
        read_interactions(path, 1, 1)
    path.write_text("user,item\nu1,i1\n")
    with pytest.raises(DataError, match=r"bad\.csv, header, column 'timestamp': no column 'timestamp' "
                                        r"\(data\.columns\.timestamp\); its columns: user, item"):
        read_interactions(path, 1, 1)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user": 1, "item": 2, "timestamp": 3}\n{"user": 1, "item": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, row 2, column 'timestamp': empty timestamp"):
        read_interactions(path, 1, 1)
    path.write_text('{"user": 1, "item": 2, "timestamp": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: no interactions left after k-core"):
        read_interactions(path, 1, 1)
    with pytest.raises(DataError, match=r"bad\.xlsx: unsupported extension '\.xlsx'"):
        read_interactions(tmp_path / "bad.xlsx", 1, 1)
    with pytest.raises(DataError, match=r"bad\.parquet\.gz: unsupported extension '\.parquet\.gz'; expected .* "
                                        r"optionally compressed \(\.gz, \.bz2\)"):
        read_interactions(tmp_path / "bad.parquet.gz", 1, 1)


def _events_table(n_users: int = 4, n_items: int = 5) -> pa.Table:
    """Every user rates every item: ratings 1..5, times spread over days."""
    users = [f"u{u}" for u in range(n_users) for _ in range(n_items)]
    items = [f"m{i}" for _ in range(n_users) for i in range(n_items)]
    stars = [float(1 + (u + i) % 5) for u in range(n_users) for i in range(n_items)]
    seconds = [86_400 * (u + 10 * i) for u in range(n_users) for i in range(n_items)]
    return pa.table({"uid": users, "movie": items, "stars": stars, "ts": seconds})


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_mapped_columns_iso_times_and_min_rating_in_every_format(tmp_path, fmt):
    table = _events_table()
    iso = [np.datetime64(int(t), "s").astype(str) + "Z" for t in table["ts"].to_pylist()]
    table = table.set_column(3, "ts", pa.array(iso))
    path = tmp_path / f"events.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=7)
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in table.to_pylist()))
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text(sep.join(table.column_names) + "\n" + "\n".join(
            sep.join(str(v) for v in r.values()) for r in table.to_pylist()))
    columns = EventColumns("uid", "movie", "ts", "stars", rating_required=True)
    events = read_events(path, columns, chunk_rows=3)
    assert len(events) == 20 and events.rating is not None
    liked, rest = split_by_rating(events, 3.0)
    assert len(liked) + len(rest) == 20 and (liked.rating >= 3).all() and (rest.rating < 3).all()
    data = to_interactions(liked, 1, 1)
    assert data.user_ids == ["u0", "u1", "u2", "u3"]
    # u0 rated m0..m4 with 1..5 stars at days 0, 10, ..., 40: keeps m2, m3, m4 in time order
    assert [data.item_ids[i - 1] for i in data.sequence(1)] == ["m2", "m3", "m4"]


def test_min_rating_without_a_rating_column_names_file_and_column(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item,timestamp\nu1,i1,1\n")
    with pytest.raises(DataError, match=r"events\.csv, header, column 'rating': no column 'rating' "
                                        r"\(data\.columns\.rating, needed by data\.min_rating"):
        read_events(path, EventColumns("user", "item", "timestamp", "rating", rating_required=True), 10)


def test_a_rating_column_no_setting_needs_is_not_read(tmp_path):
    """Blank or unparsable ratings matter only to the settings that read them."""
    path = tmp_path / "events.csv"
    path.write_text("user,item,timestamp,rating\nu1,i1,1,5\nu1,i2,2,\nu1,i3,3,n/a\n")
    events = read_events(path, COLUMNS, 10)
    assert len(events) == 3 and events.rating is None
    with pytest.raises(DataError, match=r"events\.csv, row 2, column 'rating': unparsable rating ''"):
        read_events(path, EventColumns("user", "item", "timestamp", "rating", rating_required=True), 10)


def test_numeric_and_iso_timestamps_order_alike(tmp_path):
    rows = [("a", "x", "2024-01-03T00:00:00+01:00"), ("a", "y", "2024-01-02 12:00"), ("a", "z", "2024-01-01")]
    path = tmp_path / "e.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(",".join(r) for r in rows))
    events = read_events(path, COLUMNS, 10)
    assert events.time.tolist() == [1704236400.0, 1704196800.0, 1704067200.0]
    # a chunk mixing numbers and ISO strings is parsed value by value
    path.write_text("user,item,timestamp\na,x,1704236400\na,y,2024-01-02T12:00:00Z\na,z,2024-01-01")
    assert read_events(path, COLUMNS, 10).time.tolist() == [1704236400.0, 1704196800.0, 1704067200.0]
    data = to_interactions(read_events(path, COLUMNS, 10), 1, 1)
    assert [data.item_ids[i - 1] for i in data.sequence(1)] == ["z", "y", "x"]


def test_interactions_at_the_same_time_keep_their_file_order(tmp_path):
    """A basket bought at one timestamp stays in the order of the file (a stable sort on time)."""
    path = tmp_path / "events.csv"
    rows = [("u", "c", 5), ("u", "a", 5), ("u", "b", 5), ("u", "z", 1), ("u", "d", 9), ("u", "y", 5)]
    path.write_text("user,item,timestamp\n" + "\n".join(f"{u},{i},{t}" for u, i, t in rows) + "\n")
    data = read_interactions(path, 1, 1)
    assert [data.item_ids[i - 1] for i in data.sequence(1)] == ["z", "c", "a", "b", "y", "d"]


def test_json_ids_that_are_numbers_in_some_records_and_strings_in_others(tmp_path):
    """pyarrow reads a JSON column as one type; ids exported as 3 here and "b" there are read record
    by record instead, as the strings the other formats give."""
    mixed, text = tmp_path / "mixed.jsonl", tmp_path / "text.jsonl"
    rows = [(u, i, t) for t, (u, i) in enumerate([("a", 1), ("b", "x"), (3, 2), (3, "x"), ("a", "x"), ("b", 1),
                                                  (3, 1), ("a", 2), ("b", 2)])]
    mixed.write_text("\n".join(json.dumps({"user": u, "item": i, "timestamp": t}) for u, i, t in rows) + "\n")
    text.write_text("\n".join(json.dumps({"user": str(u), "item": str(i), "timestamp": t}) for u, i, t in rows))
    a, b = read_interactions(mixed, 1, 1, chunk_rows=100), read_interactions(text, 1, 1, chunk_rows=100)
    assert a.user_ids == b.user_ids == ["3", "a", "b"] and a.item_ids == b.item_ids == ["1", "2", "x"]
    assert all(a.sequence(u).tolist() == b.sequence(u).tolist() for u in (1, 2, 3))
    mixed.write_text(mixed.read_text() + '{"user": 4, "item": \n')  # in the second chunk of 5, past the header's
    with pytest.raises(DataError, match=r"mixed\.jsonl: unreadable jsonl data, in or after row 6 \(not JSON"):
        read_interactions(mixed, 1, 1, chunk_rows=5)
