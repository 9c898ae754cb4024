"""Files as spreadsheets and public copies write them: a byte-order mark before the header, CRLF
line ends, a trailing empty line, quoted headers, a BEIR qrels file without its header row.
Each is read as the plain file would be, on the pyarrow path and on the line-by-line path that
takes over after a malformed line. No Ray, no model."""

from __future__ import annotations

import pytest
from tiny import reranking_pairs, write_beir

from rerank_ray.config import Config
from rerank_ray.data import files, reading
from rerank_ray.data.beir import inspect_beir, read_beir_pairs
from rerank_ray.errors import DataError

BOM = "\ufeff"
PAIRS = [("what is a cat", "a small feline", 1.0), ("what is a cat", "a large truck", 0.0), ("sky colour", "blue", 1.0)]


def _config(path, fmt: str, **data) -> Config:
    columns = {"sentence_0": "query", "sentence_1": "passage", "label": "score"}
    return Config.from_dict(
        {
            "model": {"name_or_path": "unused"},
            "data": {"train": [str(path)], "format": fmt, "columns": columns, **data},
        }
    )


def _write_table(path, fmt: str, header: list[str], rows: list[list[str]], *, bom=True, crlf=True, quoted=True):
    sep = "\t" if fmt == "tsv" else ","
    end = "\r\n" if crlf else "\n"
    head = sep.join(f'"{h}"' if quoted and fmt == "csv" else h for h in header)
    lines = [head, *(sep.join(row) for row in rows)]
    text = (BOM if bom else "") + end.join(lines) + end + end  # a trailing empty line, as exports often end
    path.write_bytes(text.encode("utf-8"))
    return path


def _read(config: Config, path) -> list[dict]:
    fmt = config.data.format
    checker = files.make_checker(config, "train", [str(path)])
    opener = reading.open_local_or_uri(str(path), fmt)
    return [row for chunk in reading.read_file(opener, fmt, 0, checker) for row in chunk.to_pylist()]


def _pairs(rows: list[dict]) -> list[tuple]:
    return [(r["sentence_0"], r["sentence_1"], r["label"]) for r in rows if not r["skip"]]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_a_spreadsheet_export_reads_as_the_plain_file(tmp_path, fmt):
    """Byte-order mark, CRLF, a trailing empty line and (CSV) quoted header names together."""
    path = _write_table(
        tmp_path / f"train.{fmt}", fmt, ["score", "query", "passage"], [[str(s), q, p] for q, p, s in PAIRS]
    )
    config = _config(path, fmt)
    split = files.inspect_split(config.data.train, config, "train")  # the sample check before Ray
    assert split.files == [str(path)]
    assert _pairs(_read(config, path)) == PAIRS


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_the_mark_is_dropped_on_the_line_by_line_path_too(tmp_path, fmt):
    """A malformed line hands the file to the Python parser, which reads it again from its first
    byte: the mark must not become part of the first column there either."""
    if fmt == "jsonl":
        lines = [
            '{"score": 1, "query": "q0", "passage": "p0"}',
            "{broken",
            '{"score": 0, "query": "q1", "passage": "p1"}',
        ]
        path = tmp_path / "train.jsonl"
        path.write_bytes((BOM + "\n".join(lines) + "\n").encode("utf-8"))
    else:
        sep = "\t" if fmt == "tsv" else ","
        rows = [["1", "q0", "p0"], ["1", "too", "many", "fields"], ["0", "q1", "p1"]]
        path = _write_table(tmp_path / f"train.{fmt}", fmt, ["score", "query", "passage"], rows, quoted=False)
        assert sep in path.read_text(encoding="utf-8-sig")
    config = _config(path, fmt, on_bad_row="skip")
    rows = _read(config, path)
    assert _pairs(rows) == [("q0", "p0", 1.0), ("q1", "p1", 0.0)]
    assert [r["skip"] > 0 for r in rows] == [False, True, False]


def test_naming_the_column_with_its_mark_is_a_clean_error(tmp_path):
    """What a user tried before the fix: the message now names the columns as they really are."""
    path = _write_table(tmp_path / "train.csv", "csv", ["score", "query", "passage"], [["1", "q", "p"]])
    config = _config(path, "csv")
    config.data.columns["label"] = BOM + "score"
    with pytest.raises(
        DataError, match=r"column '\\ufeffscore' \(for label\) is missing .*\['score', 'query', 'passage'\]"
    ):
        files.inspect_split(config.data.train, config, "train")


@pytest.mark.parametrize("header", [True, False])
def test_beir_qrels_with_or_without_their_header_row(tmp_path, capsys, header):
    rows = reranking_pairs(3, candidates=3, seed=4)
    folder = write_beir(rows, tmp_path / "b")
    qrels = folder / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    text = "\n".join(lines if header else lines[1:]) + "\n"
    qrels.write_text((BOM + text) if header else text)
    table = read_beir_pairs(inspect_beir(str(folder), "test"))
    assert table.num_rows == len(rows)
    said = "has no header row: its columns are read as query-id, corpus-id, score" in capsys.readouterr().out
    assert said == (not header)
