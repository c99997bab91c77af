"""Multi-host initialisation: two local processes on loopback form one jax cluster."""

import os
import socket
import subprocess
import sys

from jaxmerge.distributed import wanted

CHILD = """
import jax
from jaxmerge.distributed import maybe_initialize
assert maybe_initialize()
print(jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
jax.distributed.shutdown()
"""


def test_wanted_reads_the_environment():
    assert not wanted({})
    assert not wanted({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"})
    assert wanted({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert wanted({"JAX_COORDINATOR_ADDRESS": "h:1"})
    assert not wanted({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert wanted({"TPU_WORKER_HOSTNAMES": "a,b"})


def test_two_processes_form_one_cluster():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    lines = sorted(o.strip().splitlines()[-1] for o, _ in outs)
    assert lines == ["0 2 2", "1 2 2"]
