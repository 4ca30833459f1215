"""The audit: which targets are attacked on which rows by which attacks, scoring, learned-attack
fits, utility, results rows and the selection rules (worst case, Pareto front). No Ray: work is
placed through the `Scorer` role (`raydefense.audit.scoring`)."""
