"""A run of the pipeline: its context and the roles that place heavy work, completion markers,
fingerprints, and session setup. Below the stages and sweeps; knows nothing of Ray."""
