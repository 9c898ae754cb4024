"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages built from the code and the records at build
time, so that none of them can drift and no generated copy is committed.

- ``reference/configuration.md``: every config key with its type and docstring, from
  ``rerank_ray.cli.field_reference()`` (what ``rerank-ray fields`` prints), one table per section.
- ``results.md``: ``benchmarks/RESULTS.md``, the dated benchmark records, as a page of the site.

The configuration page imports rerank_ray: build with the package importable (``make docs``
does; from another checkout, put it first with ``PYTHONPATH=<checkout>``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"

#: The sections in the order of a config file, with what each holds. A section the code adds and
#: this list lacks still gets its table (after these, under its own name).
SECTIONS = {
    "model": "The base model and its scoring head.",
    "data": "The training and evaluation files, how they are read, shuffled and batched.",
    "train": "The loss, the optimizer and the schedule.",
    "eval": "The evaluator, its headline metric, retrieve-then-rerank and early stopping.",
    "scaling": "The Ray Train workers.",
    "run": "Storage, checkpoints, failures, export and tracking.",
    "tune": "The hyperparameter search of `rerank-ray tune` (read by that command alone).",
    "mine": "`rerank-ray mine`: a config file's `mine:` section; each key is also a flag "
    "(`range_max` is `--range-max`).",
}

_RST_CODE = re.compile(r"``(.+?)``")


def markdown_code(text: str) -> str:
    """RST's ``code`` as markdown's `code` (a span holding a backtick gets a double fence)."""

    def span(match: re.Match[str]) -> str:
        inner = match.group(1)
        return f"`` {inner} ``" if "`" in inner else f"`{inner}`"

    return _RST_CODE.sub(span, text)


_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def table_cell(text: str) -> str:
    """Text safe inside a markdown table cell, on one line: pipes escaped outside code spans (the
    table extension does not split a row inside a code span, and would show the escape there)."""
    parts = _CODE_SPAN.split(" ".join(text.split()))
    return "".join(part if i % 2 else part.replace("|", "\\|") for i, part in enumerate(parts))


def configuration_page() -> str:
    from rerank_ray.cli import field_reference

    by_section: dict[str, list[tuple[str, str, str]]] = {}
    for key, type_name, doc in field_reference():
        by_section.setdefault(key.split(".", 1)[0], []).append((key, type_name, doc))
    order = [s for s in SECTIONS if s in by_section] + [s for s in by_section if s not in SECTIONS]
    lines = [
        "# Configuration keys",
        "",
        "Every key of a config file, its type and what it does. This page is generated when the site",
        "is built, from the docstrings of the config's fields (`rerank-ray fields` prints the same), so",
        "it is always the code's own description. A key is written `section.key=value` as a",
        "command-line override; `rerank-ray config --config my.yaml` prints the resolved config with",
        "every default filled in. How the file works: [Configuration](../configuration.md).",
        "",
    ]
    for section in order:
        lines += [f"## `{section}`", ""]
        if section in SECTIONS:
            lines += [SECTIONS[section], ""]
        lines += ["| key | type | description |", "|---|---|---|"]
        for key, type_name, doc in by_section[section]:
            anchor = f'<a id="{key}"></a>'
            lines.append(f"| {anchor}`{key}` | {table_cell(type_name)} | {table_cell(markdown_code(doc)) or '-'} |")
        lines.append("")
    return "\n".join(lines)


def results_page() -> str:
    text = RESULTS.read_text(encoding="utf-8")
    note = (
        "!!! note\n"
        "    This page is `benchmarks/RESULTS.md` of the repository, the dated record of every\n"
        "    benchmark: the command that ran it, the machine, the date and the full tables. The\n"
        "    benchmark scripts write their sections into that file. The figures that hold today are\n"
        "    summarised in [Performance](performance.md).\n"
    )
    # After the file's title, before its first section.
    title, _, rest = text.partition("\n")
    return f"{title}\n\n{note}\n{rest}"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "reference/configuration.md", content=configuration_page()))
    files.append(File.generated(config, "results.md", content=results_page()))
    return files
