"""The transfer benchmark's two domains: items split by the category after the catalog's top level, each user
keeping their own events in each domain (order kept), items without a category left out."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def transfer() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        import transfer as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_domain_of_reads_the_first_category_word(transfer: ModuleType) -> None:
    lab = "Pipette tips 200ul. Industrial & Scientific Lab & Scientific Products Pipettes. Acme. "
    tape = "Duct tape. Industrial & Scientific Tapes, Adhesives & Sealants Tapes. Acme. "
    assert transfer.domain_of(lab) == "target"
    assert transfer.domain_of(tape) == "source"
    assert transfer.domain_of("A hammer. Tools. Acme.") is None
    assert transfer.domain_of("Odd. Industrial & Scientific ") is None


def test_split_keeps_each_users_events_per_domain(transfer: ModuleType, tmp_path: Path) -> None:
    texts = {"2": "a. Industrial & Scientific Lab Supplies. x.", "3": "b. Industrial & Scientific Fasteners. x.",
             "4": "c. Industrial & Scientific Test, Measure. x.", "5": "d. no category. x."}
    text = tmp_path / "text.csv"
    with open(text, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "text"])
        writer.writerows(texts.items())
    log = tmp_path / "log.txt"
    log.write_text("u1 2 3 4 5 3\nu2 3 3\nu3 5\n")
    out = transfer.split_domains(log, text, tmp_path)
    assert out["target"].read_text() == "u1 2 4\n"
    assert out["source"].read_text() == "u1 3 3\nu2 3 3\n"
    assert transfer.stats(out["source"]) == {"users": 2, "items": 1, "events": 4, "users_with_3_or_more": 0}
