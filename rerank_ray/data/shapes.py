"""The shape of a training set, found from its files' columns: labelled pairs, a query with its
positive and negatives (an n-tuple), or a query with a list of judged documents.

sentence-transformers reads a dataset's inputs by column order and leaves the shape to the loss;
here the shape follows from the (canonical, mapped) column names of the first file, so a loss
given a shape it cannot take is refused before Ray starts (:func:`rerank_ray.config.check_loss_shape`)
and the run's first line and its model card can say which shape was trained.

Every grouped row leaves the reader as ``query`` (string), ``documents`` (list<string>) and
``labels`` (list<float32>): an n-tuple's documents are its positive and negatives in column order,
its labels the teacher scores of its ``label`` column, or 1 for the positive and 0 for each
negative when it has none.
"""

from __future__ import annotations

from dataclasses import dataclass

from rerank_ray.config import PAIR_COLUMNS, DataConfig

#: Columns of the canonical grouped row (what the reader emits for a grouped shape).
GROUP_ROW = ("query", "documents", "labels")


@dataclass(frozen=True)
class Shape:
    """A training set's shape and the canonical columns its files are read into."""

    name: str
    """``pairs``, ``n-tuple`` or ``list``."""
    text_columns: tuple[str, ...]
    """Canonical columns that hold one text each."""
    has_label: bool = True
    """A ``label`` column is read (a number for pairs; a list of teacher scores for an n-tuple)."""

    @property
    def grouped(self) -> bool:
        return self.name != "pairs"

    @property
    def columns(self) -> tuple[str, ...]:
        """Every canonical column read from the files."""
        lists = ("documents", "labels") if self.name == "list" else ()
        return (*self.text_columns, *lists, *(("label",) if self.has_label else ()))

    @property
    def negatives(self) -> int:
        return sum(1 for name in self.text_columns if name.startswith("negative"))

    def describe(self) -> str:
        if self.name == "pairs":
            return "labelled pairs"
        if self.name == "list":
            return "queries with a list of labelled documents"
        scores = ", teacher scores" if self.has_label else ""
        if not self.negatives:
            return f"(query, positive) pairs{scores}"
        return f"(query, positive, {self.negatives} negative{'s' if self.negatives > 1 else ''}) tuples{scores}"


PAIRS = Shape("pairs", ("sentence_0", "sentence_1"))


def file_name(data: DataConfig, canonical: str) -> str:
    return data.columns.get(canonical, canonical)


def find_shape(present: list[str], data: DataConfig) -> Shape:
    """The shape of a file with columns ``present``: ``documents`` makes a list, ``positive`` an
    n-tuple (its negatives ``negative_1``, ``negative_2``.. as long as they run, or one
    ``negative``), anything else labelled pairs (whose missing columns the reader names)."""
    names = set(present)
    if file_name(data, "documents") in names and file_name(data, "query") in names:
        return Shape("list", ("query",), has_label=False)
    if file_name(data, "positive") in names and file_name(data, "query") in names:
        negatives: list[str] = []
        while file_name(data, f"negative_{len(negatives) + 1}") in names:
            negatives.append(f"negative_{len(negatives) + 1}")
        if not negatives and file_name(data, "negative") in names:
            negatives = ["negative"]
        return Shape("n-tuple", ("query", "positive", *negatives), has_label=file_name(data, "label") in names)
    return PAIRS


def shape_columns(shape: Shape, data: DataConfig) -> dict[str, str]:
    """canonical -> file column of every column the shape reads."""
    if shape.name == "pairs":
        return {name: file_name(data, name) for name in PAIR_COLUMNS}
    return {name: file_name(data, name) for name in shape.columns}
