"""Metric functions against cases computed by hand."""

import math

import pytest

from locodiff.evaluate.metrics import (
    CountMetrics, EvalSummary, ImageMatch, SummaryOptions, count_metrics, default_tolerance_px, largest_k_above,
    match_locations, normalized_auc, ratio_interval, score_attributes, score_colors, summarize, wilson_interval,
)
from locodiff.errors import InputError

SIZE = (32, 32)


def px(*points):
    """Pixel coordinates -> Conditioning coordinates on a 32x32 image."""
    return [(x / 32, y / 32) for x, y in points]


def test_tolerance_scales_with_resolution():
    assert default_tolerance_px(32) == 3.0
    assert default_tolerance_px(64) == 6.0
    assert default_tolerance_px(16) == 1.5


def test_match_pairs_within_tolerance_and_measures_pixels():
    m = match_locations(px((10, 10), (20, 20)), px((21, 20), (10, 12)), SIZE, 3.0)
    assert sorted(m.pairs) == [(0, 1), (1, 0)]
    assert sorted(m.distances_px) == pytest.approx([1.0, 2.0])
    assert m.count_correct and m.all_placed and m.success


def test_match_rejects_pairs_beyond_tolerance():
    m = match_locations(px((10, 10)), px((14, 10)), SIZE, 3.0)  # 4 px away
    assert m.pairs == [] and m.n_detected == 1
    assert m.count_correct and not m.all_placed and not m.success


def test_match_maximises_number_of_matches_not_total_distance():
    # r0 sits on d1 (0 px) but then r1-d0 is 2.6 px, beyond the 2.5 px tolerance: plain
    # distance-Hungarian takes that (total 2.6 px, one match). r0-d0 and r1-d1 are 2.4 px each
    # (total 4.8 px) and match both.
    angle = math.acos(1 - 2.6**2 / (2 * 2.4**2))
    r1 = (10 + 2.4 * math.cos(angle), 10 + 2.4 * math.sin(angle))
    req = px((10, 10), r1)
    det = px((12.4, 10), (10, 10))
    m = match_locations(req, det, SIZE, 2.5)
    assert m.n_matched == 2
    assert sorted(m.pairs) == [(0, 0), (1, 1)]
    assert m.distances_px == pytest.approx([2.4, 2.4])


def test_match_uses_image_size_per_axis():
    # 0.1 of the width of a 64-wide image is 6.4 px; of a 32-high image 3.2 px.
    m = match_locations([(0.5, 0.5)], [(0.6, 0.5)], (32, 64), 6.0)
    assert m.n_matched == 0
    m = match_locations([(0.5, 0.5)], [(0.5, 0.6)], (32, 64), 6.0)
    assert m.n_matched == 1 and m.distances_px[0] == pytest.approx(3.2)


def test_match_empty_sides_and_bad_input():
    assert match_locations([], [], SIZE, 3).success
    m = match_locations([], px((5, 5)), SIZE, 3)
    assert m.all_placed and not m.count_correct and not m.success
    assert not match_locations(px((5, 5)), [], SIZE, 3).all_placed
    with pytest.raises(InputError, match="tolerance"):
        match_locations([], [], SIZE, 0)
    with pytest.raises(InputError, match="NaN"):
        match_locations([(float("nan"), 0.5)], [], SIZE, 3)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(InputError):
        wilson_interval(5, 4)


def test_count_metrics_hand_computed():
    # k = 2, three images: perfect; one missing and one extra far away; three detections (one extra).
    images = [
        match_locations(px((5, 5), (20, 20)), px((5, 6), (20, 20)), SIZE, 3),
        match_locations(px((5, 5), (20, 20)), px((5, 5), (30, 2)), SIZE, 3),
        match_locations(px((5, 5), (20, 20)), px((5, 5), (20, 21), (10, 28)), SIZE, 3),
    ]
    m = count_metrics(2, images)
    assert m.n_images == 3
    assert m.count == pytest.approx(2 / 3)  # images 1 and 2 have 2 detections
    assert m.placed == pytest.approx(2 / 3)  # images 1 and 3
    assert m.success == pytest.approx(1 / 3)  # image 1 only
    assert m.precision == pytest.approx(5 / 7)  # 5 matches of 7 detections
    assert m.recall == pytest.approx(5 / 6)  # 5 matches of 6 requested
    assert m.loc_error_px == pytest.approx((1 + 0 + 0 + 0 + 1) / 5)
    assert m.mean_detected == pytest.approx(7 / 3)
    assert m.count_error_hist == {0: 2, 1: 1}
    assert m.count_ci == pytest.approx(wilson_interval(2, 3))
    assert m.color_accuracy is None
    assert m.recall_ci[0] <= m.recall <= m.recall_ci[1] and m.precision_ci[0] <= m.precision <= m.precision_ci[1]
    assert CountMetrics.from_dict(m.to_dict()) == m  # intervals survive the eval.json round trip


def test_ratio_interval_resamples_images():
    # every image 3 of 4 matched: the ratio is 0.75 in every resample
    assert ratio_interval([3] * 10, [4] * 10) == pytest.approx((0.75, 0.75))
    assert ratio_interval([0, 0], [0, 0]) is None
    # half the images perfect, half empty: wide, symmetric about 0.5, deterministic
    lo, hi = ratio_interval([4] * 10 + [0] * 10, [4] * 20)
    assert lo < 0.35 and hi > 0.65 and lo == pytest.approx(1 - hi, abs=0.02)
    assert ratio_interval([4] * 10 + [0] * 10, [4] * 20) == (lo, hi)
    # more images, narrower interval
    lo2, hi2 = ratio_interval([4] * 100 + [0] * 100, [4] * 200)
    assert hi2 - lo2 < (hi - lo) / 2


