"""Task generators and metrics of megacontext_plugin.data (determinism, checkable answers, scoring)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megacontext_plugin.data import metrics, tasks
from megacontext_plugin.data.tasks import MAX_SHORTFALL, make_copy, make_passkey, make_recall

SETTINGS = settings(max_examples=40, deadline=None)


def _depth_tolerance(filler_chars: int) -> float:
    return (tasks.LENGTH_SLACK + 2) / max(filler_chars, 1) + 1e-9


def _leading_answer(continuation: str) -> str:
    """The first run of digits in a model continuation ('' if there is none)."""
    m = re.search(r"\d+", continuation)
    return m.group(0) if m else ""


def _cell(g: metrics.Grid, depth: float, length: int) -> float:
    """The grid's mean score at (``depth``, ``length``)."""
    return float(g.accuracy[g.depths.index(depth), g.lengths.index(length)])


# ---------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("make", [make_passkey, make_recall, make_copy])
def test_same_seed_same_text_different_seed_differs(make) -> None:
    assert make(7, 1500) == make(7, 1500)
    assert make(7, 1500).text != make(8, 1500).text


def test_generator_seed_is_consumed_and_int_seed_equals_fresh_generator() -> None:
    assert make_passkey(3).text == make_passkey(np.random.default_rng(3)).text
    rng = np.random.default_rng(3)
    assert make_passkey(rng).text != make_passkey(rng).text


def test_filler_is_varied_sentences_without_digits_or_planted_phrases() -> None:
    text = tasks.filler(0, 5000)
    sentences = [s for s in text.split(". ") if s]
    assert len(sentences) > 20
    assert len(set(sentences)) > 0.9 * len(sentences)
    assert not re.search(r"\d|->|pass key|\bkey\b|\bvalue\b", text)
    assert 5000 - tasks.LENGTH_SLACK <= len(text) <= 5000


# ---------------------------------------------------------------------------------------------- passkey


def test_passkey_layout_and_answer() -> None:
    s = make_passkey(1, 3000, depth=0.25, digits=6)
    assert re.fullmatch(r"[1-9]\d{5}", s.answer)
    assert s.prompt.endswith("What is the pass key? The pass key is")
    assert s.text == f"{s.prompt} {s.answer}."
    assert s.text[s.key_offset :].startswith(f"The pass key is {s.answer}. Remember it.")
    assert s.text[s.query_offset :].startswith(s.query)
    assert s.prompt.count(s.answer) == 1 and s.prompt.count("The pass key is") == 2  # key line and query
    assert s.num_chars == len(s.text) and s.approx_tokens == round(len(s.text) / 4)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    num_chars=st.integers(200, 8000),
    depth=st.floats(0.0, 1.0),
    digits=st.integers(1, 10),
)
def test_passkey_properties(seed: int, num_chars: int, depth: float, digits: int) -> None:
    s = make_passkey(seed, num_chars, depth=depth, digits=digits)
    assert num_chars - MAX_SHORTFALL <= len(s.text) <= num_chars
    assert len(s.answer) == digits
    before_query = s.text[: s.query_offset]
    assert before_query.count(s.answer) == 1  # the key appears exactly once before the query
    assert before_query.find(f"pass key is {s.answer}.") >= 0
    filler_chars = len(s.prompt) - len(s.query) - len("The pass key is . Remember it.") - digits
    assert abs(s.actual_depth - depth) <= _depth_tolerance(filler_chars)
    assert abs(s.key_offset / max(filler_chars, 1) - depth) <= _depth_tolerance(filler_chars) + 3 / max(filler_chars, 1)


# ---------------------------------------------------------------------------------------------- recall


def _pairs_from_text(text: str) -> dict[str, str]:
    return dict(re.findall(r"key (\w+) -> value (\d+)\.", text))


def test_recall_answers_recoverable_from_pairs() -> None:
    s = make_recall(5, 2500, num_pairs=4, num_queries=3, num_symbols=8)
    assert len(set(s.keys)) == 4 and set(s.keys) <= set(tasks.symbol_pool(8))
    assert len(s.answers) == len(s.queries) == 3
    stated = _pairs_from_text(s.context)
    assert stated == dict(zip(s.keys, s.values, strict=True))
    for i, (q, a) in enumerate(zip(s.queries, s.answers, strict=True)):
        key = q.split()[1]
        assert stated[key] == a
        assert s.prompt_for(i).endswith(q)
        assert s.text.startswith(s.prompt_for(i))
    assert s.pairs_offset < s.queries_offset
    assert (s.prompt, s.query, s.answer) == (s.prompt_for(0), s.queries[0], s.answers[0])
    with pytest.raises(ValueError, match="query index"):
        s.prompt_for(3)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    num_chars=st.integers(400, 6000),
    num_pairs=st.integers(1, 4),
    depth=st.floats(0.0, 1.0),
)
def test_recall_properties(seed: int, num_chars: int, num_pairs: int, depth: float) -> None:
    s = make_recall(seed, num_chars, num_pairs=num_pairs, depth=depth)
    assert num_chars - MAX_SHORTFALL <= len(s.text) <= num_chars
    stated = _pairs_from_text(s.text[: s.queries_offset])
    assert len(stated) == num_pairs
    for q, a in zip(s.queries, s.answers, strict=True):
        assert stated[q.split()[1]] == a
    filler_chars = len(s.context) - len(
        " ".join(f"key {k} -> value {v}." for k, v in zip(s.keys, s.values, strict=True))
    )
    assert abs(s.actual_depth - depth) <= _depth_tolerance(filler_chars)


