"""bench/learning_ceiling.py: the offline ceiling of the features against a table of the hidden
cells, fitted on the same uniformly logged users."""

from __future__ import annotations

from bench.learning_ceiling import one_seed, parser


def test_the_cell_table_learns_the_world_and_the_fitted_features_learn_much_of_it():
    args = parser().parse_args(["--world", "teams", "--users", "1500", "--epochs", "40"])
    args.eval_users = 600
    run = one_seed(args, seed=1)
    assert set(run) == {"seed", "features", "cells"}
    # from 1,500 users the table of the hidden cells finds most of the oracle's gain (seed 1:
    # 0.69); the wide scorer, which must find the cells in its hashed crosses, finds less (0.48),
    # and far more than the static flow
    assert run["cells"] > 0.6, run
    assert 0.2 < run["features"] < run["cells"], run


def test_bad_arguments_are_refused_with_the_flags_named():
    import pytest

    from bench.learning_ceiling import main

    for argv in (["--users", "0"], ["--epochs", "-1"], ["--workers", "0"]):
        with pytest.raises(SystemExit, match="--users, --epochs, --eval-users and --workers"):
            main(argv)
