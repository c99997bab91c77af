"""Multi-host start-up: ``jax.distributed.initialize`` exactly when the environment says so.

Call ``maybe_initialize()`` first thing in a program that may run on several hosts (the experiment
entry points do). It initialises when one of these is present, and is a no-op on one machine:

* ``JAX_COORDINATOR_ADDRESS`` (+ ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``): explicit, any cluster;
* ``SLURM_JOB_ID`` with ``SLURM_NTASKS`` > 1: jax reads SLURM's variables itself;
* ``TPU_WORKER_HOSTNAMES`` naming several hosts, or ``MEGASCALE_COORDINATOR_ADDRESS``: a TPU pod
  slice (jax finds its peers through the TPU metadata).

Launching — one process per host, the same command everywhere:

    # a multi-GPU node: one process drives all local GPUs, no initialisation needed
    python -m experiments.adaptive --method ours --base meta-llama/Llama-3.1-8B-Instruct ...
    # several GPU nodes (N hosts, host i):
    JAX_COORDINATOR_ADDRESS=host0:1234 JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i python -m experiments.adaptive ...
    # a TPU pod slice (every worker):
    gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd jaxmerge && python -m experiments.adaptive ..."
"""

from __future__ import annotations

import os


def wanted(env=os.environ) -> bool:
    """Whether the environment describes a multi-process job."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return len(hosts) > 1 or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def maybe_initialize(env=os.environ) -> bool:
    """Initialise jax.distributed when ``wanted``; returns whether it did."""
    if not wanted(env):
        return False
    import jax
    kw = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kw = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kw)
    return True