# ---------------------------------------------------------------------------------------------- copy


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    num_chars=st.integers(400, 6000),
    a=st.floats(0.0, 1.0),
    b=st.floats(0.0, 1.0),
    words=st.integers(1, 20),
)
def test_copy_properties(seed: int, num_chars: int, a: float, b: float, words: int) -> None:
    first, second = min(a, b), max(a, b)
    s = make_copy(seed, num_chars, segment_words=words, first_depth=first, second_depth=second)
    assert num_chars - MAX_SHORTFALL <= len(s.text) <= num_chars
    seg = s.segment
    assert len(seg.split()) == words
    assert s.text[s.first_offset : s.first_offset + len(seg)] == seg
    assert s.text[s.second_offset : s.second_offset + len(seg)] == seg
    assert s.distance == s.second_offset - s.first_offset >= len(seg)
    assert s.prompt == s.text[: s.second_offset] and s.answer == seg
    assert s.prompt.count(seg) == 1


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_passkey(0, 2000, depth=1.5), "depth must be in"),
        (lambda: make_passkey(0, 2000, depth=math.nan), "depth must be in"),
        (lambda: make_passkey(0, 2000, digits=0), "digits must be"),
        (lambda: make_passkey(0, 20), "num_chars must be"),
        (lambda: make_passkey(-1), "seed must be >= 0"),
        (lambda: make_passkey("x"), "seed must be an int"),  # type: ignore[arg-type]
        (lambda: make_recall(0, num_pairs=0), "num_pairs must be"),
        (lambda: make_recall(0, num_pairs=5, num_symbols=4), "num_pairs must be"),
        (lambda: make_recall(0, num_pairs=2, num_queries=3), "num_queries must be"),
        (lambda: make_recall(0, num_symbols=10**6), "num_symbols must be"),
        (lambda: make_copy(0, first_depth=0.8, second_depth=0.2), "first_depth .* must be <="),
        (lambda: make_copy(0, 100, segment_words=50), "num_chars must be"),
        (lambda: tasks.filler(0, -1), "num_chars must be"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------- metrics


def test_passkey_accuracy_all_right_all_wrong_and_partial() -> None:
    right = metrics.passkey_accuracy(["12345", " 67890 "], ["12345", "67890"])
    assert (right.exact, right.per_digit, right.per_position) == (1.0, 1.0, (1.0,) * 5)
    wrong = metrics.passkey_accuracy(["99999", ""], ["12345", "67890"])
    assert (wrong.exact, wrong.per_digit, wrong.per_position) == (0.0, 0.0, (0.0,) * 5)
    # 12399 vs 12345: 3 of 5 digits; 6789 vs 67890: 4 of 5 (missing counts as wrong); 123456 vs 12345: exact fails
    part = metrics.passkey_accuracy(["12399", "6789", "123456"], ["12345", "67890", "12345"])
    assert part.exact == 0.0
    assert part.per_digit == pytest.approx(12 / 15)
    assert part.per_position == pytest.approx((1.0, 1.0, 1.0, 2 / 3, 1 / 3))
    assert part.count == 3


def test_passkey_accuracy_ragged_answers_and_leading_answer() -> None:
    s = metrics.passkey_accuracy(["12", "345"], ["12", "349"])
    assert s.exact == 0.5 and s.per_digit == pytest.approx(4 / 5)
    assert s.per_position == pytest.approx((1.0, 1.0, 0.0))  # position 2 only exists in the second answer
    assert _leading_answer(" 48213. Remember it") == "48213"
    assert _leading_answer(" no digits") == ""


def test_recall_accuracy() -> None:
    r = metrics.recall_accuracy([["1", "2"], ["3", "x"]], [["1", "2"], ["3", "4"]])
    assert (r.query_accuracy, r.document_accuracy, r.num_queries, r.num_documents) == (0.75, 0.5, 4, 2)
    assert metrics.recall_accuracy([["9"]], [["1"]]).query_accuracy == 0.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: metrics.passkey_accuracy(["1"], ["1", "2"]),
        lambda: metrics.passkey_accuracy([], []),
        lambda: metrics.passkey_accuracy("12", "12"),
        lambda: metrics.passkey_accuracy(["1"], [""]),
        lambda: metrics.recall_accuracy([["1"]], [["1", "2"]]),
        lambda: metrics.grid([0.5], [100, 200], [1.0]),
        lambda: metrics.grid([], [], []),
    ],
)
def test_metric_argument_errors(call) -> None:
    with pytest.raises(ValueError):
        call()


def test_grid_aggregates_by_depth_and_length() -> None:
    g = metrics.grid([0.0, 0.0, 0.5, 0.5, 1.0], [256, 256, 256, 512, 512], [1, 0, 1, 0, 1])
    assert g.depths == (0.0, 0.5, 1.0) and g.lengths == (256, 512)
    assert _cell(g, 0.0, 256) == 0.5 and _cell(g, 0.5, 256) == 1.0 and _cell(g, 0.5, 512) == 0.0
    assert math.isnan(_cell(g, 0.0, 512))
    assert g.counts.tolist() == [[2, 0], [1, 1], [0, 1]]


def test_generated_answers_score_perfectly() -> None:
    samples = [make_passkey(i, 800, depth=i / 4) for i in range(5)]
    score = metrics.passkey_accuracy(
        [_leading_answer(s.text[len(s.prompt) :]) for s in samples], [s.answer for s in samples]
    )
    assert score.exact == 1.0
    g = metrics.grid([s.depth for s in samples], [800] * 5, [1.0] * 5)
    assert g.accuracy.shape == (5, 1)
