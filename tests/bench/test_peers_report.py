"""The peers harness's bookkeeping: time-to-quality, lower bounds when a peer never gets there, ratios."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PEERS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    sys.path.insert(0, str(PEERS))
    try:
        spec = importlib.util.spec_from_file_location("peers_run_under_test", PEERS / "run.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(PEERS))


def progress(path: Path, valid: list[tuple[float, float]], test: bool = True) -> Path:
    """A worker's progress file: validation NDCG@10 after each epoch at the given elapsed seconds."""
    rows: list[dict[str, Any]] = [{"kind": "meta", "tool": "x", "version": "1", "n_users": 10, "n_items": 5,
                                   "n_events": 40, "n_test_users": 10, "elapsed": 0.0, "peak_rss_mb": 100.0}]
    rows += [{"kind": "epoch", "epoch": i + 1, "valid_ndcg10": v, "epoch_seconds": 90.0, "valid_eval_seconds": 5.0,
              "elapsed": t, "peak_rss_mb": 200.0 + i} for i, (t, v) in enumerate(valid)]
    if test:
        rows.append({"kind": "test", "ndcg10": 0.031, "hr10": 0.05, "eval_seconds": 6.0, "elapsed": 999.0,
                     "peak_rss_mb": 250.0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_time_to_quality_is_the_first_validation_at_the_threshold(harness: ModuleType, tmp_path: Path) -> None:
    run = harness.summarize("seqrec", progress(tmp_path / "p", [(100, 0.01), (200, 0.0300), (300, 0.05)]),
                            wall=400.0, killed=False, code=0, cap=1000.0)
    assert run["seconds_to_valid_NDCG@10>=0.030"] == 200
    assert run["time_to_quality_lower_bound"] is False and run["seconds_without_quality"] is None
    assert run["best_valid_NDCG@10"] == 0.05 and run["epochs_run"] == 3 and run["peak_rss_mb"] == 250.0


def test_a_peer_that_stops_itself_short_of_quality_gives_a_lower_bound(harness: ModuleType, tmp_path: Path) -> None:
    run = harness.summarize("peer", progress(tmp_path / "p", [(2000, 0.01), (4100, 0.029)]), wall=4500.0,
                            killed=False, code=0, cap=5000.0)
    assert run["seconds_to_valid_NDCG@10>=0.030"] is None
    assert run["time_to_quality_lower_bound"] is True and run["seconds_without_quality"] == 4100
    assert "> 4100 (not reached)" in harness.table([{**run, "round": 1}], [])


def test_a_peer_killed_at_the_cap_is_bounded_by_its_wall_time(harness: ModuleType, tmp_path: Path) -> None:
    run = harness.summarize("peer", progress(tmp_path / "p", [], test=False), wall=1800.0, killed=True, code=-9,
                            cap=1800.0)
    assert run["seconds_without_quality"] == 1800.0 and run["test_NDCG@10"] is None
    assert "> cap (1800)" in harness.table([{**run, "round": 1}], [])


def test_ratios_are_peer_over_seqrec_and_bounds_are_marked(harness: ModuleType, tmp_path: Path) -> None:
    mine = harness.summarize("seqrec", progress(tmp_path / "a", [(100, 0.02), (250, 0.035)]), wall=300.0,
                             killed=False, code=0, cap=1000.0)
    reached = harness.summarize("recbole", progress(tmp_path / "b", [(3000, 0.02), (5000, 0.031)]), wall=5100.0,
                                killed=False, code=0, cap=6000.0)
    short = harness.summarize("rectools", progress(tmp_path / "c", [(7000, 0.02)]), wall=7200.0, killed=False,
                              code=0, cap=7800.0)
    runs = [{**r, "round": 1} for r in (mine, reached, short)]
    by_peer = {x["peer"]: x for x in harness.ratios(runs)}
    assert by_peer["recbole"]["time_to_quality"] == pytest.approx(5000 / 250)
    assert by_peer["recbole"]["time_to_quality_is_lower_bound"] is False
    assert by_peer["rectools"]["time_to_quality"] == pytest.approx(7000 / 250)
    assert by_peer["rectools"]["time_to_quality_is_lower_bound"] is True
    assert "| >28.00 |" in harness.table(runs, harness.ratios(runs))


def test_reused_files_give_their_own_runs_of_tools_not_run_now(harness: ModuleType, tmp_path: Path) -> None:
    def saved(name: str, runs: list[dict[str, Any]]) -> Path:
        (tmp_path / name).write_text(json.dumps({"date": "d", "runs": runs}))
        return tmp_path / name

    own = saved("a.json", [{"tool": "rectools"}, {"tool": "seqrec", "from": "older.json"}])
    other = saved("b.json", [{"tool": "recbole"}, {"tool": "seqrec"}])
    assert [r["tool"] for r in harness.runs_from(own, {"seqrec-bf16grads"})] == ["rectools"]  # not re-reused
    assert [r["tool"] for r in harness.runs_from(other, {"seqrec"})] == ["recbole"]  # a tool run now is skipped
    assert harness.runs_from(other, set())[0]["from"] == "b.json (d)"
