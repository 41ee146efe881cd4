"""Exact optima the tests compute (Newton with the full Hessian, float64)."""

from __future__ import annotations

import numpy as np


def exact_optimum(X, codes, K, l2, sw=None, fit_intercept=True):
    """The objective's minimizer by Newton's method with the full Hessian (float64, to ||g|| ~ 1e-14).

    f = sum_i s_i l_i / sum_i s_i + l2 ||W||^2 for K = 2 (one coefficient row) or K > 2 (softmax)."""
    n, _d = X.shape
    sw = np.ones(n) if sw is None else np.asarray(sw, float)
    S = sw.sum()
    k = 1 if K == 2 else K
    Xa = np.hstack([X, np.ones((n, 1))]) if fit_intercept else X
    p = Xa.shape[1]
    theta = np.zeros(k * p)
    pen = np.ones(p)
    if fit_intercept:
        pen[-1] = 0.0
    Y = np.eye(K)[codes]
    for _ in range(100):
        W = theta.reshape(k, p)
        Z = Xa @ W.T
        if K == 2:
            P = 1 / (1 + np.exp(-Z[:, 0]))
            g = Xa.T @ (sw * (P - codes)) / S + 2 * l2 * pen * W[0]
            H = (Xa * (sw * P * (1 - P))[:, None]).T @ Xa / S + 2 * l2 * np.diag(pen)
        else:
            Z -= Z.max(1, keepdims=True)
            P = np.exp(Z)
            P /= P.sum(1, keepdims=True)
            g = (((P - Y) * sw[:, None]).T @ Xa / S + 2 * l2 * pen * W).ravel()
            H = np.zeros((k * p, k * p))
            for a in range(K):
                for b in range(K):
                    c = sw * P[:, a] * ((a == b) - P[:, b])
                    H[a * p:(a + 1) * p, b * p:(b + 1) * p] = (Xa * c[:, None]).T @ Xa / S
            H += 2 * l2 * np.diag(np.tile(pen, K))
        step = np.linalg.lstsq(H, g, rcond=None)[0]
        theta -= step
        if np.linalg.norm(g) < 1e-14:
            break
    W = theta.reshape(k, p)
    coef, b = (W[:, :-1], W[:, -1]) if fit_intercept else (W, np.zeros(k))
    if K > 2:
        b = b - b.mean()
    return coef, b
