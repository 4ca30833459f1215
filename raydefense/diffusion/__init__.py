"""Diffusion core: schedule math, UNet builder, samplers, EMA, objectives, checkpoints, training."""
