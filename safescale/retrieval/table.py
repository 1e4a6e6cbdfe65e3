"""Passage metadata stored column-wise and aligned with vector ids.

Row ``i`` of a :class:`PassageTable` describes the vector with FAISS id ``i``. The
filterable fields (grade level, status, topic, scope, source date) are numpy columns,
so a filter over millions of passages is a handful of vectorized comparisons; the full
passage is kept as its canonical JSON and parsed only when it is returned as a hit.
On disk the table is a Parquet file.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from safescale.corpora.schema import Passage, Status
from safescale.retrieval.filters import ALL_STATUSES, SearchFilters

__all__ = ["STATUS_CODES", "PassageTable"]

STATUS_CODES: dict[Status, int] = {status: code for code, status in enumerate(Status)}
_STATUS_BY_NAME = {status.value: code for status, code in STATUS_CODES.items()}
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_MASK_CACHE_SIZE = 16
_PARSED_CACHE_SIZE = 10_000


class PassageTable:
    """Column-wise passage metadata, row ``i`` = vector id ``i``.

    Args:
        ids: passage ids.
        records: canonical JSON of each passage.
        grade_level: normalized grade levels (int8, 1..4).
        status: status codes (int8, see ``STATUS_CODES``).
        topic_codes: index into ``topics`` for each row.
        topics: topic vocabulary.
        scope_codes: index into ``scopes`` (-1 when a passage has no scope).
        scopes: scope vocabulary.
        date_ordinal: ``date.toordinal()`` of each source date (0 when undated).
        passages: the parsed passages, when already at hand (otherwise parsed lazily).
    """

    def __init__(
        self,
        ids: Sequence[str],
        records: pa.Array,
        grade_level: np.ndarray,
        status: np.ndarray,
        topic_codes: np.ndarray,
        topics: Sequence[str],
        scope_codes: np.ndarray,
        scopes: Sequence[str],
        date_ordinal: np.ndarray,
        passages: Sequence[Passage] | None = None,
    ) -> None:
        n = len(ids)
        columns = {
            "records": records,
            "grade_level": grade_level,
            "status": status,
            "topic_codes": topic_codes,
            "scope_codes": scope_codes,
            "date_ordinal": date_ordinal,
        }
        for name, column in columns.items():
            if len(column) != n:
                raise ValueError(f"column {name} has {len(column)} rows, expected {n}")
        if passages is not None and len(passages) != n:
            raise ValueError(f"{len(passages)} passages for {n} rows")
        self.ids = list(ids)
        self.records = records
        self.grade_level = np.asarray(grade_level, dtype=np.int8)
        self.status = np.asarray(status, dtype=np.int8)
        self.topic_codes = np.asarray(topic_codes, dtype=np.int32)
        self.topics = list(topics)
        self.scope_codes = np.asarray(scope_codes, dtype=np.int32)
        self.scopes = list(scopes)
        self.date_ordinal = np.asarray(date_ordinal, dtype=np.int32)
        self._passages = tuple(passages) if passages is not None else None
        self._parsed: OrderedDict[int, Passage] = OrderedDict()
        self._lock = threading.Lock()
        self._row_by_id: dict[str, int] | None = None
        self._masks: OrderedDict[SearchFilters, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_passages(cls, passages: Sequence[Passage]) -> PassageTable:
        """Columns for ``passages`` (kept in their order)."""
        topics: dict[str, int] = {}
        scopes: dict[str, int] = {}
        n = len(passages)
        grade = np.empty(n, dtype=np.int8)
        status = np.empty(n, dtype=np.int8)
        topic_codes = np.empty(n, dtype=np.int32)
        scope_codes = np.empty(n, dtype=np.int32)
        dates = np.zeros(n, dtype=np.int32)
        for row, passage in enumerate(passages):
            grade[row] = passage.grade.level
            status[row] = STATUS_CODES[passage.status]
            topic_codes[row] = topics.setdefault(passage.topic, len(topics))
            scope_codes[row] = (
                -1 if passage.scope is None else scopes.setdefault(passage.scope, len(scopes))
            )
            if passage.source.date is not None:
                dates[row] = passage.source.date.toordinal()
        records = pa.array([p.model_dump_json() for p in passages], type=pa.large_string())
        return cls(
            ids=[p.id for p in passages],
            records=records,
            grade_level=grade,
            status=status,
            topic_codes=topic_codes,
            topics=list(topics),
            scope_codes=scope_codes,
            scopes=list(scopes),
            date_ordinal=dates,
            passages=passages,
        )

    # -- access ---------------------------------------------------------------------

    def passage(self, row: int) -> Passage:
        """The passage at ``row`` (parsed from its JSON on first access)."""
        if self._passages is not None:
            return self._passages[row]
        with self._lock:
            cached = self._parsed.get(row)
            if cached is not None:
                self._parsed.move_to_end(row)
                return cached
        passage = Passage.model_validate_json(self.records[row].as_py())
        with self._lock:
            self._parsed[row] = passage
            if len(self._parsed) > _PARSED_CACHE_SIZE:
                self._parsed.popitem(last=False)
        return passage

    def row_of(self, passage_id: str) -> int:
        """Row (= vector id) of a passage id; KeyError if absent."""
        if self._row_by_id is None:
            self._row_by_id = {pid: row for row, pid in enumerate(self.ids)}
        try:
            return self._row_by_id[passage_id]
        except KeyError:
            raise KeyError(f"no passage {passage_id!r} in the store") from None

    @property
    def reference_ordinal(self) -> int | None:
        """Ordinal of the newest source date (the "now" of recency), None if undated."""
        dated = self.date_ordinal[self.date_ordinal > 0]
        return int(dated.max()) if dated.size else None

    # -- filtering ------------------------------------------------------------------

    def mask(self, filters: SearchFilters | None) -> np.ndarray | None:
        """Boolean row mask of the passages passing ``filters``.

        Returns ``None`` for an unrestricted filter (every row passes). Masks are
        cached per filter (a few at a time), so repeated searches with the same filter
        cost nothing extra.
        """
        if filters is None or filters.is_unrestricted:
            return None
        with self._lock:
            cached = self._masks.get(filters)
            if cached is not None:
                self._masks.move_to_end(filters)
                return cached
        keep = np.ones(len(self), dtype=bool)
        if filters.min_grade_level is not None:
            keep &= self.grade_level <= filters.min_grade_level
        if not filters.statuses >= ALL_STATUSES:
            codes = [STATUS_CODES[s] for s in filters.statuses]
            keep &= np.isin(self.status, codes)
        if filters.topics is not None:
            codes = [i for i, topic in enumerate(self.topics) if topic in filters.topics]
            keep &= np.isin(self.topic_codes, codes)
        if filters.scopes is not None:
            codes = [i for i, scope in enumerate(self.scopes) if scope in filters.scopes]
            keep &= np.isin(self.scope_codes, codes)
        if filters.date_from is not None or filters.date_to is not None:
            keep &= self.date_ordinal > 0
            if filters.date_from is not None:
                keep &= self.date_ordinal >= filters.date_from.toordinal()
            if filters.date_to is not None:
                keep &= self.date_ordinal <= filters.date_to.toordinal()
        keep.setflags(write=False)
        with self._lock:
            self._masks[filters] = keep
            if len(self._masks) > _MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        return keep

    # -- persistence ----------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """The table as Arrow columns (what :meth:`write_parquet` stores)."""
        topics = pa.DictionaryArray.from_arrays(
            pa.array(self.topic_codes, type=pa.int32()), pa.array(self.topics, type=pa.string())
        )
        scope_valid = self.scope_codes >= 0
        scopes = pa.DictionaryArray.from_arrays(
            pa.array(
                np.where(scope_valid, self.scope_codes, 0), type=pa.int32(), mask=~scope_valid
            ),
            pa.array(self.scopes or [""], type=pa.string()),
        )
        status_names = [s.value for s in Status]
        statuses = pa.DictionaryArray.from_arrays(
            pa.array(self.status, type=pa.int8()), pa.array(status_names, type=pa.string())
        )
        dated = self.date_ordinal > 0
        days = np.where(dated, self.date_ordinal - _EPOCH_ORDINAL, 0).astype(np.int32)
        dates = pa.array(days, type=pa.int32(), mask=~dated).cast(pa.date32())
        return pa.table(
            {
                "id": pa.array(self.ids, type=pa.large_string()),
                "grade_level": pa.array(self.grade_level, type=pa.int8()),
                "status": statuses,
                "topic": topics,
                "scope": scopes,
                "date": dates,
                "record": self.records,
            }
        )

    def write_parquet(self, path: Path) -> None:
        """Write the table to a Parquet file."""
        pq.write_table(self.to_arrow(), path, compression="zstd")

    @classmethod
    def read_parquet(cls, path: Path, passages: Sequence[Passage] | None = None) -> PassageTable:
        """Read a table written by :meth:`write_parquet`.

        Args:
            path: the Parquet file.
            passages: the same passages already parsed (e.g. from the corpus whose hash
                matched), used instead of parsing the stored JSON.

        Raises:
            ValueError: when a column is missing or holds unexpected values.
        """
        table = pq.read_table(path)
        expected = {"id", "grade_level", "status", "topic", "scope", "date", "record"}
        missing = expected - set(table.column_names)
        if missing:
            raise ValueError(f"missing column(s) {sorted(missing)}")

        def encoded(name: str) -> tuple[np.ndarray, list[str]]:
            column = table.column(name).combine_chunks()
            if not pa.types.is_dictionary(column.type):
                column = pc.dictionary_encode(column)
            codes = column.indices.to_numpy(zero_copy_only=False)
            codes = np.where(column.is_null().to_numpy(zero_copy_only=False), -1, codes)
            return codes.astype(np.int32), column.dictionary.to_pylist()

        topic_codes, topics = encoded("topic")
        scope_codes, scopes = encoded("scope")
        status_codes, status_names = encoded("status")
        try:
            remap = np.array([_STATUS_BY_NAME[name] for name in status_names], dtype=np.int8)
        except KeyError as exc:
            raise ValueError(f"unknown status {exc.args[0]!r}") from None
        if (status_codes < 0).any() or (topic_codes < 0).any():
            raise ValueError("status and topic must not be null")
        date_col = table.column("date").combine_chunks().cast(pa.int32())
        days = date_col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
        dates = np.where(
            date_col.is_null().to_numpy(zero_copy_only=False), 0, days + _EPOCH_ORDINAL
        )
        grade = table.column("grade_level").to_numpy().astype(np.int8)
        if grade.size and (grade.min() < 1 or grade.max() > 4):
            raise ValueError("grade_level outside 1..4")
        return cls(
            ids=table.column("id").to_pylist(),
            records=table.column("record").combine_chunks(),
            grade_level=grade,
            status=remap[status_codes] if status_codes.size else status_codes.astype(np.int8),
            topic_codes=topic_codes,
            topics=topics,
            scope_codes=scope_codes,
            scopes=scopes,
            date_ordinal=dates.astype(np.int32),
            passages=passages,
        )
