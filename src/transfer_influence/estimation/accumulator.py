"""Difference-in-means influence with standard errors across models (pure numpy, no I/O).

Infl[k -> j] = mean output of the models whose subset holds group k
             - mean output of the models whose subset lacks it.

The model is the unit of randomness: every standard error comes from how the outputs vary
across models. The pooled two-sample variance is used because it needs only the per-group
sums (one matrix product) plus per-example sums of squares. It is not Welch's error (on a
random design a group is in more or fewer than half the models); its coverage is checked
against known truth in the tests.

Summaries over target examples (overall, per target class) are computed from each model's
mean output over those examples, so their errors also vary over models, never over examples
as if they were independent draws. Where the design makes models in rounds that partition
the groups (complementary, balanced), models are not independent and the round is the unit:
see :mod:`.rounds`. Where the models of each update shared a training seed (a block), its
outputs are centred on their own mean and the estimates are slopes within blocks: see
:mod:`.centring`. Every estimate is the centre of
its own symmetric interval: what is ranked is what the interval is about.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import stdtrit

from .centring import ChunkCentring, within_difference
from .regression import CentredDesign, explained_share, regression_influence
from .rounds import RoundContrasts
from .significance import q_values, t_test_p_values

__all__ = [
    "Influence",
    "InfluenceAccumulator",
    "InfluenceEstimate",
    "InfluenceWarning",
    "estimate_influence",
]

ESTIMATORS = ("auto", "difference", "regression")
MIN_RESIDUAL_DOF = 10  # models beyond K that the regression estimator needs
_ROW_BLOCK = 1024  # models per float32 block of squares, summed into float64


class InfluenceWarning(UserWarning):
    """A group's influence cannot be estimated (never or always in the subset)."""


