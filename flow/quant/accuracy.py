"""The golden model against float: when the integer model loses more than a margin of accuracy, say why.

The input scale and every activation range come from the calibration set (flow.quant.calibrate), so the
usual causes are a calibration set too small to see the activations' range, or calibration images scaled
differently from the test images (the input scale then clips or wastes codes). numpy only.
"""
from __future__ import annotations

import numpy as np

MARGIN_POINTS = 2.0      # golden more than this many points below float is warned about
SMALL_CALIB = 64         # fewer calibration images than this is named as a likely cause


def _span(x: np.ndarray) -> str:
    return f"[{float(x.min()):.3g}, {float(x.max()):.3g}]"


def golden_drop_warning(float_acc: float, golden_acc: float, x_calib: np.ndarray, x_test: np.ndarray, *,
                        what: str = "the float model") -> str | None:
    """One line when ``golden_acc`` (0..1) is more than MARGIN_POINTS below ``float_acc`` (the float model
    ``what`` names), with the likely cause from the calibration images ``x_calib`` and the test images
    ``x_test`` (float, any shape); None within the margin."""
    ref, gold = 100 * float(float_acc), 100 * float(golden_acc)
    if ref - gold <= MARGIN_POINTS:
        return None
    causes = []
    if len(x_calib) < SMALL_CALIB:
        causes.append(f"the calibration set has only {len(x_calib)} image{'s' if len(x_calib) != 1 else ''} "
                      f"(calibrate on a few hundred training images, at least {SMALL_CALIB})")
    lo, hi, tlo, thi = float(x_calib.min()), float(x_calib.max()), float(x_test.min()), float(x_test.max())
    span, tspan = max(hi - lo, 1e-12), thi - tlo
    if tlo < lo - 0.05 * span or thi > hi + 0.05 * span or tspan < 0.25 * span:
        causes.append(f"the test images span {_span(x_test)} but the calibration images {_span(x_calib)} "
                      "(scale both the same way)")
    cause = "; ".join(causes) or ("the activation ranges seen in calibration: calibrate on more, or more "
                                  "representative, training images")
    return (f"golden integer accuracy {gold:.2f} % is {ref - gold:.2f} points below {what} ({ref:.2f} %; margin "
            f"{MARGIN_POINTS:g} points): likely cause: {cause}")
