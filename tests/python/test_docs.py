"""docs/algorithms.md's option tables against the library: every default the tables state, for
every algorithm they name, is the value a fresh optimizer of that algorithm reports
(`alr_get_option`), and every option they name exists. The tables are the repository's account
of the specification ("exactly as the library declares them"), so a default changed on one side
only fails here."""
import math
import re
from pathlib import Path

import numpy as np
import pytest

import autolr

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"

# The algorithms of a section whose tables have no "algorithm" column, with the options their
# tables' rows need to be read (GI's rows are GI's own over its default base, sgd).
SECTION_ALGORITHMS = {
    "## 2.": ["vsgd-l", "vsgd-g", "vsgd-b"],
    "## 3.": ["gi"],
    "## 4.": ["tlr"],
    "### 6.2": ["schedule-free"],
}
# Names of an "algorithm" cell that stand for several algorithms.
ALIASES = {"all three": ["auto-sgd", "auto-adam", "auto-adagrad"], "adam, adamw": ["adam", "adamw"]}
NUMBER = re.compile(r"^(-?\d+(?:\.\d+)?(?:e-?\d+)?)(?:/(\d+))?$")


def parse_default(cell):
    """The number a default cell states, NaN for "unset …", None where it is not one number
    (several values, a value that depends on the base)."""
    cell = cell.strip()
    if cell.startswith("unset"):
        return math.nan
    m = NUMBER.match(cell)
    if not m:
        return None
    value = float(m.group(1))
    return value / float(m.group(2)) if m.group(2) else value


def rows():
    """(algorithm, option, default, creation options) for every table row with one option and
    one number."""
    out, section, header, algorithms = [], None, None, None
    lines = DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            # A subsection belongs to its section's algorithms unless it names its own.
            own = next((names for prefix, names in SECTION_ALGORITHMS.items() if line.startswith(prefix)), None)
            section = own if own is not None or line.startswith("## ") else section
            continue
        if line.startswith("|---"):
            continue
        if not line.startswith("| "):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header, algorithms = cells, None
            continue
        if header is None:
            continue
        if header[:2] == ["algorithm", "option"]:
            if cells[0]:
                algorithms = ALIASES.get(cells[0], [cells[0]])
            option_cell, default_cell = cells[1], cells[2]
            names = algorithms
        elif header[:2] == ["option", "default"] and section is not None:
            option_cell, default_cell = cells[0], cells[1]
            names = section
        else:
            continue
        options = re.findall(r"`([A-Za-z_0-9]+)`", option_cell)
        default = parse_default(default_cell)
        if len(options) != 1 or default is None or not re.fullmatch(r"`[A-Za-z_0-9]+`(?: \([^)]*\))?", option_cell):
            continue
        # "(base tlr)": the option exists over that base only.
        base = re.search(r"\(base ([a-z-]+)\)", option_cell)
        for name in names:
            out.append((name, options[0], default, {"base": base.group(1)} if base else {}))
    return out


ROWS = rows()


def test_the_tables_are_read():
    """The parser finds the tables of every section (a rewrite that breaks it fails here)."""
    algorithms = {row[0] for row in ROWS}
    for name in ("sgd", "adam", "auto-adam", "vsgd-l", "gi", "tlr", "prodigy", "dadapt-adam", "dog", "schedule-free"):
        assert name in algorithms, f"no option row of {name} read from {DOC}"
    assert len(ROWS) >= 60, len(ROWS)


@pytest.mark.parametrize("algorithm, option, default, creation", ROWS, ids=[f"{row[0]}-{row[1]}" for row in ROWS])
def test_a_documented_default_is_the_library_default(algorithm, option, default, creation):
    opt = autolr.Optimizer(algorithm, [np.zeros(3, np.float32)], **creation)
    got = opt.get_option(option)
    if math.isnan(default):
        assert math.isnan(got), f"{algorithm} {option}: docs say unset, the library has {got}"
    else:
        assert got == pytest.approx(default, rel=1e-12), f"{algorithm} {option}: docs say {default}, the library has {got}"
