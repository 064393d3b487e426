"""`llmstudy review --optimize`: py-fsrs's Optimizer on the learner's own history.

The oracle is a synthetic learner whose memory follows FSRS with known parameters (TRUE: initial stabilities four
times the defaults, a slower forgetting curve than the defaults assume): ratings are drawn from the true
retrievability at each review time. Everything is seeded, and the Optimizer seeds itself (Random(42)), so each run
gives the same numbers.
"""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from fsrs import Card, Rating, ReviewLog, Scheduler
from fsrs.scheduler import DEFAULT_PARAMETERS

from llmstudy import cli
from llmstudy.cards import optimize as opt
from llmstudy.cards import review as rv
from llmstudy.cards.store import Store

TRUE = [p * 4 for p in DEFAULT_PARAMETERS[:4]] + \
    list(DEFAULT_PARAMETERS[4:])
TRUE[8] = DEFAULT_PARAMETERS[8] * 1.5        # w8: stability grows faster after each recall
START = datetime(2026, 1, 5, 9, tzinfo=timezone.utc)


def synthetic(parameters, seed: int, n_cards: int = 100, reviews_per_card: int = 9):
    """(card id, rating, time) of a learner whose recall at each review is a draw from FSRS(parameters)'s
    retrievability; review times follow that scheduler's due dates, 0-1.5x early or late."""
    rng = random.Random(seed)
    truth = Scheduler(parameters=tuple(parameters), enable_fuzzing=False)
    history = []
    for card_id in range(1, n_cards + 1):
        card = Card(card_id=card_id, due=START)
        t = START + timedelta(hours=rng.randrange(0, 24 * 30))
        for _ in range(reviews_per_card):
            if card.last_review is None:
                rating = rng.choice([Rating.Again, Rating.Good, Rating.Good, Rating.Easy])
            else:
                recalled = rng.random() < truth.get_card_retrievability(card, t)
                rating = rng.choice([Rating.Hard, Rating.Good, Rating.Good, Rating.Easy]) if recalled else Rating.Again
            history.append((card_id, rating, t))
            card, _ = truth.review_card(card, rating, review_datetime=t)
            t = max(card.due, t + timedelta(minutes=1)) + (card.due - t) * rng.uniform(0.0, 1.5)
    return history


def as_logs(history) -> list[ReviewLog]:
    return [ReviewLog(card_id=c, rating=r, review_datetime=t, review_duration=None) for c, r, t in history]


@pytest.fixture(scope="module")
def fitted():
    train = as_logs(synthetic(TRUE, seed=1))
    return train, opt.optimize(train)


def test_fitted_parameters_predict_held_out_history_better_than_the_defaults(fitted):
    """Fitted on one synthetic history, scored on another from the same learner (seed 2): lower log loss and RMSE
    than the defaults on both."""
    train, result = fitted
    assert result.fitted and result.reviews >= opt.MIN_REVIEWS
    assert result.after.log_loss < result.before.log_loss and result.after.rmse < result.before.rmse
    held_out = as_logs(synthetic(TRUE, seed=2))
    default, ours = opt.evaluate(held_out), opt.evaluate(held_out, result.parameters)
    assert ours.log_loss < default.log_loss and ours.rmse < default.rmse
    assert tuple(result.parameters) != tuple(DEFAULT_PARAMETERS)


def test_a_learner_who_matches_the_defaults_keeps_them_or_gains_nothing_spurious():
    """Data drawn from the defaults themselves: whatever is chosen may not score worse than the defaults."""
    logs = as_logs(synthetic(DEFAULT_PARAMETERS, seed=3))
    result = opt.optimize(logs)
    assert result.after.log_loss <= result.before.log_loss


def test_below_the_optimizers_minimum_the_defaults_stay_and_the_reason_is_given():
    logs = as_logs(synthetic(TRUE, seed=4, n_cards=10))
    result = opt.optimize(logs)
    assert opt.count_reviews(logs) < opt.MIN_REVIEWS
    assert not result.fitted and result.parameters == tuple(DEFAULT_PARAMETERS)
    assert f"needs at least {opt.MIN_REVIEWS}" in result.reason and str(result.reviews) in result.reason


def test_our_minimum_and_review_count_are_the_optimizers():
    """MIN_REVIEWS is fsrs.optimizer's mini-batch size, below which compute_optimal_parameters returns the
    defaults; our count of usable reviews is the one it uses."""
    import fsrs.optimizer
    from fsrs import Optimizer
    assert opt.MIN_REVIEWS == fsrs.optimizer.mini_batch_size
    few = as_logs(synthetic(TRUE, seed=4, n_cards=10))
    assert Optimizer(few).compute_optimal_parameters() == list(DEFAULT_PARAMETERS)


def test_log_loss_and_rmse_of_perfect_and_hopeless_predictions():
    """The scoring on two one-card histories whose prediction we know: recalled one day later."""
    logs = [ReviewLog(1, Rating.Good, START, None), ReviewLog(1, Rating.Good, START + timedelta(days=1), None)]
    fit = opt.evaluate(logs)
    scheduler = Scheduler(enable_fuzzing=False)
    card, _ = scheduler.review_card(Card(card_id=1, due=START), Rating.Good, review_datetime=START)
    p = scheduler.get_card_retrievability(card, START + timedelta(days=1))
    import math
    assert fit.reviews == 1
    assert fit.log_loss == pytest.approx(-math.log(p), rel=1e-12) and fit.rmse == pytest.approx(1 - p, rel=1e-12)


def _store_with_history(db, history) -> None:
    """The synthetic history written into a review database through the real rating path."""
    keys = sorted({c for c, _, _ in history})
    with Store.open(db) as store:
        store.sync([(f"concept-{k}", k) for k in keys])
        scheduler = rv.make_scheduler()
        for card_id, rating, t in sorted(history, key=lambda h: h[2]):
            card = next(c for c in store.cards() if c.concept_id == f"concept-{card_id}")
            rv.rate(store, scheduler, card, rating, t)


def test_cli_optimize_reports_before_and_after_and_later_sessions_use_the_fit(tmp_path, monkeypatch):
    from llmstudy.cards.data import Concept
    db = tmp_path / "review.sqlite3"
    history = synthetic(TRUE, seed=1)
    _store_with_history(db, history)
    result = CliRunner().invoke(cli.main, ["review", "--db", str(db), "--optimize", "--now", START.isoformat()])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("Fitted FSRS to your") and "log loss" in lines[1] and "RMSE" in lines[2], lines
    with Store.open(db) as store:
        saved = store.parameters()
        assert saved is not None and saved[2] == opt.count_reviews(opt.logs_from_store(store))
        assert rv.store_scheduler(store).parameters == tuple(saved[0])


def test_cli_optimize_on_a_short_history_keeps_the_defaults_and_says_why(tmp_path):
    db = tmp_path / "review.sqlite3"
    _store_with_history(db, synthetic(TRUE, seed=4, n_cards=3))
    result = CliRunner().invoke(cli.main, ["review", "--db", str(db), "--optimize"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Kept the default FSRS parameters: only") and "needs at least 512" in \
        result.output
    with Store.open(db) as store:
        assert store.parameters() is None
        assert rv.store_scheduler(store).parameters == tuple(DEFAULT_PARAMETERS)
