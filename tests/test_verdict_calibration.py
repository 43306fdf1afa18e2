"""The rule that chose the verdict's thresholds on the dev split (benchmarks/verdict_calibration.py)."""

import pytest

from benchmarks.resumable import row_parser, rows_to_measure
from benchmarks.verdict_calibration import FIGURES, agreement, choose_thresholds, judge_class, summarise
from spare_core.adapter import VERDICT_FIGURE


def _row(share: float, ua: float) -> dict:
    return {"row": "steps5:style:x", "guided_nearer_surrogate": share, "UA": ua}


def test_the_judges_classes_are_the_fixed_bounds():
    assert [judge_class(ua) for ua in (0.0, 0.49, 0.5, 0.89, 0.9, 1.0)] == [
        "not erased", "not erased", "partly erased", "partly erased", "erased", "erased"]


def test_a_figure_that_separates_the_classes_gets_thresholds_that_agree_on_every_row():
    rows = [_row(0.0, 0.0), _row(0.1, 0.2), _row(0.4, 0.6), _row(0.5, 0.7), _row(0.8, 0.95), _row(1.0, 1.0)]
    chosen = choose_thresholds(rows, "guided_nearer_surrogate")
    assert chosen["agreeing"] == chosen["rows"] == 6
    # Ties go to the highest thresholds that still agree: "erased" only from the lowest erased row's share up.
    assert chosen["thresholds"] == [0.4, 0.8]


def test_agreement_counts_each_judge_class_against_each_verdict():
    rows = [_row(0.0, 1.0), _row(1.0, 1.0), _row(1.0, 0.0)]
    table = agreement(rows, "guided_nearer_surrogate", (0.5, 0.5))
    assert (table["agreeing"], table["rows"]) == (1, 3)
    assert table["judge_class_to_verdict"]["erased"] == {"erased": 1, "partly erased": 0, "not erased": 1}
    assert table["judge_class_to_verdict"]["not erased"]["erased"] == 1


def test_dev_names_the_figure_that_agrees_most_and_a_tie_keeps_the_shipped_one():
    def results(values_by_ua):
        per = {f"c{i}": {"UA": ua, **{figure: value for figure in FIGURES}} for i, (ua, value) in
               enumerate(values_by_ua)}
        return {"steps5": {"per_concept": per}}

    other = next(figure for figure in FIGURES if figure != VERDICT_FIGURE)
    separating = results([(0.0, 0.1), (1.0, 0.9)])
    summarise(separating, "dev")
    assert separating["best_figure"] == VERDICT_FIGURE  # every figure agrees on both rows: the shipped one stays
    better = results([(0.0, 0.1), (1.0, 0.9), (0.0, 0.95)])
    better["steps5"]["per_concept"]["c2"][other] = 0.0  # only `other` calls the third row not erased
    summarise(better, "dev")
    assert better["best_figure"] == other
    assert better["chosen"][other]["agreeing"] == 3 > better["chosen"][VERDICT_FIGURE]["agreeing"]


def test_a_figure_some_rows_lack_is_left_out_of_the_comparison():
    rows = {"steps5": {"per_concept": {"a": {"UA": 1.0, "nearer_surrogate": 1.0, "guided_nearer_surrogate": 1.0,
                                             "cfg_nearer_surrogate": 1.0, "gap_closed": 0.5},
                                       "b": {"UA": 0.0, "nearer_surrogate": 0.0, "guided_nearer_surrogate": 0.0,
                                             "gap_closed": 0.0}}}}
    summarise(rows, "dev")
    assert "cfg_nearer_surrogate" not in rows["chosen"] and "guided_nearer_surrogate" in rows["chosen"]


def test_a_resumable_benchmark_names_the_valid_rows_when_given_an_unknown_one(capsys):
    parser = row_parser("test", {"heldout": None})
    every = ["steps5:style:a", "steps10:style:a"]
    results = {"steps5": {"per_concept": {"style:a": {"UA": 1.0}}}}
    assert rows_to_measure(parser, "", "", every, results) == ["steps10:style:a"]
    assert rows_to_measure(parser, "", "steps5:style:a", every, results) == every
    for rows, redo in (("steps7:style:a", ""), ("", "steps7:style:a")):
        with pytest.raises(SystemExit):
            rows_to_measure(parser, rows, redo, every, results)
        assert "unknown rows ['steps7:style:a']; choose from steps5:style:a, steps10:style:a" in capsys.readouterr().err
