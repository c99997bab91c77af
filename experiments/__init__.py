"""Experiments: the embedded default world (``experiments.world``), its synthetic task families and
training (``synthetic``, ``world_train``, ``world_build``), and the study entry points built on them."""
