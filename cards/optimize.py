"""Fit FSRS to the learner's own review history (`llmstudy review --optimize`), with py-fsrs's Optimizer.

py-fsrs's Optimizer (the `fsrs[optimizer]` extra: torch, pandas) learns the 21 FSRS parameters from review logs
by gradient descent on the log loss of its recall predictions. Like it, we score a set of parameters by replaying
each card's history and predicting, before every review on a later day than the card's previous one, the
probability of recall (FSRS's retrievability); the outcome is 1 unless the rating was Again. Same-day reviews
(learning steps) are not predictions of memory and are skipped, as the Optimizer skips them.

Below MIN_REVIEWS such reviews the Optimizer returns the defaults unchanged (its mini-batch size), so we keep the
defaults and say why rather than pretend to have fitted anything.
Only `optimize` imports torch (through fsrs.optimizer); counting and scoring are plain Python.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from fsrs import Card, Rating, ReviewLog, Scheduler
from fsrs.scheduler import DEFAULT_PARAMETERS

MIN_REVIEWS = 512        # fsrs.optimizer.mini_batch_size: fewer reviews and compute_optimal_parameters() = defaults


@dataclass(frozen=True)
class Fit:
    log_loss: float      # mean binary cross-entropy of the recall predictions (lower is better)
    rmse: float          # root mean squared error of predicted retrievability against recall (0/1)
    reviews: int         # predictions scored


@dataclass(frozen=True)
class OptimizeResult:
    parameters: tuple[float, ...]
    before: Fit | None           # the defaults on this history (None: no review to score)
    after: Fit | None            # the chosen parameters on this history
    reviews: int                 # reviews on a later day than the card's previous one
    fitted: bool                 # False: the defaults were kept
    reason: str                  # one line for the learner


def _histories(logs: list[ReviewLog]) -> dict[int, list[ReviewLog]]:
    by_card: dict[int, list[ReviewLog]] = {}
    for log in sorted(logs, key=lambda r: (r.card_id, r.review_datetime)):
        by_card.setdefault(log.card_id, []).append(log)
    return by_card


def _replay(logs: list[ReviewLog], parameters) -> list[tuple[float, int]]:
    """(predicted retrievability, recalled) for every review on a later day than the card's previous review."""
    scheduler = Scheduler(parameters=tuple(parameters), enable_fuzzing=False)
    out = []
    for history in _histories(logs).values():
        card = Card(card_id=history[0].card_id, due=history[0].review_datetime)
        for log in history:
            if card.last_review is not None and (log.review_datetime - card.last_review).days > 0:
                out.append((scheduler.get_card_retrievability(card, log.review_datetime),
                            int(log.rating != Rating.Again)))
            card, _ = scheduler.review_card(card, log.rating, review_datetime=log.review_datetime)
    return out


def count_reviews(logs: list[ReviewLog]) -> int:
    """How many reviews the Optimizer learns from (on a later day than the card's previous review)."""
    count = 0
    for history in _histories(logs).values():
        count += sum((b.review_datetime - a.review_datetime).days > 0 for a, b in zip(history, history[1:]))
    return count


def evaluate(logs: list[ReviewLog], parameters=DEFAULT_PARAMETERS) -> Fit | None:
    """Log loss and RMSE of `parameters`' recall predictions on this history; None when there is nothing to score."""
    pairs = _replay(logs, parameters)
    if not pairs:
        return None
    eps = 1e-7              # BCELoss clamps log() at -100; clamping p keeps one certain miss from dominating
    loss = -sum(y * math.log(max(p, eps)) + (1 - y) * math.log(max(1 - p, eps)) for p, y in pairs) / len(pairs)
    rmse = math.sqrt(sum((p - y) ** 2 for p, y in pairs) / len(pairs))
    return Fit(loss, rmse, len(pairs))


def optimize(logs: list[ReviewLog], min_reviews: int = MIN_REVIEWS) -> OptimizeResult:
    """Fit parameters to `logs`; keep the defaults below `min_reviews`, or when the fit does not predict this history
    better than they do."""
    n = count_reviews(logs)
    before = evaluate(logs)
    if n < min_reviews:
        return OptimizeResult(tuple(DEFAULT_PARAMETERS), before, before, n, False,
                              f"only {n} reviews on a later day than the card's previous one; FSRS's optimizer needs "
                              f"at least {min_reviews}, so the default parameters stay (keep reviewing and run "
                              f"--optimize again)")
    from fsrs import Optimizer
    fitted = tuple(Optimizer(logs).compute_optimal_parameters())
    after = evaluate(logs, fitted)
    if after.log_loss >= before.log_loss:
        return OptimizeResult(tuple(DEFAULT_PARAMETERS), before, before, n, False,
                              "the fitted parameters predict this history no better than the defaults; "
                              "the defaults stay")
    return OptimizeResult(fitted, before, after, n, True, f"fitted on {n} reviews")


def logs_from_store(store) -> list[ReviewLog]:
    """The store's review log as fsrs.ReviewLog objects (card id, rating, time, duration)."""
    return [ReviewLog(card_id=r.card_id, rating=r.rating, review_datetime=r.reviewed_at,
                      review_duration=r.duration_ms) for r in store.reviews()]


def describe(result: OptimizeResult) -> list[str]:
    """What --optimize prints."""
    def fit(f: Fit | None) -> str:
        return "-" if f is None else f"log loss {f.log_loss:.4f}, RMSE {f.rmse:.4f}"
    if not result.fitted:
        return [f"Kept the default FSRS parameters: {result.reason}.",
                f"Defaults on your history: {fit(result.before)}."]
    return [f"Fitted FSRS to your {result.reviews} reviews and saved the parameters; later sessions use them.",
            f"Defaults: {fit(result.before)}",
            f"Fitted:   {fit(result.after)}"]


