"""Metrics of `distill compare` on small hand-checked cases: equal to scikit-learn's and to hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from distill.evaluate.metrics import (
    agreement_metrics,
    classification_metrics,
    comparison_metrics,
    fallback_curve,
    latency_stats,
    reliability,
)

CLASSES = ["active", "idle", "error", "offline"]
# Eight frames; worked out by hand below.
TRUTH = ["active", "active", "idle", "idle", "error", "error", "offline", "offline"]
TEACHER = ["active", "active", "idle", "error", "error", "error", "offline", "offline"]
STUDENT = ["active", "idle", "idle", "error", "error", "active", "offline", "offline"]
CONF = np.array([0.95, 0.55, 0.85, 0.62, 0.91, 0.45, 0.99, 0.75])


def _probs(labels: list[str], conf: np.ndarray) -> np.ndarray:
    """(N, K) probabilities with `conf` on the given label and the rest spread evenly."""
    probs = np.tile(((1 - conf) / 3)[:, None], (1, len(CLASSES)))
    for i, label in enumerate(labels):
        probs[i, CLASSES.index(label)] = conf[i]
    return probs


def test_classification_metrics_match_sklearn_and_hand_values():
    m = classification_metrics(TRUTH, STUDENT, CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy_score(TRUTH, STUDENT)) == pytest.approx(5 / 8)
    assert m["macro_f1"] == pytest.approx(f1_score(TRUTH, STUDENT, average="macro"))
    # by hand: active P=1/2 R=1/2; idle P=1/2 R=1/2; error P=1/2 R=1/2; offline P=1 R=1
    assert m["macro_f1"] == pytest.approx((0.5 + 0.5 + 0.5 + 1.0) / 4)
    assert m["confusion"] == confusion_matrix(TRUTH, STUDENT, labels=CLASSES).tolist()
    assert m["confusion"][0] == [1, 1, 0, 0]  # one active frame called idle
    assert m["per_class"]["offline"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}


def test_macro_f1_averages_over_every_task_class():
    """A class the truth never shows and no model predicts scores 0: the mean is over the task's classes."""
    m = classification_metrics(["a", "a", "b"], ["a", "b", "b"], ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert m["macro_f1"] == pytest.approx(f1_score(["a", "a", "b"], ["a", "b", "b"], labels=["a", "b", "c"],
                                                   average="macro", zero_division=0))  # fmt: skip
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.parametrize(
    "truth, pred",
    [
        ([0, 1, 2, 1, 1, 3, 3, 0], [0, 1, 2, 2, 1, 3, 0, 0]),  # every class in the truth
        ([0, 0, 1, 1, 1, 0], [0, 1, 1, 2, 1, 0]),  # classes 2 and 3 absent from the truth, 2 predicted once
        ([2, 2, 2], [2, 2, 2]),  # one class only
    ],
    ids=["all-present", "absent-from-truth", "one-class"],
)
def test_train_and_compare_macro_f1_agree(truth, pred):
    """Training's metrics.json (indices, student vs teacher) and compare's (names) give the same figures."""
    from distill.train.metrics import student_metrics

    classes = ["a", "b", "c", "d"]
    probs = np.eye(len(classes), dtype=np.float32)[pred]  # (N, K) the student's one-hot predictions
    train = student_metrics(probs, np.array(truth), np.array(truth), classes)
    compare = classification_metrics([classes[i] for i in truth], [classes[i] for i in pred], classes)
    assert train["macro_f1"] == compare["macro_f1"]
    assert train["per_class"] == compare["per_class"]
    assert set(train["per_class"]["a"]) == {"precision", "recall", "f1", "support"}


def test_agreement_overall_and_per_teacher_class():
    a = agreement_metrics(TEACHER, STUDENT, CLASSES)
    assert a["agreement"] == pytest.approx(accuracy_score(TEACHER, STUDENT)) == pytest.approx(6 / 8)
    # teacher says active twice (student agrees once), idle once (agrees), error three times (agrees twice)
    assert a["per_class_agreement"] == pytest.approx({"active": 0.5, "idle": 1.0, "error": 2 / 3, "offline": 1.0})
    assert a["confusion"] == confusion_matrix(TEACHER, STUDENT, labels=CLASSES).tolist()


def test_agreement_leaves_absent_class_undefined_not_zero():
    a = agreement_metrics(["a", "a"], ["a", "a"], ["a", "b"])
    assert a["per_class_agreement"] == {"a": 1.0, "b": None}
    assert a["kappa"] is None  # undefined with one label on both sides


def test_ece_hand_computed_and_bins_match_sklearn_calibration_curve():
    correct = np.array(STUDENT) == np.array(TRUTH)  # T F T F T F T T
    rel = reliability(CONF, correct, n_bins=5)
    # bins (lo, hi]: 0.45->(0.4,0.6] wrong, 0.55 same bin wrong; 0.62,0.75 ->(0.6,0.8]: F,T;
    # 0.85,0.91,0.95,0.99 ->(0.8,1]: all right
    assert rel.counts.tolist() == [0, 0, 2, 2, 4]
    hand = (2 * abs(0 - 0.5) + 2 * abs(0.5 - 0.685) + 4 * abs(1 - 0.925)) / 8
    assert rel.ece == pytest.approx(hand)
    prob_true, prob_pred = calibration_curve(correct, CONF, n_bins=5)
    nonempty = rel.counts > 0
    np.testing.assert_allclose(rel.accuracy[nonempty], prob_true)
    np.testing.assert_allclose(rel.confidence[nonempty], prob_pred)


def test_ece_is_zero_when_confidence_equals_accuracy():
    rel = reliability(np.full(4, 0.75), np.array([1, 1, 1, 0]), n_bins=10)
    assert rel.ece == pytest.approx(0.0)


def test_fallback_curve_by_hand():
    curve = fallback_curve(STUDENT, CONF, TEACHER, TRUTH, thresholds=np.array([0.0, 0.5, 0.6, 0.7, 1.0]))
    # below 0.5: frame 5 (0.45) -> teacher 'error' (agrees now); below 0.6 also frame 1 (0.55) -> 'active'
    np.testing.assert_allclose(curve.teacher_share, [0, 1 / 8, 2 / 8, 3 / 8, 1.0])
    np.testing.assert_allclose(curve.agreement, [6 / 8, 7 / 8, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(curve.accuracy, [5 / 8, 6 / 8, 7 / 8, 7 / 8, 7 / 8])  # teacher wrong on frame 3 only
    assert curve.recommended["threshold"] == 0.6 and curve.recommended["reached"]
    assert curve.recommended["criterion"] == "accuracy" and curve.recommended["target"] == pytest.approx(0.87)
    assert curve.by_agreement["threshold"] == 0.6
    assert curve.recommended["teacher_share"] == pytest.approx(0.25)


def test_fallback_recommends_never_asking_when_student_already_agrees():
    curve = fallback_curve(TEACHER, CONF, TEACHER)
    assert curve.recommended == {
        "threshold": 0.0, "teacher_share": 0.0, "agreement": 1.0, "accuracy": None, "criterion": "agreement",
        "target": 0.98, "reached": True,
    }  # fmt: skip


def test_with_ground_truth_the_recommendation_follows_accuracy_not_agreement():
    # the student is right everywhere; the teacher is wrong on the two frames the student is least sure of
    truth = ["a", "a", "b", "b"]
    teacher = ["b", "a", "a", "b"]
    conf = np.array([0.55, 0.9, 0.6, 0.95])
    curve = fallback_curve(truth, conf, teacher, truth, thresholds=np.array([0.0, 0.58, 0.7, 1.0]))
    assert curve.recommended["criterion"] == "accuracy" and curve.recommended["threshold"] == 0.0
    assert curve.recommended["accuracy"] == 1.0
    assert curve.by_agreement["criterion"] == "agreement" and curve.by_agreement["threshold"] == 0.7
    assert curve.to_dict()["by_agreement"]["teacher_share"] == 0.5


def test_fallback_reports_unreached_target():
    curve = fallback_curve(["a", "b"], np.array([0.9, 0.9]), ["a", "a"], thresholds=np.array([0.0, 0.5]))
    assert not curve.recommended["reached"]
    assert curve.recommended["agreement"] == 0.5


@pytest.mark.parametrize(
    ("student", "conf", "teacher"),
    [([], np.array([]), []), (["a"], np.array([0.5, 0.5]), ["a"]), (["a", "b"], np.array([0.5, 0.5]), ["a"])],
)
def test_fallback_rejects_mismatched_inputs(student, conf, teacher):
    with pytest.raises(ValueError):
        fallback_curve(student, conf, teacher)


def test_latency_stats():
    stats = latency_stats([0.010, 0.020, 0.030, 0.040], frames_per_call=8)
    assert stats["latency_ms_p50"] == pytest.approx(25.0)
    assert stats["throughput_fps"] == pytest.approx(32 / 0.1)


def test_comparison_metrics_shape_and_consistency():
    m = comparison_metrics(CLASSES, TEACHER, STUDENT, _probs(STUDENT, CONF), TRUTH, np.ones(8))
    assert m["student"]["accuracy"] == pytest.approx(5 / 8)
    assert m["teacher"]["accuracy"] == pytest.approx(accuracy_score(TRUTH, TEACHER))
    assert m["agreement"] == pytest.approx(6 / 8)
    assert m["calibrated_against"] == "ground truth"
    assert m["student"]["ece"] == pytest.approx(reliability(CONF, np.array(STUDENT) == np.array(TRUTH)).ece)
    # a teacher always 100% sure: its ECE is its error rate
    assert m["teacher"]["ece"] == pytest.approx(1 - m["teacher"]["accuracy"])
    assert m["fallback"]["accuracy"][0] == pytest.approx(m["student"]["accuracy"])


def test_comparison_metrics_without_truth_calibrates_against_teacher():
    m = comparison_metrics(CLASSES, TEACHER, STUDENT, _probs(STUDENT, CONF))
    assert "accuracy" not in m["student"] and m["calibrated_against"] == "teacher"
    assert m["student"]["ece"] == pytest.approx(reliability(CONF, np.array(STUDENT) == np.array(TEACHER)).ece)
    assert m["fallback"]["accuracy"] is None
