"""Hardware presets: how a run is placed on a machine or cluster (the `resources` section only),
composed with an experiment preset on the command line: `--preset digits --preset cpu2`."""
