"""The long-context quality evaluation (``docs/decisions.md`` D22): documents, metric code on hand-made predictors,
the arms' layouts, and the whole command end to end on a tiny checkpoint."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from megacontext_plugin.cli import main
from megacontext_plugin.context import WorkingContext
from megacontext_plugin.evaluation import documents, scoring
from megacontext_plugin.evaluation.arms import Prediction, uniform_layout
from megacontext_plugin.evaluation.codec import BYTES


class Oracle:
    """Always right: predicts every continuation token, with NLL 0."""

    def predict(self, arm: str, prefix: torch.Tensor, cont: torch.Tensor, answer_span=None) -> Prediction:
        return Prediction(np.zeros(cont.numel()), cont.numpy().copy(), int(prefix.numel()))


class RandomModel:
    """Uniform over the 256 bytes: argmax at random, NLL ln 256."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def predict(self, arm: str, prefix: torch.Tensor, cont: torch.Tensor, answer_span=None) -> Prediction:
        return Prediction(np.full(cont.numel(), np.log(256.0)), self.rng.integers(0, 256, cont.numel()), 64)


def test_documents_are_seeded_and_answers_checkable() -> None:
    a = documents.make_passkey_docs(7, 256, [0.0, 0.5, 1.0], 3)
    b = documents.make_passkey_docs(7, 256, [0.0, 0.5, 1.0], 3)
    assert [d.text for d in a] == [d.text for d in b]
    assert [d.text for d in a] != [d.text for d in documents.make_passkey_docs(8, 256, [0.0, 0.5, 1.0], 3)]
    for d in a:
        assert f"The pass key is {d.answer}." in d.prompt and d.prompt.endswith(d.query)
        assert len(d.text) <= 256 and BYTES.decode(BYTES.encode(d.text)) == d.text
    r = documents.make_recall_docs(7, 256, 4)
    assert [d.text for d in r] == [d.text for d in documents.make_recall_docs(7, 256, 4)]
    for d in r:
        for k, v in zip(d.keys, d.values, strict=True):
            assert f"key {k} -> value {v}." in d.context
    assert not documents.passkey_fits(64) and documents.passkey_fits(128)


def test_an_always_right_model_scores_100_and_a_random_one_chance() -> None:
    pk = documents.make_passkey_docs(1, 256, [0.0, 0.5, 1.0], 10)
    rc = documents.make_recall_docs(1, 256, 10)
    score, exact, _ = scoring.score_passkey(Oracle(), "any", pk)
    assert score.exact == 1.0 and score.per_digit == 1.0 and exact == [1.0] * len(pk)
    assert scoring.score_recall(Oracle(), "any", rc)[0].query_accuracy == 1.0
    assert scoring.nll_at_h(Oracle(), "any", [d.text for d in pk], 16) == [0.0] * len(pk)
    rnd = RandomModel()
    score, _, _ = scoring.score_passkey(rnd, "any", pk)
    assert score.exact == 0.0 and score.per_digit < 0.05  # chance: 1/256 per byte
    assert scoring.score_recall(rnd, "any", rc)[0].query_accuracy == 0.0
    assert np.allclose(scoring.nll_at_h(rnd, "any", [d.text for d in pk], 16), np.log(256))


def test_answer_span_is_the_digits_of_the_key_line() -> None:
    for d in documents.make_passkey_docs(3, 300, [0.0, 0.5, 1.0], 2):
        lo, hi = documents.answer_span(d)
        assert BYTES.encode(d.prompt)[lo:hi] == list(d.answer.encode())
        assert d.prompt[lo - len("The pass key is "):lo] == "The pass key is "


