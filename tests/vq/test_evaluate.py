"""Reconstruction metrics on hand-made arrays with known answers."""

import math

import numpy as np
import pytest

from open4m.vq.evaluate import (
    depth_abs_rel,
    edge_f1_iou,
    evaluate_tokenizer,
    mean_iou,
    normal_angle_deg,
    psnr,
    reconstruction_metrics,
)
from open4m.vq.samples import synthetic_sample
from open4m.vq.tokenizer import ImageTokenizer
from vq_helpers import tiny_config


def test_psnr_of_a_known_error():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a + np.uint8(10)  # MSE 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(a, a) == math.inf


def test_depth_abs_rel_ignores_sky():
    true = np.array([[2.0, 4.0, 0.0]], np.float32)
    pred = np.array([[2.2, 3.0, 99.0]], np.float32)
    assert depth_abs_rel(true, pred) == pytest.approx((0.1 + 0.25) / 2)


def test_normal_angle_in_degrees_over_valid_pixels():
    true = np.array([[[0, 0, 1], [0, 1, 0], [0, 0, 0]]], np.float32)
    pred = np.array([[[0, 0, 1], [1, 0, 0], [1, 0, 0]]], np.float32)
    assert normal_angle_deg(true, pred) == pytest.approx(45.0)  # (0 + 90) / 2; sky ignored
    assert normal_angle_deg(true[:, :1], np.zeros_like(true[:, :1])) == pytest.approx(90.0)  # zero prediction


def test_mean_iou_over_present_classes():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 2])
    # class 0: 1/2, class 1: 2/3, class 2: 1; class 3 absent from both
    assert mean_iou(true, pred, num_classes=4) == pytest.approx((0.5 + 2 / 3 + 1) / 3)


def test_edge_f1_and_iou():
    true = np.array([255, 255, 0, 0], np.uint8)
    pred = np.array([255, 0, 255, 0], np.uint8)
    f1, iou = edge_f1_iou(true, pred)
    assert f1 == pytest.approx(0.5) and iou == pytest.approx(1 / 3)
    assert edge_f1_iou(np.zeros(3), np.zeros(3)) == (1.0, 1.0)


def test_perfect_reconstruction_scores_perfectly():
    s = synthetic_sample(0, image_size=16)
    assert reconstruction_metrics("depth", s["depth"], s["depth"]) == {"abs_rel": 0.0, "valid_mask_acc": 1.0}
    assert reconstruction_metrics("normal", s["normal"], s["normal"])["angle_deg"] == pytest.approx(0.0, abs=0.05)
    assert reconstruction_metrics("semseg", s["semseg"], s["semseg"]) == {"miou": 1.0, "pixel_acc": 1.0}
    with pytest.raises(ValueError, match="no reconstruction metrics for modality 'sound'"):
        reconstruction_metrics("sound", s["rgb"], s["rgb"])


def test_evaluate_tokenizer_reports_metrics_and_codebook_usage():
    tok = ImageTokenizer(tiny_config("semseg"))
    samples = [synthetic_sample(i, image_size=16) for i in range(5)]
    out = evaluate_tokenizer(tok, iter(samples), num_samples=4)
    tokens = tok.encode(np.stack([s["semseg"] for s in samples[:4]]))
    assert out["num_samples"] == 4 and out["modality"] == "tok_semseg@16"
    assert out["codebook_usage"] == pytest.approx(len(np.unique(tokens)) / 64)
    assert 0.0 <= out["miou"] <= 1.0
    with pytest.raises(ValueError, match="no samples to evaluate"):
        evaluate_tokenizer(tok, [], 10)
