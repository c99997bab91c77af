"""Benchmarks: ``jaxmerge bench merge`` (merge throughput vs the matmul peak and PEFT) and
``jaxmerge bench train`` (coefficient-training throughput, where this build has it)."""