def test_answer_focus_tells_a_raw_key_from_a_gist_and_the_budget_ceiling() -> None:
    from megacontext_plugin.evaluation.arms import answer_focus

    K, n, recent = 4, 256, 16
    coarsest = WorkingContext.coarsest(n, K, recent)
    span = (100, 105)  # crosses a block boundary at 104: two level-1 blocks to open, all their ancestors
    opened = coarsest
    while (g := np.flatnonzero((opened.levels > 0) & (opened.starts < 105) & (opened.ends > 100))).size:
        opened = opened.expand(g)
    cost = len(opened)
    assert answer_focus(opened, coarsest, span, room=cost) == {"key_raw": 1.0, "key_raw_reachable": 1.0}
    assert answer_focus(coarsest, coarsest, span, room=cost) == {"key_raw": 0.0, "key_raw_reachable": 1.0}
    assert answer_focus(coarsest, coarsest, span, room=cost - 1)["key_raw_reachable"] == 0.0
    # one more gist opened elsewhere does not change the answer's state
    other = int(np.flatnonzero((opened.levels > 0) & (opened.ends <= 64))[0])
    assert answer_focus(opened.expand([other]), coarsest, span, room=cost)["key_raw"] == 1.0


def test_spearman_on_hand_made_cases() -> None:
    assert scoring.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert scoring.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert scoring.spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # ranks, not values
    assert np.isnan(scoring.spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("n", [200, 512, 1000])
def test_uniform_layout_is_one_gist_level_within_budget(n: int) -> None:
    K, recent, budget = 8, 16, 58
    wc = uniform_layout(n, budget, K, recent, max_level=4)
    wc.validate(recent_tokens=recent, budget=budget)
    gist_levels = set(wc.levels[wc.levels > 0].tolist())
    top = max(gist_levels)
    # every node of the chosen level that lies before the tail is there; leftovers are finer
    assert (wc.levels[: int((wc.levels == top).sum())] == top).all()
    finer = uniform_layout(n, 10**6, K, recent, max_level=top - 1) if top > 1 else None
    assert finer is None or len(finer) > budget or len(WorkingContext.coarsest(n, K, recent)) <= budget


def test_min_task_len_is_the_shortest_document_the_plain_phase_can_write() -> None:
    from megacontext_plugin.training.tiny_recipe import MIN_TASK_LEN, make_batch
    for seed in range(20):  # both tasks, several depths
        x, y, answer = make_batch(np.random.default_rng(seed), 4, MIN_TASK_LEN)
        assert x.shape == y.shape == answer.shape == (4, MIN_TASK_LEN)
    with pytest.raises(ValueError):
        for seed in range(20):
            make_batch(np.random.default_rng(seed), 4, MIN_TASK_LEN - 1)


def test_eval_runs_end_to_end_on_a_tiny_checkpoint(tmp_path, tiny_checkpoint) -> None:
    js = tmp_path / "eval.json"
    assert main(["eval", "long-context", "--checkpoint", str(tiny_checkpoint), "--budget", "64",
                 "--lengths", "1,2,8", "--depths", "0,1", "--samples", "1", "--recall-docs", "1",
                 "--lens-docs", "1", "--json", str(js)]) == 0
    result = json.loads(js.read_text())
    rows = {(r["arm"], r["length_x"]): r for r in result["rows"]}
    assert set(rows) == {(a, x) for a in ("truncation", "uniform", "mc", "full") for x in (1, 2, 8)}
    for r in result["rows"]:
        assert {"arm", "length_x", "passkey_acc", "recall_acc", "delta_nll_h"} <= set(r)
    assert rows[("full", 8)]["nll_h"] is None  # 512 tokens do not fit a 256-token window
    assert rows[("full", 2)]["delta_nll_h"] == 0.0
    assert rows[("truncation", 1)]["delta_nll_h"] == pytest.approx(0.0, abs=1e-5)  # everything fits W
    assert rows[("mc", 2)]["swap_rate"] is not None and 0.0 <= rows[("mc", 2)]["residency"] <= 1.0
    assert rows[("mc", 1)]["key_raw"] is None  # 64 bytes hold no passkey document
    for x in (2, 8):
        mc = rows[("mc", x)]
        assert 0.0 <= mc["key_raw"] <= mc["key_raw_reachable"] <= 1.0
        if mc["key_raw"] == 0.0:
            assert mc["key_raw_acc"] is None
        else:  # the documents answered with the key raw are a part of all those answered
            assert 0.0 <= mc["key_raw_acc"] * mc["key_raw"] <= mc["passkey_acc"] + 1e-9
    assert "lens_rank_corr" in result
    assert result["lens_top1"] is None or 0.0 <= result["lens_top1"] <= 1.0
    assert set(result["lens_top1_by_length"]) == set(result["lens_rank_corr_by_length"])
    assert js.with_suffix(".png").exists() and (tmp_path / "eval_nll.png").exists()


class _Pwn:
    """A pickle that runs code on load (what ``weights_only=False`` would execute)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "megacontext-eval-tiny/1", "payload": _Pwn(str(marker))}, evil)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    for bad in (evil, tmp_path, text):
        proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "eval", "long-context",
                               "--checkpoint", str(bad)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("megacontext eval long-context: error: --checkpoint")
    assert not marker.exists()


def test_a_checkpoint_from_another_version_is_refused_in_one_line(tmp_path) -> None:
    from megacontext_plugin.config import MCConfig
    from megacontext_plugin.nets.tiny_checkpoint import save
    from megacontext_plugin.nets.tiny_gpt import TinyGPTConfig
    from megacontext_plugin.training.tiny_recipe import build

    model, ctrl = build(TinyGPTConfig(vocab_size=256, sequence_len=512, n_layer=1, n_head=4, n_embd=64),
                        MCConfig(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=16, gistnet_layers=1,
                                 lensnet_layers=1, lensnet_dim=64))
    ctrl.close()
    good = tmp_path / "tiny.pt"
    save(good, model, ctrl.cfg, ctrl.controller_state(), {})
    state = torch.load(good, weights_only=True)
    state["mc_config"]["mc_knob_from_elsewhere"] = 0.3
    old = tmp_path / "old.pt"
    torch.save(state, old)
    proc = subprocess.run([sys.executable, "-m", "megacontext_plugin.cli", "eval", "long-context",
                           "--checkpoint", str(old)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("megacontext eval long-context: error: --checkpoint") and "mc_knob_from_elsewhere" in last


def _eval_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "long-context", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_nanochat_checkpoint_directory_without_a_checkpoint_or_without_nanochat_is_one_line(
        tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "base_checkpoints" / "d2"
    empty.mkdir(parents=True)
    err = _eval_error(["--checkpoint", str(empty)], capsys)
    assert err.startswith("megacontext eval long-context: error: --checkpoint")
    assert "holds no nanochat checkpoint" in err

    (empty / "model_000003.pt").write_bytes(b"")
    assert "--step 7: " in _eval_error(["--checkpoint", str(empty), "--step", "7"], capsys)
    if importlib.util.find_spec("nanochat") is None:  # this venv has no nanochat: NANOCHAT_DIR is what finds it
        monkeypatch.delenv("NANOCHAT_DIR", raising=False)
        err = _eval_error(["--checkpoint", str(empty)], capsys)
        assert "needs nanochat importable (NANOCHAT_DIR is not set" in err and "set NANOCHAT_DIR" in err
    tiny = tmp_path / "tiny.pt"
    tiny.write_bytes(b"")
    assert "--step: only for a nanochat" in _eval_error(["--checkpoint", str(tiny), "--step", "1"], capsys)


@pytest.mark.parametrize("flag", ["--collapse-threshold=-1", "--expand-threshold=2", "--max-replacements=0",
                                  "--iterations=0"])
def test_long_context_refuses_an_allocator_knob_out_of_range_before_loading(
        flag: str, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "long-context", "--checkpoint", str(tmp_path / "absent.pt"), flag])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: --allocator_" in err and "Traceback" not in err  # the knob, not the missing checkpoint


def test_mc_arm_starts_coarsest_and_lensnet_never_sees_a_level_it_did_not_train_on() -> None:
    from megacontext_plugin.config import MCConfig
    from megacontext_plugin.evaluation.arms import ArmRunner
    from megacontext_plugin.nets.tiny_gpt import TinyGPTConfig
    from megacontext_plugin.training.tiny_recipe import build

    cfg = MCConfig(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=16, gistnet_layers=1,
                   lensnet_layers=1, lensnet_dim=64)
    model, ctrl = build(TinyGPTConfig(vocab_size=256, sequence_len=512, n_layer=1, n_head=4, n_embd=64), cfg)
    # training prompts are 496 tokens: level-2 gists at most (a level-3 node spans 512)
    assert ctrl.lens_level == 2
    from megacontext_plugin.inference.settings import SessionSettings
    assert SessionSettings.from_config(cfg, 512).lens_level == 2  # chat reads the same level
    runner = ArmRunner(model, ctrl.nets, budget=64)
    assert runner.lens_level == 2  # the nets alone give the level the controller has
    long = runner.start_layout(1008, room=58, num_levels=4)  # 16x: the coarsest holds a level-3 gist
    assert long == WorkingContext.coarsest(1008, 8, 16) and int(long.levels.max()) == 3
    from inference_support import record_lens_levels

    seen = record_lens_levels(ctrl.lensnet)
    with torch.no_grad():
        prefix = torch.randint(0, 256, (1008,))
        levels, _ = runner.tree(prefix)
        u = runner.scorer(runner.source(levels, prefix, prefix[:2]), prefix)(long)
        assert seen == [2] and u.shape == (len(long),)  # the level-3 gist was scored through its children
        level3 = int(np.flatnonzero(long.levels == 3)[0])
        view = long.expand(np.array([level3]))
        seen.clear()
        u_view = runner.scorer(runner.source(levels, prefix, prefix[:2]), prefix)(view)
        # gists are read relative to their working context's median (D31): compare gaps to another gist
        other = int(np.flatnonzero(long.levels > 0)[-1])
        assert other > level3 and view.entries()[other + 7] == long.entries()[other]
        assert u[level3] - u[other] == pytest.approx(float(u_view[level3:level3 + 8].max() - u_view[other + 7]),
                                                     abs=1e-6)
    ctrl.close()


def test_the_mc_arm_starts_a_history_too_long_for_its_tail_with_a_shorter_one() -> None:
    # W = 64, K = 8, tail 16: this 64x prompt's coarsest layout (37 entries) leaves too little of the 57 for an
    # island from level 3 (21 entries), so the arm protects 8 tokens there and says so (``tail``, D55); an 8x
    # prompt keeps the run's 16; the reachable ceiling is measured from the same start
    from megacontext_plugin.config import MCConfig
    from megacontext_plugin.evaluation.arms import ArmRunner
    from megacontext_plugin.focus import fitted_tail
    from megacontext_plugin.nets.tiny_gpt import TinyGPTConfig
    from megacontext_plugin.training.tiny_recipe import build

    cfg = MCConfig(mc=True, block_size=8, mc_horizon=16, gistnet_layers=1, lensnet_layers=1, lensnet_dim=64)
    model, ctrl = build(TinyGPTConfig(vocab_size=256, sequence_len=512, n_layer=1, n_head=4, n_embd=64), cfg)
    runner = ArmRunner(model, ctrl.nets, budget=64)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, tail in ((8 * 64 - 8, 16), (64 * 64 - 6, 8)):
            prefix, cont = torch.randint(0, 256, (n,)), torch.randint(0, 256, (8,))
            room = 64 - 7
            assert fitted_tail(n, 8, 16, room) == tail
            assert runner.start_layout(n, room, 5) == WorkingContext.coarsest(n, 8, tail)
            pred = runner.predict("mc", prefix, cont, answer_span=(n // 2, n // 2 + 5))
            assert pred.info["tail"] == tail and pred.entries <= 64
            assert {"key_raw", "key_raw_reachable"} <= set(pred.info)
    ctrl.close()


@pytest.mark.parametrize("start", ["coarsest", "recency"])
def test_lens_ranking_scores_the_layout_the_mc_arm_starts_from(start: str) -> None:
    from megacontext_plugin.config import MCConfig
    from megacontext_plugin.evaluation.arms import ArmRunner
    from megacontext_plugin.nets.tiny_gpt import TinyGPTConfig
    from megacontext_plugin.training.tiny_recipe import build

    cfg = MCConfig(mc=True, block_size=8, allocator_recent_tokens=16, mc_horizon=16, gistnet_layers=1,
                   lensnet_layers=1, lensnet_dim=64)
    torch.manual_seed(0)
    model, ctrl = build(TinyGPTConfig(vocab_size=256, sequence_len=1024, n_layer=1, n_head=4, n_embd=64), cfg)
    runner = ArmRunner(model, ctrl.nets, budget=64, start=start)
    scored: list[WorkingContext] = []
    score = runner.scorer

    def recording_scorer(source, prefix):
        inner = score(source, prefix)
        return lambda wc: (scored.append(wc), inner(wc))[1]

    runner.scorer = recording_scorer  # type: ignore[method-assign]
    docs = documents.make_passkey_docs(3, 1024, [0.5], 1)
    ranking = scoring.lens_ranking(runner, docs)
    prefix, (cont, _) = BYTES.prefix(docs[0].prompt), BYTES.answer(docs[0].answer)
    n = int(prefix.numel())
    expected = runner.start_layout(n, 64 - (int(cont.numel()) - 1), runner.tree(prefix)[1])
    assert scored == [expected] and all(-1.0 <= r <= 1.0 for r in ranking.rho)
    # its twin (other key digits: the same bytes-long prompt, the same layout) enters the retest
    assert len(ranking.retest) <= 1 and all(-1.0 <= r <= 1.0 for r in ranking.retest)
    assert len(ranking.top1) == 1 and ranking.top1[0] in (0.0, 1.0)
    if start == "coarsest":  # 16x: the recency layout differs from the trained-level start
        assert expected != WorkingContext.recency(n, 64 - (int(cont.numel()) - 1), 8, 16, max_level=3)
    ctrl.close()


def test_twin_passkey_changes_every_key_digit_and_nothing_else() -> None:
    for i, doc in enumerate(documents.make_passkey_docs(5, 700, [0.0, 0.5, 1.0], 3)):
        twin = documents.twin_passkey(doc, np.random.default_rng(i))
        assert len(twin.answer) == len(doc.answer) and twin.answer.isdigit()
        assert all(a != b for a, b in zip(twin.answer, doc.answer, strict=True))
        lo, hi = documents.answer_span(doc)
        assert documents.answer_span(twin) == (lo, hi)
        assert twin.prompt[:lo] == doc.prompt[:lo] and twin.prompt[hi:] == doc.prompt[hi:]
        assert twin.prompt[lo:hi] == twin.answer and twin.text == twin.prompt + " " + twin.answer + "."
        assert (twin.key_offset, twin.query_offset, twin.depth) == (doc.key_offset, doc.query_offset, doc.depth)


def test_lens_ranking_references_rank_the_truth_against_its_twin_and_the_key(monkeypatch) -> None:
    """The references: ``retest`` ranks the document's true gains against its twin's, ``key_oracle``
    an indicator of the gists over the key against the true gains; a twin whose layout differs is
    left out of ``retest`` only, and its gains are not measured."""
    import types

    doc = documents.make_passkey_docs(3, 512, [0.5], 1)[0]
    lo, hi = documents.answer_span(doc)
    wc = WorkingContext.coarsest(len(doc.prompt), 8, 16)
    gists = np.flatnonzero(wc.levels > 0)
    key = (wc.starts[gists] < hi) & (wc.ends[gists] > lo)
    gain = np.arange(gists.size, dtype=np.float64)
    gain[key] = 100.0  # the key's gist helps most
    twin_gain = gain[::-1].copy()
    scores = np.linspace(-1, 1, gists.size)
    entry_scores = np.zeros(len(wc))
    entry_scores[gists] = scores
    runner = types.SimpleNamespace(scorer=lambda source, prefix: lambda w: entry_scores)
    other = WorkingContext.coarsest(len(doc.prompt), 8, 32)
    for twin_wc, expect_retest, measured in ((wc, [scoring.spearman(gain, twin_gain)], ["doc", "twin"]),
                                             (other, [], ["doc"])):
        gains_of: list[str] = []

        def start(runner, d, codec, twin_wc=twin_wc):
            return (wc, "doc", None, None) if d.answer == doc.answer else (twin_wc, "twin", None, None)

        def gains(runner, w, source, cont, gains_of=gains_of):
            gains_of.append(source)
            return gain if source == "doc" else twin_gain

        monkeypatch.setattr(scoring, "_ranking_start", start)
        monkeypatch.setattr(scoring, "_expansion_gains", gains)
        ranking = scoring.lens_ranking(runner, [doc])  # type: ignore[arg-type]
        assert ranking.rho == [pytest.approx(scoring.spearman(scores, gain))]
        assert ranking.retest == expect_retest and gains_of == measured
        assert ranking.key_oracle == [pytest.approx(scoring.spearman(key.astype(float), gain))]
        assert ranking.key_oracle[0] > 0 and ranking.top1 == [float(np.argmax(scores) == np.argmax(gain))]


def test_default_lengths_drop_what_the_budget_cannot_hold_and_an_explicit_one_is_one_line(
        tmp_path, tiny_checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    js = tmp_path / "eval.json"
    assert main(["eval", "long-context", "--checkpoint", str(tiny_checkpoint), "--budget", "40", "--depths", "0",
                 "--samples", "1", "--recall-docs", "0", "--lens-docs", "0", "--arms", "truncation,uniform",
                 "--json", str(js)]) == 0
    out = capsys.readouterr().out
    left_out = next(line for line in out.splitlines() if line.startswith("lengths "))
    assert "16x" in left_out.split()[1] and "tokens needs" in left_out and "more than the budget 40" in left_out
    lengths = {r["length_x"] for r in json.loads(js.read_text())["rows"]}
    assert 16 not in lengths and 1 in lengths
    err = _eval_error(["--checkpoint", str(tiny_checkpoint), "--budget", "40", "--lengths", "1,16"], capsys)
    assert err.startswith("megacontext eval long-context: error: --lengths 16: a history of 16x40 tokens needs")
    assert "larger --budget" in err


def test_documents_reports_nll_per_arm_on_text_files(tmp_path, tiny_checkpoint) -> None:
    from megacontext_plugin.data import stdlib_text

    files = [p for p in stdlib_text.split(0)[1] if p.stat().st_size > 3000][:2]
    js = tmp_path / "docs.json"
    assert main(["eval", "long-context", "--checkpoint", str(tiny_checkpoint), "--budget", "64", "--lengths", "2,8",
                 "--documents", *map(str, files), "--documents-per-length", "3", "--json", str(js)]) == 0
    result = json.loads(js.read_text())
    rows = {(r["arm"], r["length_x"]): r for r in result["rows"]}
    assert set(rows) == {(a, x) for a in ("truncation", "uniform", "mc", "full") for x in (2, 8)}
    assert all(r["documents"] == 3 for r in result["rows"])
    assert rows[("full", 8)]["nll_h"] is None  # 512 tokens do not fit the tiny model's 256-token window
    assert rows[("truncation", 2)]["delta_nll_truncation"] == 0.0 and rows[("full", 2)]["gap_closed"] in (1.0, None)
    assert rows[("mc", 2)]["nll_h"] > 0 and "passkey_acc" not in rows[("mc", 2)]
    assert result["settings"]["files"] == [str(f) for f in files]


def test_text_documents_are_full_length_and_taken_round_robin() -> None:
    texts = ["a" * 50, "b" * 20, "c" * 5]
    docs = documents.text_documents([BYTES.encode(t) for t in texts], BYTES.bos, 10, limit=6)
    assert [bytes(d.tolist()).decode() for d in docs] == ["a" * 10, "b" * 10, "a" * 10, "b" * 10, "a" * 10, "a" * 10]


@pytest.mark.parametrize("kind", ["missing", "binary", "latin1", "trained"])
def test_documents_refuses_a_bad_or_training_file_in_one_line(
        kind: str, tmp_path, tiny_checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    from megacontext_plugin.data import stdlib_text

    checkpoint = tmp_path / "tiny.pt"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    path = tmp_path / "doc.txt"
    if kind == "binary":
        path.write_bytes(b"text\0more")
    elif kind == "latin1":
        path.write_bytes("caf\u00e9".encode("latin-1"))
    elif kind == "trained":
        path = stdlib_text.split(0)[0][0]
        stdlib_text.write_file_list(tmp_path / "corpus_train_files.txt", [path])
    err = _eval_error(["--checkpoint", str(checkpoint), "--documents", str(path)], capsys)
    assert err.startswith(f"megacontext eval long-context: error: --documents {path}: ")
    assert {"missing": "no such file", "binary": "a binary file", "latin1": "not UTF-8 text",
            "trained": "the run trained on it"}[kind] in err
