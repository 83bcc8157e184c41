"""Training data: reading label sets, splits, the label audit, the frame cache, balancing, loss, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _labelsets import CLASSES, write_label_set

from distill.dataset import LabelSetWriter
from distill.errors import DatasetError
from distill.train.audit import audit_labels
from distill.train.augment import AugmentConfig, augment, mixup
from distill.train.cache import build_cache, decode_squash
from distill.train.data import DROPPED, TRAIN, VAL, load_rows, make_splits
from distill.train.meta import HeldOutSplit, held_out_mask
from distill.train.module import soft_cross_entropy
from distill.train.run import make_loaders


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    return write_label_set(tmp_path_factory.mktemp("labels") / "set", videos=6, frames_per_class=6, unmatched=2)


def test_rows_drop_nothing_but_mark_unmatched(labels):
    rows = load_rows(labels)
    assert rows.classes == CLASSES
    assert (rows.label == -1).sum() == 6 * 2  # `unmatched` per video
    assert np.allclose(rows.probs[rows.label >= 0].sum(axis=1), 1.0)
    assert rows.has_probs[rows.label >= 0].all() and not rows.has_probs[rows.label < 0].any()


def test_split_by_video_keeps_videos_apart_and_extras_in_training(labels, tmp_path):
    extra = write_label_set(tmp_path / "extra", videos=2, frames_per_class=2, prefix="hard", seed=5)
    rows = load_rows(labels, [extra])
    split, info = make_splits(rows, 0.34, seed=3)
    train_videos = set(rows.video[(split == TRAIN) & (rows.set_index == 0)])
    val_videos = set(rows.video[split == VAL])
    assert train_videos and val_videos and not train_videos & val_videos
    assert (split[rows.label < 0] == DROPPED).all()
    assert (split[rows.set_index == 1][rows.label[rows.set_index == 1] >= 0] == TRAIN).all()
    assert info["counts"]["train"]["extra_frames"] == int(((rows.set_index == 1) & (rows.label >= 0)).sum())
    assert sorted(info["videos"]["val"]) == sorted(val_videos)
    again, _ = make_splits(load_rows(labels, [extra]), 0.34, seed=3)
    assert (again == split).all()  # fixed seed: same split
    held = info["held_out"]  # what the student records: the val videos, as data
    assert held == HeldOutSplit("by-video", tuple(sorted(val_videos)), val_fraction=0.34, seed=3)
    main = rows.set_index == 0
    val_rows = rows.row[main & (split == VAL)]
    assert np.array_equal(np.flatnonzero(held_out_mask(held, labels) & (rows.label[main] >= 0)), val_rows)


def test_single_video_splits_by_time_blocks_with_a_gap(tmp_path):
    rows = load_rows(write_label_set(tmp_path / "one", videos=1, frames_per_class=30, unmatched=0))
    split, info = make_splits(rows, 0.2, seed=0)
    assert info["mode"] == "time-blocks" and info["gap_frames_dropped"] > 0
    t_train, t_val = rows.timestamp[split == TRAIN], rows.timestamp[split == VAL]
    assert len(t_train) > len(t_val) > 0
    closest = np.abs(t_train[:, None] - t_val[None, :]).min()
    assert closest >= info["gap_s"] >= 2.0  # frames are 1 s apart: neighbours never straddle the split
    held = info["held_out"]
    assert (
        held.mode == "time-blocks" and held.val_videos == ("cam0.mp4",) and list(held.val_blocks) == info["val_blocks"]
    )
    assert len(held.edges) == info["blocks"] + 1
    mask = held_out_mask(held, tmp_path / "one")  # every held-out row is a VAL row and the other way round
    assert np.array_equal(np.flatnonzero(mask), rows.row[split == VAL])


def test_audit_reports_flicker_confidence_and_sparse_classes(tmp_path):
    noisy = write_label_set(
        tmp_path / "noisy", videos=3, frames_per_class=12, flip=0.25, class_weights=[1, 1, 1, 0.1], seed=1
    )
    report = audit_labels(load_rows(noisy))
    assert sum(report["classes"].values()) == report["labelled"] and report["unmatched"] == 6
    assert report["flicker"]["changes"] > 3 * (len(CLASSES) - 1)  # far more than the real class changes
    assert report["flicker"]["blips"] > 0
    assert 0 < report["low_confidence"]["share"] < 1
    assert any("'maintenance'" in w and "frame" in w for w in report["warnings"])
    clean = audit_labels(load_rows(write_label_set(tmp_path / "clean", videos=3, frames_per_class=12, flip=0.0)))
    assert clean["flicker"]["changes"] == 3 * (len(CLASSES) - 1) and clean["flicker"]["blips"] == 0
    assert clean["warnings"] == [] or all("frame(s)" in w for w in clean["warnings"])


@pytest.mark.parametrize(
    "classes, rows, message",
    [
        (["a"], [("v", "a")], "needs two or more"),
        (["a", "b"], [], "no frames"),
        (["a", "b"], [("v", None), ("v", None)], "no labelled frames"),
        (["a", "b"], [("v", "a"), ("w", "a")], "only class 'a'"),
    ],
    ids=["one-class-set", "empty", "all-unmatched", "one-class-present"],
)
def test_unusable_label_sets(tmp_path, classes, rows, message):
    with LabelSetWriter(tmp_path / "s", classes=classes, teacher={"backend": "t"}) as writer:
        for i, (video, label) in enumerate(rows):
            writer.add({"video": video, "frame_index": i, "timestamp_s": float(i), "image": b"", "label": label,
                        "probs": None, "confidence": None, "teacher": "t", "raw": None})  # fmt: skip
    with pytest.raises(DatasetError, match=message):
        load_rows(tmp_path / "s")


def test_extra_sets_must_have_the_same_classes(labels, tmp_path):
    other = write_label_set(tmp_path / "other", videos=1, frames_per_class=2, classes=["x", "y"])
    with pytest.raises(DatasetError, match="same classes"):
        load_rows(labels, [other])


def test_cache_squashes_whole_frames(labels):
    rows = load_rows(labels)
    pick = np.flatnonzero(rows.label >= 0)[:5]
    cache = build_cache(rows.sources, rows.set_index[pick], rows.row[pick], 20)
    assert cache.shape == (5, 20, 20, 3) and cache.dtype == np.uint8
    import pyarrow.parquet as pq

    first = pq.read_table(rows.sources[0] / "shard-00000.parquet", columns=["image"]).column("image")
    assert np.array_equal(cache[0], decode_squash(first[int(rows.row[pick[0]])].as_py(), 20))
    memmapped = build_cache(
        rows.sources, rows.set_index[pick], rows.row[pick], 20, memmap_path=labels.parent / "c.npy", memory_limit=0
    )
    assert isinstance(memmapped, np.memmap) and np.array_equal(memmapped, cache)


def test_skewed_sets_are_sampled_evenly(tmp_path):
    rows = load_rows(
        write_label_set(tmp_path / "skew", videos=4, frames_per_class=24, class_weights=[1, 0.2, 0.2, 0.2])
    )
    split, _ = make_splits(rows, 0.25, seed=0)
    train_loader, val_loader, balanced = make_loaders(rows, split, 32, 16, None)
    assert balanced
    seen = np.concatenate([batch[2].numpy() for _ in range(5) for batch in train_loader])
    raw = np.bincount(rows.label[split == TRAIN], minlength=4) / (split == TRAIN).sum()
    drawn = np.bincount(seen, minlength=4) / len(seen)
    assert raw[0] > 0.5 and drawn[0] < 0.4  # the big class no longer dominates
    images, targets, labels_, top = next(iter(val_loader))
    assert images.shape[1:] == (32, 32, 3) and images.dtype == torch.uint8 and targets.shape[1] == 4
    _, _, balanced_even = make_loaders(load_rows(tmp_path / "skew"), split, 32, 16, None, balance=False)
    assert not balanced_even


def test_soft_cross_entropy():
    logits = torch.randn(6, 4)
    hard = torch.randint(0, 4, (6,))
    one_hot = torch.nn.functional.one_hot(hard, 4).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), torch.nn.functional.cross_entropy(logits, hard))
    target = torch.softmax(torch.randn(6, 4), 1)
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(logits / 2, 1), torch.softmax(torch.log(target) / 2, 1), reduction="batchmean"
    )
    entropy = -(torch.softmax(torch.log(target) / 2, 1) * torch.log_softmax(torch.log(target) / 2, 1)).sum(1).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, target, 2.0), (kl + entropy) * 4)


def test_augment_and_mixup_shapes_and_ranges():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 40, 40)
    out = augment(x, 32, AugmentConfig(blur_p=1.0))
    assert out.shape == (8, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1][None].expand_as(out[:1])[0])  # each image gets its own transform
    targets = torch.eye(4)[torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])]
    mixed_x, mixed_t, lam = mixup(x.clone(), targets, 0.4)
    assert 0.5 <= lam <= 1 and torch.allclose(mixed_t.sum(1), torch.ones(8))
    torch.testing.assert_close(mixed_x[0], lam * x[0] + (1 - lam) * x[7])


def test_student_metrics_against_teacher_top_and_hard_labels():
    from distill.train.metrics import student_metrics

    probs = np.eye(3, dtype=np.float32)[[0, 1, 2, 2, 1]]  # student picks 0, 1, 2, 2, 1
    labels = np.array([0, 1, 2, 1, 1])  # teacher's hard labels
    tops = np.array([0, 1, 2, 2, 0])  # teacher's top class by its distribution
    m = student_metrics(probs, labels, tops, ["a", "b", "c"])
    assert m["agreement"] == 0.8 and m["accuracy"] == 0.8 and m["frames"] == 5
    assert m["confusion"]["matrix"] == [[1, 0, 0], [0, 2, 1], [0, 0, 1]]  # rows teacher, columns student
    assert m["per_class"]["b"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["macro_f1"] == pytest.approx((1.0 + 0.8 + 2 / 3) / 3)


def test_predict_runs_without_a_trainer(labels):
    from distill.train import build_meta, create_student
    from distill.train.metrics import predict
    from distill.train.module import StudentModule

    rows = load_rows(labels)
    split, _ = make_splits(rows, 0.34, seed=0)
    _, val_loader, _ = make_loaders(rows, split, 32, 8, None)
    meta = build_meta(CLASSES, "test_convnext", 32)
    probs, hard, top = predict(StudentModule(create_student(meta), meta), val_loader)
    assert probs.shape == ((split == VAL).sum(), 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (hard == rows.label[split == VAL]).all() and (top == rows.teacher_top[split == VAL]).all()
