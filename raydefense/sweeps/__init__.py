"""Sweeps over the pipeline: attack-grid sweeps (`attacks`: one Tune trial per attack setting
over stored scores), training sweeps (`training`: one pipeline per training grid point), and the
training-seed study (`seeds`). Trials run through the run's `trials` role (Ray Tune)."""
