"""Whether trained weights predict this world: the judge of a settling learner.

A learner that starts from trained weights with a new optimizer *settles*: it steps at a fraction
of its scheduled rate at first (``LearnerConfig.settle_lr_factor``,
:meth:`~ray_app.learn.exploration.BoostSchedule.settle`). That is right for weights learned in
this world and wrong for weights learned in another one, which the learner drops for the
cold-start weights (as after a drift; with none to go back to, they relearn at the full rate). So
the first new rewards are predicted by the weights before they are trained on (progressive
validation), and the weights settle on only if their logits carry information about them.

**The statistic.** The logit ``z_i`` of each reward's logged action is recalibrated by a
weighted logistic fit ``sigmoid(a * z_i + b)`` (Platt scaling, two parameters), and its log loss
compared with the best constant prediction's (the weighted share of 1s)::

    information = 1 - loss(recalibrated) / loss(constant)

The recalibration makes the test about what the logits *rank*, not how they are scaled: an
early model is overconfident (its raw log loss is worse than a constant's although it knows
which steps suit whom), and so is a model whose base rate was another world's. Weights learned
elsewhere rank this world's rewards little better than chance; a fit whose slope ``a`` is not
positive (the logits rank the rewards the wrong way round) counts as no information.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=2_000); w = np.ones(2_000)
>>> y_fit = (rng.random(2_000) < 1 / (1 + np.exp(-3 * z))).astype(float)   # z ranks them
>>> y_not = (rng.random(2_000) < 0.6).astype(float)                        # z knows nothing
>>> round(information(z, y_fit, w), 2), round(information(z, y_not, w), 3)
(0.51, 0.0)
>>> information(-z, y_fit, w)                                              # the wrong way round
0.0
>>> information(np.zeros(4), np.array([1.0, 0, 1, 0]), np.full(4, 1e6))   # logits all alike
0.0
>>> information(np.array([np.nan, 1.0]), np.array([1.0, 0.0]), np.ones(2))
0.0
>>> round(information(np.array([-5.0, 5.0]), np.array([0.0, 1.0]), np.ones(2)), 3)  # separable
1.0

"""

from __future__ import annotations

import numpy as np

__all__ = ["information"]


def information(z: np.ndarray, y: np.ndarray, w: np.ndarray, steps: int = 25) -> float:
    """``1 - loss(sigmoid(a z + b)) / loss(constant)`` for the weighted logistic fit ``(a, b)``
    (Newton's method) of rewards ``y`` (in [0, 1]) on logits ``z`` with row weights ``w`` (see
    the module docstring); 0 when the rewards are all alike, the fit's slope is not positive, or
    nothing can be fitted (logits all alike, not finite). Never raises for finite shapes: it
    runs in the learner's loop."""
    z = np.clip(np.asarray(z, dtype=np.float64), -30.0, 30.0)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    total = float(w.sum())
    if not (np.isfinite(z).all() and np.isfinite(w).all() and total > 0):
        return 0.0
    share = float((w * y).sum() / total)
    if not 0.0 < share < 1.0:
        return 0.0
    constant = -(share * np.log(share) + (1 - share) * np.log(1 - share))
    x = np.stack([z, np.ones_like(z)], axis=1)
    theta = np.array([0.0, np.log(share / (1 - share))])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for _ in range(steps):
            p = 1.0 / (1.0 + np.exp(-(x @ theta)))
            grad = x.T @ (w * (p - y))
            hess = (x * (w * p * (1 - p))[:, None]).T @ x
            hess += 1e-9 * (1.0 + np.trace(hess)) * np.eye(2)
            try:
                theta = theta - np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                return 0.0
        if not (np.isfinite(theta).all() and theta[0] > 0):
            return 0.0
        p = np.clip(1.0 / (1.0 + np.exp(-(x @ theta))), 1e-12, 1 - 1e-12)
        loss = float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / total)
    return float(1.0 - loss / constant)
