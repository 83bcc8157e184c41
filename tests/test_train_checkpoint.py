"""The student checkpoint contract: StudentMeta, save/load round trip, one-line errors, timm name checks."""

from __future__ import annotations

import pytest
import torch

from distill.errors import TrainError
from distill.train import (
    HeldOutSplit,
    StudentMeta,
    build_meta,
    create_student,
    load_student,
    preprocessing,
    read_meta,
    save_student,
)
from distill.train._models import check_input_size, check_min_size, check_model_name


def test_meta_carries_preprocessing_from_timm():
    meta = build_meta(["off", "on", "error"], "test_convnext", 48, teacher={"backend": "x"}, label_set={"frames": 3})
    from timm.data import resolve_data_config

    expected = resolve_data_config({}, model=create_student(meta))
    assert meta.mean == pytest.approx(expected["mean"]) and meta.std == pytest.approx(expected["std"])
    assert (meta.image_size, meta.resize, meta.interpolation, meta.channel_order) == (48, "squash", "bilinear", "RGB")
    assert preprocessing("test_convnext", 48)["mean"] == meta.mean
    assert meta.teacher == {"backend": "x"} and meta.metrics == {} and meta.split is None
    assert meta.class_texts == meta.classes  # no texts given: the names are what the teacher was asked


def test_save_load_round_trip(tmp_path):
    split = HeldOutSplit("time-blocks", ("a.mp4",), (0.0, 5.0, 10.0), (1,), val_fraction=0.2, seed=3)
    meta = build_meta(["a", "b", "c"], "test_convnext", 32, class_texts=("ay", "bee", "sea"), split=split)
    model = create_student(meta).eval()
    path = save_student(model, meta, tmp_path / "s.ckpt")
    loaded, loaded_meta = load_student(path)
    x = torch.randn(2, 3, 32, 32)
    assert not loaded.training
    assert loaded_meta == meta == read_meta(path)
    assert isinstance(loaded_meta, StudentMeta) and loaded_meta.split == split
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded(x).shape == (2, 3)


def test_fixed_size_models_are_built_for_the_image_size():
    meta = build_meta(["a", "b"], "test_vit", 48)
    assert create_student(meta)(torch.zeros(1, 3, 48, 48)).shape == (1, 2)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not a checkpoint"), "cannot read checkpoint"),
        (lambda p: torch.save({"state_dict": {}}, p), "not a distill student checkpoint"),
        (lambda p: torch.save({"state_dict": {}, "distill": {"classes": ["a", "b"]}}, p), "lacks model"),
    ],
    ids=["missing", "garbage", "no-meta", "partial-meta"],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, setup, message):
    path = tmp_path / "x.ckpt"
    setup(path)
    with pytest.raises(TrainError, match=message) as info:
        load_student(path)
    assert "\n" not in str(info.value)


def test_weights_that_do_not_match_the_model(tmp_path):
    meta = build_meta(["a", "b"], "test_convnext", 32)
    path = save_student(create_student(build_meta(["a", "b", "c"], "test_convnext", 32)), meta, tmp_path / "s.ckpt")
    with pytest.raises(TrainError, match="does not match"):
        load_student(path)


def test_model_names_and_sizes():
    assert check_model_name("test_convnext") == "test_convnext"
    with pytest.raises(TrainError, match="mobilenetv3_small_100"):
        check_model_name("mobilenetv3_smal_100")
    with pytest.raises(TrainError, match="too small for halonet26t"):
        check_min_size("halonet26t", 32)
    meta = build_meta(["a", "b"], "test_coatnet", 40)
    with pytest.raises(TrainError, match="does not fit test_coatnet.*--image-size"):
        check_input_size(create_student(meta), "test_coatnet", 40)
