"""Every rejection case of the contract, at every public door, for every backend."""

from __future__ import annotations

import numpy as np
import pytest

import backends

M = np.array([1.0, 2.0, 3.0])
X = np.arange(9.0).reshape(3, 3)

BAD = [
    # (masses, positions, G, softening, exception, message fragment)
    (M[:, None], X, 1.0, 0.0, ValueError, r"masses must have shape \(N,\); got shape \(3, 1\)"),
    (1.0, X, 1.0, 0.0, ValueError, r"masses must have shape \(N,\); got shape \(\)"),
    (M, X[:, :2], 1.0, 0.0, ValueError, r"positions must have shape \(N, 3\); got shape \(3, 2\)"),
    (M, X.ravel(), 1.0, 0.0, ValueError, r"positions must have shape \(N, 3\); got shape \(9,\)"),
    (M, X[None], 1.0, 0.0, ValueError, r"positions must have shape \(N, 3\)"),
    (M[:2], X, 1.0, 0.0, ValueError, r"same length N; got 2 masses and 3 positions"),
    (M.astype(complex), X, 1.0, 0.0, TypeError, r"masses must hold real numbers.*complex"),
    (M, X.astype(complex), 1.0, 0.0, TypeError, r"positions must hold real numbers"),
    (M.astype(object), X, 1.0, 0.0, TypeError, r"masses must hold real numbers.*object"),
    (["a", "b", "c"], X, 1.0, 0.0, TypeError, r"masses must hold real numbers"),
    ([1.0, None, 2.0], X, 1.0, 0.0, TypeError, r"masses must hold real numbers"),
    (M > 1, X, 1.0, 0.0, TypeError, r"masses must hold real numbers.*bool"),
    ([1.0, [2.0], 3.0], X, 1.0, 0.0, TypeError, r"masses must be a real array_like"),
    ([1.0, np.nan, 2.0], X, 1.0, 0.0, ValueError, r"masses must be finite; got nan at index \[1\]"),
    (M, np.where(X == 5, np.inf, X), 1.0, 0.0, ValueError, r"positions must be finite.*\[1, 2\]"),
    (M, np.where(X == 0, -np.inf, X), 1.0, 0.0, ValueError, r"positions must be finite"),
    (M, X, np.nan, 0.0, ValueError, r"G must be finite; got nan"),
    (M, X, np.inf, 0.0, ValueError, r"G must be finite; got inf"),
    (M, X, "1.0", 0.0, TypeError, r"G must hold real numbers"),
    (M, X, 1j, 0.0, TypeError, r"G must hold real numbers"),
    (M, X, [1.0], 0.0, TypeError, r"G must be a real scalar; got an array of shape \(1,\)"),
    (M, X, None, 0.0, TypeError, r"G must hold real numbers"),
    (M, X, 1.0, -0.1, ValueError, r"softening must be >= 0; got -0.1"),
    (M, X, 1.0, np.nan, ValueError, r"softening must be finite; got nan"),
    (M, X, 1.0, np.inf, ValueError, r"softening must be finite; got inf"),
    (M, X, 1.0, "0", TypeError, r"softening must hold real numbers"),
]


@pytest.mark.parametrize(("m", "x", "G", "eps", "exc", "msg"), BAD)
def test_rejects_bad_input(backend_name, m, x, G, eps, exc, msg):
    with pytest.raises(exc, match=msg):
        backends.get(backend_name).accel(m, x, G, softening=eps)
    with pytest.raises(exc, match=msg):
        backends.accel(m, x, G, softening=eps, backend=backend_name)


def test_rejection_leaves_input_untouched(backend):
    x = np.where(X == 5, np.nan, X)
    x0 = x.copy()
    with pytest.raises(ValueError):
        backend.accel(M, x)
    np.testing.assert_array_equal(x, x0)
