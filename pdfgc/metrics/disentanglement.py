"""Code-factor matrix: how much of each ground-truth factor a linear probe reads from each code.

Given per-frame motion codes (``lip`` (N,500|512), ``pose`` (N,6), ``eye`` (N,6),
``emotion`` (N,30)) and the SynthTalk ground truth of the same frames (``mouth`` (N,2)|(N,1),
``pose`` (N,6), ``gaze`` (N,4), ``blink`` (N,2), ``emotion`` (N,) int64 over 8 classes), fit one
linear probe per (code, factor) pair on some clips and score it on *other* clips:

- continuous factors: ridge regression on standardised codes (closed form, float64, the ridge
  strength picked by grouped cross-validation on the training clips), scored by R² on the held-out
  clips, clipped to [0, 1] per output dimension and averaged over the dimensions that vary;
- the categorical emotion factor: multinomial logistic regression (L-BFGS, L2), scored by
  accuracy. The matrix holds the chance-corrected score ``max(0, (acc - 1/C) / (1 - 1/C))``:
  raw accuracy never falls below about 1/C (0.125 for 8 classes) even for a code that carries no
  emotion at all, so raw accuracies would not share the R² scale (0 = nothing, 1 = everything)
  and an "off-diagonal <= 0.2" rule would be meaningless for that column. Raw accuracies are kept
  in :attr:`DisentanglementResult.emotion_accuracy`.

The probe is split by *group* (clip id), never by frame: neighbouring frames of one clip are
nearly identical, so a frame-level split would let the probe memorise clips and overstate how
much a code encodes (leakage).

Everything takes arrays/tensors, so it runs on codes from any model and on hand-built codes.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "DIAGONAL_PAIRS",
    "DEFAULT_THRESHOLDS",
    "CATEGORICAL_FACTORS",
    "STYLE_SLICES",
    "CheckResult",
    "DisentanglementResult",
    "DisentanglementMetric",
    "chance_corrected",
    "codes_from_style",
    "disentanglement_matrix",
    "group_ids",
    "probe_categorical",
    "probe_continuous",
    "r2_per_dim",
    "split_by_group",
]

# The pairs a disentangled model should light up: code -> the factor it is meant to carry.
DIAGONAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("lip", "mouth"),
    ("pose", "pose"),
    ("eye", "gaze"),
    ("eye", "blink"),
    ("emotion", "emotion"),
)

# Project targets. Keys ``"<code>/<factor>"`` are lower bounds on the diagonal;
# ``"off_diagonal"`` is the upper bound for every other pair. The emotion-emotion target is stated
# as an accuracy, so it is checked against the raw accuracy (see ``check``).
DEFAULT_THRESHOLDS: dict[str, float] = {
    "lip/mouth": 0.8,
    "pose/pose": 0.9,
    "eye/gaze": 0.8,
    "eye/blink": 0.8,
    "emotion/emotion": 0.8,
    "off_diagonal": 0.2,
}

CATEGORICAL_FACTORS: tuple[str, ...] = ("emotion",)

# Style vector layout from docs/design.md: [id 2048 | mouth 500 | emotion 30 | eye 6 | pose 6].
# Kept here as plain offsets so that the metrics do not import the networks.
STYLE_SLICES: dict[str, slice] = {
    "id": slice(0, 2048),
    "lip": slice(2048, 2548),
    "emotion": slice(2548, 2578),
    "eye": slice(2578, 2584),
    "pose": slice(2584, 2590),
}

DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
DEFAULT_LOGISTIC_L2: tuple[float, ...] = (1e-4, 1e-2, 1.0)


# --------------------------------------------------------------------------------------------
# small helpers


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t.to(dtype) if dtype is not None else t


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def codes_from_style(style: Any) -> dict[str, torch.Tensor]:
    """Split style vectors ``(N, 2590)`` into ``{"lip" (N,500), "emotion" (N,30), "eye" (N,6),
    "pose" (N,6)}`` (the identity part is left out: it is not a motion code)."""
    s = _as_tensor(style, torch.float32)
    if s.ndim != 2 or s.shape[1] != 2590:
        raise ValueError(f"style must be (N, 2590), got {tuple(s.shape)}")
    return {k: s[:, sl] for k, sl in STYLE_SLICES.items() if k != "id"}


def group_ids(names: Iterable[str]) -> torch.Tensor:
    """Stable int64 ids ``(N,)`` for clip names (CRC32), equal on every process and run, so that
    they can travel as tensors (e.g. through DDP gathers) instead of Python strings."""
    return torch.tensor([zlib.crc32(str(n).encode("utf-8")) for n in names], dtype=torch.int64)


def split_by_group(
    groups: Sequence[Any] | np.ndarray | torch.Tensor, test_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test split of sample indices by group.

    Args:
        groups: ``(N,)`` group id per sample (clip name or int).
        test_fraction: share of *groups* held out (at least one group on each side).
        seed: the permutation of groups depends only on this and the set of groups.

    Returns:
        ``(train_idx, test_idx)``, sorted int64 index arrays; no group appears in both.
    """
    g = np.asarray(groups.cpu().numpy() if isinstance(groups, torch.Tensor) else groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    uniq, inverse = np.unique(g.astype(str) if g.dtype.kind in "OU" else g, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError("need at least two groups (clips) to split train/test by group")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_test = min(len(uniq) - 1, max(1, int(round(test_fraction * len(uniq)))))
    is_test_group = np.zeros(len(uniq), dtype=bool)
    is_test_group[order[:n_test]] = True
    is_test = is_test_group[inverse]
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _group_folds(groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """k grouped folds (fewer when there are fewer groups) over the given group labels."""
    uniq, inverse = np.unique(groups, return_inverse=True)
    k = min(k, len(uniq))
    if k < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of_group = np.empty(len(uniq), dtype=np.int64)
    fold_of_group[order] = np.arange(len(uniq)) % k
    fold = fold_of_group[inverse]
    return [(np.flatnonzero(fold != i), np.flatnonzero(fold == i)) for i in range(k)]


def _standardise(x_train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    # Train statistics only; constant columns keep std 1 so they become all-zero, not NaN.
    mean = x_train.mean(0, keepdim=True)
    std = x_train.std(0, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return [(t - mean) / std for t in (x_train, *others)]


def r2_per_dim(pred: Any, target: Any) -> torch.Tensor:
    """Coefficient of determination per output dimension.

    Args:
        pred, target: ``(N, D)`` or ``(N,)``.

    Returns:
        ``(D,)`` float64: ``1 - SS_res / SS_tot`` around the target's own mean (unclipped, may be
        negative); NaN for a dimension whose target is constant (R² is undefined there).
    """
    p = _as_2d(_as_tensor(pred, torch.float64))
    t = _as_2d(_as_tensor(target, torch.float64))
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ")
    ss_res = ((t - p) ** 2).sum(0)
    ss_tot = ((t - t.mean(0, keepdim=True)) ** 2).sum(0)
    # Relative tolerance: a target varying only by float noise counts as constant.
    const = ss_tot <= 1e-12 * (1.0 + (t**2).sum(0))
    r2 = 1.0 - ss_res / torch.where(const, torch.ones_like(ss_tot), ss_tot)
    return torch.where(const, torch.full_like(r2, math.nan), r2)


def _mean_clipped_r2(r2: torch.Tensor) -> float:
    """Clip each dimension to [0, 1] first, then average over the defined ones.

    Clipping per dimension stops one hopeless dimension (R² of -5) from cancelling a dimension
    that is well explained: for leakage we want "how much is readable", not a net figure.
    """
    ok = ~torch.isnan(r2)
    if not ok.any():
        return math.nan
    return float(r2[ok].clamp(0.0, 1.0).mean())


# --------------------------------------------------------------------------------------------
# probes


def _ridge_solve(x: torch.Tensor, y: torch.Tensor, alphas: Sequence[float]) -> list[torch.Tensor]:
    """Ridge weights (P+1, D) for each alpha, x and y float64; intercept unpenalised (centring)."""
    # NumPy under one BLAS thread: same reason as the logistic probe (busy shared CPUs).
    xn, yn = x.numpy(), y.numpy()
    xm, ym = xn.mean(0, keepdims=True), yn.mean(0, keepdims=True)
    xc, yc = xn - xm, yn - ym
    out = []
    with _single_blas_thread():
        # One eigendecomposition serves every alpha: (X'X + aI)^-1 X'Y = V diag(1/(e+a)) V'X'Y.
        evals, evecs = np.linalg.eigh(xc.T @ xc)
        proj = evecs.T @ (xc.T @ yc)
        for a in alphas:
            w = evecs @ (proj / (np.clip(evals, 0.0, None) + a)[:, None])
            b = ym - xm @ w
            out.append(torch.from_numpy(np.concatenate([w, b], 0)))
    return out


def _ridge_predict(wb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x @ wb[:-1] + wb[-1:]


def probe_continuous(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    groups_train: np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    cv_folds: int = 3,
    seed: int = 0,
) -> tuple[float, torch.Tensor, float]:
    """Fit a ridge probe on train, score on test.

    Args:
        x_train ``(n, P)``, y_train ``(n, D)``, x_test ``(m, P)``, y_test ``(m, D)``;
        groups_train ``(n,)`` picks the grouped CV folds used to choose alpha (scaled by n so the
        grid means the same at any sample count).

    Returns:
        ``(score, r2_per_dim (D,), alpha)``: score = per-dim R² clipped to [0,1], averaged.
    """
    x_train, x_test = _standardise(x_train.double(), x_test.double())
    y_train, y_test = y_train.double(), y_test.double()
    n = x_train.shape[0]
    grid = [a * n for a in alphas]
    folds = _group_folds(groups_train, cv_folds, seed)
    if folds and len(grid) > 1:
        # Pick alpha by the summed CV residual over folds (standardised targets so that every
        # output dimension weighs the same).
        ys = y_train / y_train.std(0, unbiased=False, keepdim=True).clamp_min(1e-12)
        err = torch.zeros(len(grid), dtype=torch.float64)
        for tr, va in folds:
            sols = _ridge_solve(x_train[tr], ys[tr], [a * len(tr) / n for a in grid])
            for i, wb in enumerate(sols):
                err[i] += ((_ridge_predict(wb, x_train[va]) - ys[va]) ** 2).sum()
        alpha = grid[int(torch.argmin(err))]
    else:
        alpha = grid[len(grid) // 2]
    wb = _ridge_solve(x_train, y_train, [alpha])[0]
    r2 = r2_per_dim(_ridge_predict(wb, x_test), y_test)
    return _mean_clipped_r2(r2), r2, alpha / n


def _single_blas_thread():
    """One BLAS thread for the many small matmuls of L-BFGS: on a busy machine a thread pool
    spin-waits more than it computes (measured 5-10x slower). No-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 150
) -> torch.Tensor:
    """Multinomial logistic regression weights (P+1, C); x float64 standardised, y (n,) int.

    Minimises mean cross-entropy + l2/2 |W|² (bias unpenalised) with SciPy's L-BFGS-B on an
    analytic gradient in NumPy: the per-iteration work is tiny, and torch's autograd plus its
    thread pool made this 10-25x slower on a busy 2-core machine.
    """
    from scipy.optimize import minimize

    xn = np.concatenate([x.numpy(), np.ones((x.shape[0], 1))], 1)
    yn = y.numpy()
    n, p1 = xn.shape
    onehot = np.zeros((n, num_classes))
    onehot[np.arange(n), yn] = 1.0
    pen = np.ones((p1, 1))
    pen[-1] = 0.0

    def f(wflat: np.ndarray) -> tuple[float, np.ndarray]:
        w = wflat.reshape(p1, num_classes)
        z = xn @ w
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        loss = -(onehot * logp).sum() / n + 0.5 * l2 * ((w * pen) ** 2).sum()
        grad = xn.T @ (np.exp(logp) - onehot) / n + l2 * w * pen
        return float(loss), grad.ravel()

    with _single_blas_thread():
        res = minimize(f, np.zeros(p1 * num_classes), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter, "gtol": 1e-5})
    return torch.from_numpy(res.x.reshape(p1, num_classes))


def _logistic_predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x @ w[:-1] + w[-1:]).argmax(1)


def chance_corrected(accuracy: float, num_classes: int) -> float:
    """``max(0, (acc - 1/C) / (1 - 1/C))``: 0 at uniform chance, 1 at perfect accuracy."""
    chance = 1.0 / num_classes
    return max(0.0, (accuracy - chance) / (1.0 - chance))


def probe_categorical(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    groups_train: np.ndarray,
    num_classes: int = 8,
    l2_grid: Sequence[float] = DEFAULT_LOGISTIC_L2,
    cv_folds: int = 3,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Fit a multinomial logistic probe on train, score on test.

    Args:
        x_* ``(n, P)`` codes, y_* ``(n,)`` int64 classes in ``[0, num_classes)``.

    Returns:
        ``(chance_corrected_score, raw_accuracy, l2)``.
    """
    x_train, x_test = _standardise(x_train.double(), x_test.double())
    y_train, y_test = y_train.long(), y_test.long()
    folds = _group_folds(groups_train, cv_folds, seed)
    if folds and len(l2_grid) > 1:
        acc = []
        for l2 in l2_grid:
            correct = 0
            for tr, va in folds:
                w = _fit_logistic(x_train[tr], y_train[tr], num_classes, l2, max_iter=60)
                correct += int((_logistic_predict(w, x_train[va]) == y_train[va]).sum())
            acc.append(correct)
        # Ties go to the strongest penalty (the later, larger l2): the simpler probe.
        best = max(range(len(l2_grid)), key=lambda i: (acc[i], l2_grid[i]))
        l2 = l2_grid[best]
    else:
        l2 = l2_grid[0]
    w = _fit_logistic(x_train, y_train, num_classes, l2)
    accuracy = float((_logistic_predict(w, x_test) == y_test).double().mean())
    return chance_corrected(accuracy, num_classes), accuracy, l2


# --------------------------------------------------------------------------------------------
# result


@dataclass
class CheckResult:
    """One target: ``name`` like ``"pose/pose"`` or ``"off_diagonal:lip/pose"``."""

    name: str
    value: float
    threshold: float
    op: str  # ">=" or "<="
    passed: bool

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"{mark} {self.name}: {self.value:.3f} {self.op} {self.threshold:g}"


@dataclass
class DisentanglementResult:
    """The code-factor matrix and what is needed to judge it.

    Attributes:
        codes: row names, e.g. ``["lip", "pose", "eye", "emotion"]``.
        factors: column names, e.g. ``["mouth", "pose", "gaze", "blink", "emotion"]``.
        matrix: ``len(codes) x len(factors)`` nested lists of floats in [0, 1] (NaN where the
            factor is constant on the test clips): R² for continuous factors, chance-corrected
            accuracy for categorical ones.
        emotion_accuracy: raw test accuracy per code for each categorical factor,
            ``{factor: {code: acc}}``.
        r2_per_dim: unclipped test R² per output dimension, ``{code: {factor: [..]}}``.
        num_classes: classes of the categorical factors (chance = 1/num_classes).
        n_train, n_test: frames on each side; train_groups, test_groups: the clip ids (str).
        hyper: chosen ridge alpha (per sample) / logistic L2 per ``"code/factor"``.
    """

    codes: list[str]
    factors: list[str]
    matrix: list[list[float]]
    emotion_accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    r2_per_dim: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    num_classes: int = 8
    n_train: int = 0
    n_test: int = 0
    train_groups: list[str] = field(default_factory=list)
    test_groups: list[str] = field(default_factory=list)
    hyper: dict[str, float] = field(default_factory=dict)

    def value(self, code: str, factor: str) -> float:
        return self.matrix[self.codes.index(code)][self.factors.index(factor)]

    def diagonal_pairs(self) -> list[tuple[str, str]]:
        """The :data:`DIAGONAL_PAIRS` present in this matrix (code and factor both measured)."""
        return [(c, f) for c, f in DIAGONAL_PAIRS if c in self.codes and f in self.factors]

    def diagonal(self) -> dict[str, float]:
        return {f"{c}/{f}": self.value(c, f) for c, f in self.diagonal_pairs()}

    def off_diagonal(self) -> dict[str, float]:
        diag = set(self.diagonal_pairs())
        return {
            f"{c}/{f}": self.value(c, f)
            for c in self.codes for f in self.factors if (c, f) not in diag
        }

    def max_off_diagonal(self) -> tuple[str, float]:
        """``(name, value)`` of the largest off-diagonal entry (NaN entries ignored)."""
        vals = {k: v for k, v in self.off_diagonal().items() if not math.isnan(v)}
        if not vals:
            return ("", math.nan)
        name = max(vals, key=vals.__getitem__)
        return name, vals[name]

    def check(self, thresholds: Mapping[str, float] | None = None) -> list[CheckResult]:
        """Compare with the targets (default :data:`DEFAULT_THRESHOLDS`).

        Diagonal entries must reach their lower bound; a categorical diagonal (emotion) is
        checked on raw accuracy, as the target is phrased ("accuracy >= 0.8"). Every
        off-diagonal entry must stay at or below ``thresholds["off_diagonal"]``. NaN fails.
        """
        th = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
        out: list[CheckResult] = []
        for c, f in self.diagonal_pairs():
            key = f"{c}/{f}"
            if key not in th:
                continue
            v = self.emotion_accuracy[f][c] if f in self.emotion_accuracy else self.value(c, f)
            out.append(CheckResult(key, v, th[key], ">=", bool(v >= th[key])))
        if "off_diagonal" in th:
            for key, v in self.off_diagonal().items():
                out.append(CheckResult(
                    f"off_diagonal:{key}", v, th["off_diagonal"], "<=",
                    bool(v <= th["off_diagonal"]),
                ))
        return out

    def passed(self, thresholds: Mapping[str, float] | None = None) -> bool:
        return all(r.passed for r in self.check(thresholds))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        def clean(v):
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return clean({
            "codes": list(self.codes), "factors": list(self.factors),
            "matrix": [list(r) for r in self.matrix],
            "emotion_accuracy": self.emotion_accuracy, "num_classes": self.num_classes,
            "n_train": self.n_train, "n_test": self.n_test,
        })

    def __str__(self) -> str:
        w = max(len(c) for c in self.codes) + 1
        lines = [" " * w + " ".join(f"{f:>8}" for f in self.factors)]
        for c, row in zip(self.codes, self.matrix):
            lines.append(f"{c:<{w}}" + " ".join(f"{v:8.3f}" for v in row))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main entry


def disentanglement_matrix(
    codes: Mapping[str, Any],
    factors: Mapping[str, Any],
    groups: Sequence[Any] | np.ndarray | torch.Tensor,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    num_classes: int = 8,
    categorical: Iterable[str] = CATEGORICAL_FACTORS,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    logistic_l2: Sequence[float] = DEFAULT_LOGISTIC_L2,
    cv_folds: int = 3,
    max_samples: int | None = None,
) -> DisentanglementResult:
    """Fit a linear probe per (code, factor) pair and score it on held-out clips.

    Args:
        codes: ``{name: (N, P)}`` per-frame codes, e.g. lip (N,500|512), pose (N,6), eye (N,6),
            emotion (N,30). Row order of the matrix follows the mapping.
        factors: ``{name: (N, D) | (N,)}`` ground truth, e.g. mouth (N,2)|(N,1), pose (N,6),
            gaze (N,4), blink (N,2), emotion (N,) int64. A factor named in ``categorical`` (or
            any 1-D integer factor) gets the logistic probe.
        groups: ``(N,)`` clip id per frame; the probe's train/test split is by group.
        test_fraction: share of clips held out. seed: fixes the split, the CV folds and the
            subsample, so the result is deterministic.
        num_classes: classes of the categorical factors (8 emotions).
        max_samples: if set, a seeded random subset of at most this many frames is used (the
            probes are O(N P^2); 20k frames x 512 dims takes seconds).

    Returns:
        :class:`DisentanglementResult`.
    """
    categorical = set(categorical)
    code_t = {k: _as_2d(_as_tensor(v, torch.float64)) for k, v in codes.items()}
    fac_t = {k: _as_tensor(v) for k, v in factors.items()}
    g = np.asarray(groups.cpu().numpy() if isinstance(groups, torch.Tensor) else list(groups))
    n = len(g)
    for name, t in list(code_t.items()) + list(fac_t.items()):
        if t.shape[0] != n:
            raise ValueError(f"{name!r} has {t.shape[0]} rows, groups has {n}")
    if max_samples is not None and n > max_samples:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
        code_t = {k: v[keep] for k, v in code_t.items()}
        fac_t = {k: v[keep] for k, v in fac_t.items()}
        g = g[keep]
    if g.dtype.kind in "OU":
        g = g.astype(str)
    tr, te = split_by_group(g, test_fraction, seed)
    g_tr = g[tr]

    code_names, factor_names = list(code_t), list(fac_t)
    matrix = [[math.nan] * len(factor_names) for _ in code_names]
    emo_acc: dict[str, dict[str, float]] = {}
    r2_dims: dict[str, dict[str, list[float]]] = {c: {} for c in code_names}
    hyper: dict[str, float] = {}
    for j, fname in enumerate(factor_names):
        y = fac_t[fname]
        is_cat = fname in categorical or (y.ndim == 1 and not y.is_floating_point())
        if is_cat:
            y = y.reshape(-1).long()
            if int(y.min()) < 0 or int(y.max()) >= num_classes:
                raise ValueError(f"factor {fname!r} has classes outside [0, {num_classes})")
            emo_acc[fname] = {}
        else:
            y = _as_2d(y.double())
        for i, cname in enumerate(code_names):
            x = code_t[cname]
            if is_cat:
                score, acc, l2 = probe_categorical(
                    x[tr], y[tr], x[te], y[te], g_tr, num_classes, logistic_l2, cv_folds, seed)
                emo_acc[fname][cname] = acc
                hyper[f"{cname}/{fname}"] = l2
            else:
                score, r2, alpha = probe_continuous(
                    x[tr], y[tr], x[te], y[te], g_tr, alphas, cv_folds, seed)
                r2_dims[cname][fname] = [float(v) for v in r2]
                hyper[f"{cname}/{fname}"] = alpha
            matrix[i][j] = float(score)
    return DisentanglementResult(
        codes=code_names, factors=factor_names, matrix=matrix, emotion_accuracy=emo_acc,
        r2_per_dim=r2_dims, num_classes=num_classes, n_train=len(tr), n_test=len(te),
        train_groups=sorted({str(v) for v in g[tr]}), test_groups=sorted({str(v) for v in g[te]}),
        hyper=hyper,
    )


# --------------------------------------------------------------------------------------------
# torchmetrics wrapper (for validation loops)

try:
    from torchmetrics import Metric as _Metric
except ImportError:  # pragma: no cover - torchmetrics is a hard dependency of the project
    _Metric = object  # type: ignore[assignment,misc]


class DisentanglementMetric(_Metric):  # type: ignore[misc,valid-type]
    """Accumulates codes, factors and group ids over batches; ``compute()`` returns the
    :class:`DisentanglementResult` (not a tensor: log its entries yourself, e.g. via
    ``pdfgc.metrics.report.flatten_disentanglement``).

    ``update(codes={name: (B,P)}, factors={name: (B,D)|(B,)}, groups=(B,) int64)``; use
    :func:`group_ids` to turn clip names into ints (strings cannot be gathered across ranks).
    """

    full_state_update = False

    def __init__(
        self, code_names: Sequence[str], factor_names: Sequence[str], **probe_kwargs: Any
    ) -> None:
        super().__init__()
        self.code_names, self.factor_names = list(code_names), list(factor_names)
        self.probe_kwargs = probe_kwargs
        for c in self.code_names:
            self.add_state(f"code_{c}", default=[], dist_reduce_fx="cat")
        for f in self.factor_names:
            self.add_state(f"factor_{f}", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, codes: Mapping[str, torch.Tensor], factors: Mapping[str, torch.Tensor],
               groups: torch.Tensor) -> None:
        for c in self.code_names:
            getattr(self, f"code_{c}").append(codes[c].detach().float().flatten(0, -2))
        for f in self.factor_names:
            getattr(self, f"factor_{f}").append(factors[f].detach().reshape(groups.numel(), -1))
        self.groups.append(groups.detach().reshape(-1).long())

    def compute(self) -> DisentanglementResult:  # type: ignore[override]
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        factors = {}
        for f in self.factor_names:
            t = cat(getattr(self, f"factor_{f}"))
            factors[f] = t.reshape(-1) if t.shape[1] == 1 and not t.is_floating_point() else t
        return disentanglement_matrix(
            {c: cat(getattr(self, f"code_{c}")) for c in self.code_names},
            factors, cat(self.groups), **self.probe_kwargs,
        )
