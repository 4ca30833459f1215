"""The only package that imports Ray: runtime init, Ray Train wiring, the soft-target actor pool
on Ray Data, and scoring tasks. It places work; the core does it."""