@dataclass(frozen=True)
class Influence:
    """Influence of K groups on some targets, with standard errors across models.

    ``values`` and ``stderr`` are K x T (T target examples, target classes or one column for
    the overall mean). ``dof`` is the degrees of freedom of the error (models - 2 for the pooled
    variance, rounds - 1 over design rounds, residual degrees of freedom for the regression).
    Every estimate here is unbiased and the centre of its interval (:meth:`ci`).
    """

    values: np.ndarray
    stderr: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    dof: int

    def ci(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided confidence interval: Student t with ``dof`` degrees of freedom."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"confidence level must be in (0, 1), got {level}")
        half = stdtrit(max(self.dof, 1), 0.5 + level / 2.0) * self.stderr
        return self.values - half, self.values + half

    def simultaneous_ci(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Intervals that hold for every group of a column at once with probability
        ``level``, so also for the groups a user picks from either end of the ranking, which
        plain intervals cover less often. Sidak: each interval at level ** (1 / K) for the K
        defined groups, which holds whatever the correlation between the estimates."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"confidence level must be in (0, 1), got {level}")
        defined = np.maximum(np.isfinite(self.values).sum(axis=0), 1)
        each = np.power(level, 1.0 / defined)
        half = stdtrit(max(self.dof, 1), 0.5 + each / 2.0) * self.stderr
        return self.values - half, self.values + half

    def p_values(self) -> np.ndarray:
        """Two-sided p-values of "no influence" from each estimate's t statistic (NaN where
        the estimate is undefined)."""
        return t_test_p_values(self.values, self.stderr, self.dof)

    def q_values(self, whole_table: bool = False) -> np.ndarray:
        """Benjamini-Hochberg q-values over the K groups, column by column: a group is
        distinguishable from the average class at false discovery rate q when q_value <= q,
        however many groups it was picked out of. ``whole_table``: one family of all K x T
        entries, for a table read as a whole (every target class at once), where T separate
        families would flag something somewhere far more often than 1 run in 20."""
        p = self.p_values()
        if whole_table:
            return q_values(p.reshape(-1)).reshape(p.shape)
        return q_values(p)

    def columns(self, part: slice) -> Influence:
        """The same estimate for some of its T columns."""
        return replace(self, values=self.values[:, part], stderr=self.stderr[:, part])


@dataclass(frozen=True)
class InfluenceEstimate:
    """Everything estimated from one stream of (masks, outputs)."""

    per_example: Influence  # K x n
    overall: Influence  # K x 1: influence on the mean output over all target examples
    per_target_class: Influence | None  # K x C when example classes were given
    n_models: int
    estimator: str = "difference"


class InfluenceAccumulator:
    """Streaming difference-in-means: feed chunks of models, never all m x n outputs at once.

    Parameters
    ----------
    n_groups:
        K, the number of groups (source classes by default) that masks range over.
    n_examples:
        n, the number of target examples each model is evaluated on.
    example_classes:
        Optional length-n integer target labels; enables the per-target-class summary.
    """

    def __init__(
        self, n_groups: int, n_examples: int, example_classes: np.ndarray | None = None
    ) -> None:
        if n_groups < 1 or n_examples < 1:
            raise ValueError("n_groups and n_examples must be positive")
        self.n_groups = n_groups
        self.n_examples = n_examples
        self.example_classes = None
        weights = np.full((n_examples, 1), 1.0 / n_examples)
        if example_classes is not None:
            labels = np.asarray(example_classes)
            if labels.shape != (n_examples,) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError("example_classes must be n_examples integer labels")
            if labels.min() < 0:
                raise ValueError("example_classes must be non-negative")
            self.example_classes = labels
            counts = np.bincount(labels)
            onehot = labels[:, None] == np.arange(counts.size)[None, :]
            weights = np.concatenate([weights, onehot / np.maximum(counts, 1)], axis=1)
        # Each model's mean output overall and per target class, as one small product.
        self._summary_weights = weights.astype(np.float32)
        self.n_models = 0
        self._n_in = np.zeros(n_groups, dtype=np.int64)
        self._gram = np.zeros((n_groups, n_groups), dtype=np.float64)  # X'X, for regression
        self._sum_in = np.zeros((n_groups, n_examples), dtype=np.float64)
        self._sum = np.zeros(n_examples, dtype=np.float64)
        self._sum_sq = np.zeros(n_examples, dtype=np.float64)
        self._masks: list[np.ndarray] = []
        self._summaries: list[np.ndarray] = []  # per model: [mean over all, mean per class...]
        # Per-round contrasts (per example, per summary), for designs whose models come in rounds.
        self._by_round: tuple[RoundContrasts, RoundContrasts] | None = None
        self._centring: ChunkCentring | None = None  # each update a block sharing a seed
        self.n_dropped = 0  # models of one-model seed blocks, which nothing can be compared with

    def update(
        self,
        masks: np.ndarray,
        outputs: np.ndarray,
        rounds: np.ndarray | None = None,
        seed_block: bool = False,
    ) -> InfluenceAccumulator:
        """Add models: ``masks`` is m_chunk x K bool, ``outputs`` m_chunk x n float.

        ``rounds`` (m_chunk integers) numbers each model's design round where the design makes
        models in rounds that partition the groups (complementary, balanced); the difference in
        means' errors are then computed over rounds. Give it with every update or with none.
        ``seed_block`` says the models shared a training seed (a seed per chunk): their outputs
        are centred on their own mean per example, which removes the seed's offset, and the
        estimates are slopes within blocks (see :mod:`.centring`); a block of one model has
        nothing to be compared with and is left out (:attr:`n_dropped`). Give every update
        as a block or none.
        """
        masks = np.asarray(masks)
        outputs = np.asarray(outputs)
        if self.n_models and (rounds is None) != (self._by_round is None):
            raise ValueError("give rounds with every update or with none")
        if self.n_models and seed_block != (self._centring is not None):
            raise ValueError("give every update as a seed block or none")
        if masks.ndim != 2 or masks.shape[1] != self.n_groups or masks.dtype != np.bool_:
            raise ValueError(f"masks must be a bool array of shape (models, {self.n_groups})")
        if outputs.shape != (masks.shape[0], self.n_examples):
            raise ValueError(
                f"outputs must have shape ({masks.shape[0]}, {self.n_examples}), "
                f"got {outputs.shape}"
            )
        if not np.all(np.isfinite(outputs)):
            raise ValueError("outputs contain NaN or infinity; exclude unhealthy models first")
        if masks.shape[0] == 0:
            return self
        if seed_block and masks.shape[0] < 2:
            self.n_dropped += masks.shape[0]
            return self
        if seed_block:
            outputs = (outputs - outputs.mean(axis=0, dtype=np.float64)).astype(outputs.dtype)
        if rounds is not None and self._by_round is None:
            columns = self._summary_weights.shape[1]
            self._by_round = (
                RoundContrasts(self.n_groups, self.n_examples),
                RoundContrasts(self.n_groups, columns, np.float64),
            )
        y = outputs.astype(np.float32, copy=False)
        # The one O(K*m*n) step, in float32 (its rounding, ~1e-7 of the output's scale, is far
        # below any effect worth reporting); partial sums are accumulated in float64.
        self._sum_in += masks.T.astype(np.float32) @ y
        self._n_in += masks.sum(axis=0)
        x = masks.astype(np.float32)  # co-occurrence counts are exact in float32 below 2**24
        self._gram += x.T @ x
        for start in range(0, y.shape[0], _ROW_BLOCK):
            block = y[start : start + _ROW_BLOCK]
            self._sum += block.sum(axis=0, dtype=np.float64)
            self._sum_sq += np.einsum("ij,ij->j", block, block)
        summaries = (y @ self._summary_weights).astype(np.float64)
        self._summaries.append(summaries)
        if self._by_round is not None:
            self._by_round[0].update(masks, y, rounds)
            self._by_round[1].update(masks, summaries, rounds)
        self.n_models += masks.shape[0]
        self._masks.append(masks.copy())
        if seed_block:
            self._centring = self._centring or ChunkCentring(self.n_groups)
            self._centring.update(masks)
        return self

    @property
    def masks(self) -> np.ndarray:
        """Masks of every model added so far (m x K)."""
        return np.concatenate(self._masks) if self._masks else np.zeros((0, self.n_groups), bool)

    @property
    def model_means(self) -> np.ndarray:
        """Each model's mean output over all target examples (m,)."""
        return np.concatenate(self._summaries)[:, 0] if self._summaries else np.zeros(0)

    def result(self, estimator: str = "difference") -> InfluenceEstimate:
        """The estimate from all models added so far.

        ``estimator`` is "difference" (the paper's difference in means), "regression" (all
        groups regressed jointly by least squares; see :mod:`.regression`), or "auto": the
        regression where its error of the overall influence is predicted, from half of the
        models, to be clearly smaller, else the difference (see :meth:`_auto_choice`): the
        regression once it is well determined (m well above K) and the subsets explain
        enough of the spread.
        """
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}"
            )
        if self.n_models < 2:
            raise ValueError(f"need at least 2 models to estimate influence, have {self.n_models}")
        # A seed per chunk spends a level per chunk, beyond the first, on the seeds.
        absorbed = self._centring.chunks - 1 if self._centring is not None else 0
        needed = self.n_groups + MIN_RESIDUAL_DOF + absorbed
        enough = self.n_models >= needed
        if estimator == "regression" and not enough:
            # Fewer models than groups fit the noise exactly: the errors would be fiction.
            beyond = f" + {absorbed} (one per seed chunk but one)" if absorbed else ""
            raise ValueError(
                f"the regression estimator needs at least K + {MIN_RESIDUAL_DOF}{beyond} = "
                f"{needed} models, have {self.n_models}; "
                "train more or use the difference estimator"
            )
        _warn_degenerate(self._n_in, self.n_models - self._n_in)
        design = self._design() if estimator != "difference" and enough else None
        if estimator == "auto":
            estimator = self._auto_choice(design) if design is not None else "difference"
        masks = np.concatenate(self._masks)
        summaries = np.concatenate(self._summaries)
        if estimator == "difference":
            chosen = self._difference(
                masks.T.astype(np.float64) @ summaries,
                summaries.sum(axis=0),
                (summaries**2).sum(axis=0),
            )
            per_example = self._difference(self._sum_in, self._sum, self._sum_sq)
            if self._by_round is not None:
                chosen = _round_errors(chosen, self._by_round[1])
                per_example = _round_errors(per_example, self._by_round[0])
                if self._by_round[1].count < 2:
                    warnings.warn(
                        f"{self._by_round[1].count} complete design round(s) (models whose "
                        "subsets partition the groups): errors need 2 or more, so they are NaN",
                        InfluenceWarning,
                        stacklevel=2,
                    )
        else:
            x = masks.astype(np.float64)
            chosen = self._regression(
                design, x.T @ summaries, summaries.sum(axis=0), (summaries**2).sum(axis=0)
            )
            per_example = self._regression(design, self._sum_in, self._sum, self._sum_sq)
        per_class = chosen.columns(slice(1, None)) if self.example_classes is not None else None
        overall = chosen.columns(slice(0, 1))
        return InfluenceEstimate(per_example, overall, per_class, self.n_models, estimator)

    def _design(self) -> CentredDesign:
        between = None if self._centring is None else self._centring.between
        return CentredDesign.of(self._gram, self._n_in, self.n_models, between)

    def _auto_choice(self, design: CentredDesign) -> str:
        """The estimator "auto" uses: the regression only where its error is predicted to be
        clearly smaller, from how much of the spread between models' mean outputs the
        subsets explain in every other model.

        The decision must not see the errors it picks between: taking the narrower of two
        sets of intervals takes the one whose errors came out small by chance, and its
        intervals then cover less than they say (0.943 where each alone covered 0.951, in
        docs/results.md). Half of the models estimate the explained share
        s; the design alone gives each estimator's error per unit of noise, so the predicted
        ratio of errors is sqrt(design ratio / (1 - s)), which no residual of the full fit
        enters. The regression is taken where that ratio exceeds two of its standard errors
        (about exp(sqrt(2 / dof + 2 / (m/2 - 1))) with the half's degrees of freedom), so
        it needs twice K + 10 models before it is considered.
        """
        masks, means, blocks = self.masks, self.model_means, None
        if self._centring is not None:
            blocks = np.repeat(np.arange(len(self._masks)), [len(m) for m in self._masks])
        half = slice(0, None, 2)  # models come in random order: every other one is a fair half
        share, dof = explained_share(
            masks[half], means[half], None if blocks is None else blocks[half]
        )
        if share is None or share >= 1.0:
            return "difference"
        with np.errstate(divide="ignore"):  # a group always in or out: left out below
            if self._centring is None:
                difference = 1.0 / self._n_in + 1.0 / (self.n_models - self._n_in)
            else:
                difference = 1.0 / self._centring.spread
        regression = design.factors()
        defined = np.isfinite(difference) & (regression > 0)
        if not defined.any():
            return "difference"
        design_ratio = np.median(difference[defined]) / np.median(regression[defined])
        ratio = math.sqrt(design_ratio / (1.0 - share))
        models = (self.n_models + 1) // 2
        margin = math.exp(math.sqrt(2.0 / dof + 2.0 / max(models - 1, 1)))
        return "regression" if ratio > margin else "difference"

    def _difference(self, sum_in: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> Influence:
        """Difference in means from X'Y, column sums and sums of squares of Y — or, for
        seed blocks, the slopes within blocks."""
        m, n_in = self.n_models, self._n_in
        if self._centring is None:
            return _pooled_difference(sum_in, total, total_sq, n_in, m)
        values, stderr, dof = within_difference(
            sum_in, total_sq, self._centring.spread, m, self._centring.chunks
        )
        return Influence(values, stderr, n_in.copy(), m - n_in, dof)

    def _regression(self, design: CentredDesign, xty, total, total_sq) -> Influence:
        m, n_in, centring = self.n_models, self._n_in, self._centring
        values, stderr, dof = regression_influence(
            design,
            n_in,
            xty,
            total,
            total_sq,
            m,
            absorbed=0 if centring is None else centring.chunks - 1,
        )
        undefined = (n_in == 0) | (n_in == m)
        values[undefined] = np.nan
        stderr[undefined] = np.nan
        return Influence(values, stderr, n_in.copy(), m - n_in, dof)


def _round_errors(influence: Influence, contrasts: RoundContrasts) -> Influence:
    """The difference in means with its errors taken over design rounds."""
    stderr, dof = contrasts.stderr()
    stderr[np.isnan(influence.values)] = np.nan
    return replace(influence, stderr=stderr, dof=dof)


def estimate_influence(
    masks: np.ndarray,
    outputs: np.ndarray,
    example_classes: np.ndarray | None = None,
    estimator: str = "difference",
    rounds: np.ndarray | None = None,
    blocks: np.ndarray | None = None,
) -> InfluenceEstimate:
    """Influence of each group on each target example from all models at once.

    ``masks`` is m x K bool (group k in model i's subset), ``outputs`` m x n (model i's output
    on target example j); ``rounds`` numbers the design round of each model where the design
    has rounds (see :meth:`InfluenceAccumulator.update`). ``blocks`` numbers the models that
    shared a training seed (a seed per chunk): outputs are centred within each block, which
    removes its seed's offset, and the estimates are slopes within blocks. Returns the K x n
    influence with standard errors and per-group in/out counts, plus the overall and (given
    ``example_classes``) per-target-class summaries.
    """
    masks = np.asarray(masks)
    outputs = np.asarray(outputs)
    if masks.ndim != 2 or outputs.ndim != 2:
        raise ValueError("masks and outputs must both be 2-D (models first)")
    acc = InfluenceAccumulator(masks.shape[1], outputs.shape[1], example_classes)
    if blocks is None:
        return acc.update(masks, outputs, rounds).result(estimator)
    blocks = np.asarray(blocks)
    if blocks.shape != (masks.shape[0],):
        raise ValueError(f"blocks must give one block per model ({masks.shape[0]})")
    for block in dict.fromkeys(blocks.tolist()):  # in order of first appearance
        rows = np.flatnonzero(blocks == block)
        acc.update(
            masks[rows],
            outputs[rows].astype(np.float64),
            None if rounds is None else rounds[rows],
            seed_block=True,
        )
    return acc.result(estimator)


def _pooled_difference(
    sum_in: np.ndarray,
    total: np.ndarray,
    total_sq: np.ndarray,
    n_in: np.ndarray,
    m: int,
) -> Influence:
    n_out = m - n_in
    dof = m - 2
    # In place: at K x n = 10^7 these arrays are 80 MB each, and passes over them cost more
    # than the arithmetic.
    with np.errstate(divide="ignore", invalid="ignore"):
        ni = n_in.astype(np.float64)[:, None]
        no = n_out.astype(np.float64)[:, None]
        mean_in = sum_in / ni
        mean_out = np.subtract(total[None, :], sum_in)
        mean_out /= no
        values = mean_in - mean_out
        # within-group sum of squares = sum y^2 - n_in mean_in^2 - n_out mean_out^2
        np.square(mean_in, out=mean_in)
        mean_in *= ni
        np.square(mean_out, out=mean_out)
        mean_out *= no
        mean_in += mean_out
        stderr = np.subtract(total_sq[None, :], mean_in, out=mean_in)
        np.maximum(stderr, 0.0, out=stderr)
        stderr *= (1.0 / ni + 1.0 / no) / max(dof, 1)
        np.sqrt(stderr, out=stderr)
    undefined = (n_in == 0) | (n_out == 0)
    values[undefined] = np.nan
    stderr[undefined] = np.nan
    if dof < 1:
        stderr[:] = np.nan
    return Influence(values, stderr, n_in.copy(), n_out.copy(), dof)


def _warn_degenerate(n_in: np.ndarray, n_out: np.ndarray) -> None:
    never_in = np.flatnonzero(n_in == 0)
    never_out = np.flatnonzero(n_out == 0)
    if never_in.size or never_out.size:
        parts = []
        if never_in.size:
            parts.append(f"{never_in.size} never included (first: {never_in[:5].tolist()})")
        if never_out.size:
            parts.append(f"{never_out.size} never excluded (first: {never_out[:5].tolist()})")
        warnings.warn(
            "influence is NaN for groups " + "; ".join(parts) + ": train more models",
            InfluenceWarning,
            stacklevel=3,
        )
