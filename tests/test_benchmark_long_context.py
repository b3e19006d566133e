"""``benchmarks/long_context.py``: issue 11's targets per run and the summary across training runs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "long_context.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_long_context", _PATH)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _cell(mean: float) -> dict[str, float]:
    return {"mean": mean, "std": 0.0, "min": mean, "max": mean, "seeds": 1}


def _run(bench, mc8: float, mc16: float | None, uniform8: float, dnll4: float, dnll8: float,
         rank: list[float | None], raw8: float = 0.9, reach8: float = 0.9, raw16: float | None = 0.8,
         reach16: float = 0.8) -> dict:
    """A run as the benchmark keeps it: ``summary`` rows (other metrics null) and the lens lists."""
    def row(arm: str, x: int, **cells: float | None) -> dict:
        out = {"arm": arm, "length_x": x, **{m: None for m in bench.METRICS}}
        out.update({k: None if v is None else _cell(v) for k, v in cells.items()})
        return out

    summary = [row("uniform", 8, passkey_acc=uniform8), row("mc", 4, delta_nll_h=dnll4),
               row("mc", 8, passkey_acc=mc8, delta_nll_h=dnll8, key_raw=raw8, key_raw_reachable=reach8),
               row("mc", 16, passkey_acc=mc16, key_raw=raw16, key_raw_reachable=reach16)]
    return {"summary": summary, "lens_rank_corr": rank, "lens_top1": [0.5], "lens_rank_retest": [None],
            "lens_rank_key_oracle": []}


def test_targets_read_each_runs_means_and_say_which_are_met(bench) -> None:
    runs = [_run(bench, 0.90, 0.80, 0.05, 0.06, 0.135, [-0.9, -0.8], raw8=0.87, reach8=0.90),
            _run(bench, 0.825, None, 0.30, 0.02, 0.10, [0.2, None], raw8=0.80, reach8=0.95, raw16=None)]
    targets = {t["target"]: t for t in bench.check_targets(runs)}
    assert [t[0] for t in bench.TARGETS] == list(targets)
    pk8 = targets["passkey exact, mc 8x"]
    assert pk8["values"] == [0.90, 0.825] and pk8["met"] == [True, False] and pk8["met_runs"] == 1
    pk16 = targets["passkey exact, mc 16x"]
    assert pk16["values"] == [0.80, None] and pk16["met"] == [True, False]  # not reported is not met
    assert targets["ΔNLL@H vs full, mc 8x"]["met"] == [False, True]  # <= 0.10 holds at the threshold
    diff = targets["passkey exact, mc - uniform 8x"]
    assert diff["values"] == pytest.approx([0.85, 0.525]) and diff["met"] == [True, True]
    reach = targets["key_raw_reachable - key_raw, mc 8x"]  # the lens against the budget's ceiling
    assert reach["values"] == pytest.approx([0.03, 0.15]) and reach["met"] == [True, False]
    assert targets["key_raw_reachable - key_raw, mc 16x"]["met"] == [True, False]  # not reported: not met
    assert not any("rank" in name for name in targets)  # reported beside its references, not a target
    assert all(t["runs"] == 2 for t in targets.values())
    # run d4's 8x over seeds 11-13 and 0.3 - 0.2, in floating point
    at = [_run(bench, float(np.mean([0.95, 0.85, 0.9])), 0.75, 0.4, 0.1, 0.30000000000000004 - 0.2, [0.8])]
    assert at[0]["summary"][2]["passkey_acc"]["mean"] < 0.9
    assert all(t["met"] == [True] for t in bench.check_targets(at))  # at the threshold is met
    assert not any(t["met"][0] for t in bench.check_targets([_run(bench, 0.8999, 0.7499, 0.4, 0.1001, 0.1001,
                                                                       [0.7999], raw8=0.8699, raw16=0.7699)]))


def test_the_further_targets_read_the_long_lengths_a_run_reports(bench) -> None:
    run = _run(bench, 0.975, 0.90, 0.0, 0.02, 0.05, [0.3])
    run["summary"] += [{"arm": "mc", "length_x": x, **{m: None for m in bench.METRICS}, "passkey_acc": _cell(v)}
                       for x, v in ((32, 0.85), (64, 0.75))]
    further = {t["target"]: t for t in bench.check_targets([run], bench.FURTHER_TARGETS)}
    assert [t[0] for t in bench.FURTHER_TARGETS] == list(further)
    assert further["passkey exact, mc 8x (further)"]["met"] == [True]  # 0.975 >= 0.97
    assert further["passkey exact, mc 16x (further)"]["met"] == [True]
    assert further["passkey exact, mc 32x"]["values"] == [0.85] and further["passkey exact, mc 32x"]["met"] == [False]
    assert further["passkey exact, mc 64x"]["met"] == [True]  # at the threshold


def test_across_runs_is_the_spread_of_the_runs_means(bench) -> None:
    runs = [_run(bench, 0.90, 0.80, 0.0, 0.06, 0.135, [0.2, 0.4]),
            _run(bench, 0.80, None, 0.0, 0.02, 0.05, [0.1])]
    across, lens = bench.summarise_runs(runs)
    rows = {(r["arm"], r["length_x"]): r for r in across}
    pk8 = rows[("mc", 8)]["passkey_acc"]
    assert pk8["mean"] == pytest.approx(0.85) and pk8["std"] == pytest.approx(0.05)
    assert (pk8["min"], pk8["max"], pk8["runs"]) == (0.80, 0.90, 2)
    assert rows[("mc", 16)]["passkey_acc"]["runs"] == 1  # only the runs that report a cell
    assert rows[("mc", 8)]["recall_acc"] is None
    assert lens["lens_rank_corr"]["mean"] == pytest.approx((0.3 + 0.1) / 2)
    assert lens["lens_rank_retest"] is None and lens["lens_rank_key_oracle"] is None


def test_several_checkpoints_are_evaluated_on_the_same_documents_and_summarised(bench, tmp_path,
                                                                                 tiny_checkpoint) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(tiny_checkpoint, tmp_path / name / "tiny.pt")
    js = tmp_path / "bench" / "lc.json"
    ckpts = [str(tmp_path / name / "tiny.pt") for name in ("a", "b")]
    assert bench.main(["--quick", "--seeds", "3", "--lengths", "2", "--checkpoint", ckpts[0],
                       "--checkpoint", ckpts[1], "--json", str(js)]) == 0
    result = json.loads(js.read_text())
    assert result["checkpoints"] == ckpts and [r["checkpoint"] for r in result["runs"]] == ckpts
    assert (tmp_path / "bench" / "lc_run0_seed3.json").exists() and (tmp_path / "bench" / "lc_run1_seed3.json").exists()
    first, second = (r["summary"] for r in result["runs"])
    assert first == second  # one model, the same documents
    for row, one in zip(result["across_runs"], first, strict=True):
        for m in bench.METRICS:
            if one[m] is None:
                assert row[m] is None
            else:
                assert row[m]["mean"] == pytest.approx(one[m]["mean"]) and row[m]["std"] == pytest.approx(0.0)
    assert [t["target"] for t in result["targets"]] == [t[0] for t in bench.TARGETS]
    assert all(t["runs"] == 2 and t["met"][0] == t["met"][1] for t in result["targets"])
    assert (tmp_path / "bench" / "lc_runs.png").exists()


def test_the_runs_plot_does_not_overwrite_the_first_seeds_heatmap(bench, tmp_path, monkeypatch) -> None:
    written: list[tuple[str, tuple[str, ...]]] = []

    def fake_eval(argv: list[str]) -> int:  # what `megacontext eval long-context` writes, minus the work
        js = Path(argv[argv.index("--json") + 1])
        js.write_text(json.dumps({**bench.run_means(_run(bench, 0.9, 0.8, 0.0, 0.05, 0.05, [0.1])),
                                  "lens_rank_corr": 0.1}))
        if "--png" in argv:
            written.append(("heatmap", (argv[argv.index("--png") + 1],)))
        return 0

    monkeypatch.setattr(bench, "megacontext", fake_eval)
    monkeypatch.setattr(bench, "plot_lines", lambda path, series, **kw: written.append(("runs", tuple(series))))
    ckpts = []
    for parent in ("x", "y"):  # two folders named "a": the runs are told apart by their paths
        (tmp_path / parent / "a").mkdir(parents=True)
        (tmp_path / parent / "a" / "tiny.pt").write_bytes(b"")
        ckpts += ["--checkpoint", str(tmp_path / parent / "a" / "tiny.pt")]
    png = tmp_path / "heat.png"
    assert bench.main([*ckpts, "--seeds", "1", "--json", str(tmp_path / "r.json"), "--png", str(png)]) == 0
    monkeypatch.setattr(bench, "plot_runs", lambda path, runs, names: written.append(("path", (str(path),))))
    assert bench.main([*ckpts, "--seeds", "1", "--json", str(tmp_path / "r.json"), "--png", str(png)]) == 0
    assert written[0] == ("heatmap", (str(png),))
    assert written[1] == ("runs", tuple(c for c in ckpts if c != "--checkpoint"))
    assert written[-1] == ("path", (str(tmp_path / "heat_runs.png"),))


def test_a_checkpoint_given_twice_or_missing_is_refused(bench, tmp_path, capsys) -> None:
    ck = tmp_path / "tiny.pt"
    ck.write_bytes(b"")
    for argv, words in ((["--checkpoint", str(ck), "--checkpoint", str(ck)], "given twice"),
                        (["--checkpoint", str(tmp_path / "nope.pt")], "no such file")):
        with pytest.raises(SystemExit) as exc:
            bench.main([*argv, "--json", str(tmp_path / "x.json")])
        assert exc.value.code == 2 and words in capsys.readouterr().err
