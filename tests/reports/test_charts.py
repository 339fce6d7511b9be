"""report PNGs for label sets and probabilities: F1 against support, the reliability diagram."""

from __future__ import annotations

import numpy as np
import pytest

from longdoc.reports.metrics import (
    MAX_CHARTED_LABELS,
    by_support,
    calibration,
    plot_label_f1,
    plot_reliability,
)

HOSTILE = ['say "hi"', "<script>alert(1)</script>", "$x^$", "שלום עולם", "zero\u200bwidth", "a" * 300]


def png_size(path):
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return image.shape[1], image.shape[0]


def test_labels_are_charted_most_frequent_first():
    support = np.array([3, 10, 0, 10, 1])
    f1 = np.array([0.5, 0.2, 0.0, 0.9, 1.0])
    assert by_support(support, f1).tolist() == [3, 1, 0, 4, 2]


def test_f1_chart_of_a_few_hostile_labels(tmp_path):
    n = len(HOSTILE)
    plot_label_f1(HOSTILE, np.linspace(0, 1, n), np.arange(n), tmp_path / "f1.png", "head on test")
    width, height = png_size(tmp_path / "f1.png")
    assert width > 500 and height > 300


@pytest.mark.parametrize("n_labels", [MAX_CHARTED_LABELS + 1, 10_000])
def test_f1_chart_of_many_labels_is_capped(tmp_path, n_labels):
    """Past MAX_CHARTED_LABELS the bars name the most frequent labels only: the picture stays
    as tall at 10,000 labels as at 61, while the scatter still shows every label."""
    rng = np.random.default_rng(0)
    support = rng.zipf(1.5, n_labels).clip(0, 10_000)
    names = [f"label {i}" for i in range(n_labels)]
    plot_label_f1(names, rng.random(n_labels), support, tmp_path / "f1.png", "many")
    capped = png_size(tmp_path / "f1.png")
    plot_label_f1(names[:MAX_CHARTED_LABELS], rng.random(MAX_CHARTED_LABELS), support[:MAX_CHARTED_LABELS],
                  tmp_path / "f1-cap.png", "at the cap")
    assert capped[1] == png_size(tmp_path / "f1-cap.png")[1]
    assert (tmp_path / "f1.png").stat().st_size < 1_000_000


def test_f1_chart_refuses_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError):
        plot_label_f1(["a", "b"], np.ones(3), np.ones(2), tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()


def test_reliability_diagram(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random(2000)
    plot_reliability(calibration(p, rng.random(2000) < p), tmp_path / "r.png", "$x^$ <b>")
    assert png_size(tmp_path / "r.png")[0] > 300