def test_count_metrics_k0_and_errors():
    m = count_metrics(0, [match_locations([], [], SIZE, 3), match_locations([], px((4, 4)), SIZE, 3)])
    assert m.count == 0.5 and m.placed == 1.0 and m.success == 0.5
    assert m.recall is None and m.precision == 0.0 and m.loc_error_px is None
    assert m.recall_ci is None and m.precision_ci == (0.0, 0.0)
    assert m.count_error_hist == {0: 1, 1: 1}
    with pytest.raises(InputError, match="no images"):
        count_metrics(1, [])
    with pytest.raises(InputError, match="requested 0"):
        count_metrics(1, [match_locations([], [], SIZE, 3)])


def test_color_scoring_counts_matched_pairs_only():
    m = match_locations(px((5, 5), (20, 20), (28, 4)), px((5, 5), (20, 20)), SIZE, 3)
    score_colors(m, [1, 2, -1], [1, 3])
    assert (m.n_color_checked, m.n_color_correct) == (2, 1)
    assert count_metrics(3, [m]).color_accuracy == 0.5
    back = ImageMatch.from_dict(m.to_dict())
    assert back == m


def test_attribute_scoring_splits_seen_and_heldout_combinations():
    # requested (colour, shape): (1, 0) seen, (2, 1) held out, (3, 2) held out but not matched
    m = match_locations(px((5, 5), (20, 20), (28, 4)), px((20, 20), (5, 5)), SIZE, 3)
    score_attributes(m, [1, 2, 3], [0, 1, 2], detected_colors=[2, 1], detected_shapes=[0, 0],
                     heldout=[(1, 2), (2, 3)])
    # pair (0 -> det 1): colour 1 right, shape 0 right; pair (1 -> det 0): colour 2 right, shape 0 wrong
    assert (m.n_color_checked, m.n_color_correct) == (2, 2)
    assert (m.n_shape_checked, m.n_shape_correct) == (2, 1)
    assert (m.n_seen_checked, m.n_seen_correct) == (1, 1)
    assert (m.n_heldout_checked, m.n_heldout_correct) == (1, 0)
    cm = count_metrics(3, [m])
    assert (cm.color_accuracy, cm.shape_accuracy) == (1.0, 0.5)
    assert (cm.seen_combo_accuracy, cm.heldout_combo_accuracy) == (1.0, 0.0)
    assert (cm.seen_color_accuracy, cm.heldout_color_accuracy) == (1.0, 1.0)
    assert cm.attribute_counts["heldout_checked"] == 1
    assert ImageMatch.from_dict(m.to_dict()) == m
    assert CountMetrics.from_dict(cm.to_dict()) == cm
    # a detector without shapes: colours still scored, no shape or combination scores
    score_attributes(m, [1, 2, 3], [0, 1, 2], detected_colors=[2, 1], detected_shapes=None, heldout=[(1, 2)])
    assert (m.n_color_checked, m.n_shape_checked, m.n_seen_checked, m.n_heldout_checked) == (2, 0, 0, 0)


def test_largest_k_above():
    acc = {0: 1.0, 1: 0.9, 2: 0.8, 3: 0.6, 4: 0.4, 5: 0.55, 6: 0.1}
    assert largest_k_above(acc, 0.5) == 5  # not required to be contiguous
    assert largest_k_above(acc, 0.5, ks=[1, 2, 3]) == 3
    assert largest_k_above(acc, 0.95) == 0
    assert largest_k_above(acc, 0.5, ks=[4, 6]) is None


def test_normalized_auc():
    acc = {1: 1.0, 2: 0.5, 3: 0.0, 4: 1.0}
    # trapezoids over 1..3: (1 + 0.5)/2 + (0.5 + 0)/2 = 1.0, over a width of 2
    assert normalized_auc(acc, (1, 3)) == pytest.approx(0.5)
    assert normalized_auc(acc, (4, 10)) == 1.0  # a single evaluated k
    assert normalized_auc(acc, (5, 10)) is None
    assert normalized_auc({1: 1.0, 3: 1.0}, (1, 3)) == 1.0


def test_summarize_ranges_are_configurable():
    def metrics(k, acc):
        n = 10
        hits = round(acc * n)
        ms = [match_locations(px(*[(3 + 6 * i, 5) for i in range(k)]), px(*[(3 + 6 * i, 5) for i in range(k)]) if j < hits else [], SIZE, 3) for j in range(n)]
        return count_metrics(k, ms)

    per_k = {k: metrics(k, a) for k, a in {1: 1.0, 2: 1.0, 3: 0.8, 4: 0.6, 5: 0.2}.items()}
    s = summarize(per_k)
    assert s["success"].trained.largest_k == 3
    assert s["success"].extrapolation.largest_k == 4
    assert s["success"].trained.auc == pytest.approx((1.0 + 0.9) / 2)
    assert s["success"].extrapolation.auc == pytest.approx(0.4)
    assert EvalSummary.from_dict(s.to_dict()) == s  # eval.json round trip
    assert s.to_dict()["success_auc_extrapolation"] == pytest.approx(0.4)
    s = summarize(per_k, SummaryOptions(trained_range=(1, 2), extrapolation_range=(3, 5), threshold=0.7))
    assert s["success"].extrapolation.largest_k == 3
    assert s["success"].trained.auc == 1.0
    with pytest.raises(InputError):
        summarize(per_k, SummaryOptions(trained_range=(3, 1)))
    assert math.isclose(s["count"].trained.auc, 1.0)
