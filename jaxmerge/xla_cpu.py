"""XLA:CPU's float32 GEMM: which library runs a jitted dot, and asking for oneDNN's.

jax 0.10's XLA:CPU sends dots to YNNPACK (``__ynn_fusion``); oneDNN (``__onednn_fusion``) is linked
into jaxlib but off, and only the three ``ONEDNN_DOT_FLAGS`` together turn it on (each of them alone
changes nothing: the dot stays YNNPACK's). On the AVX-512 machine of BUILD_NOTES oneDNN ran the
merge's ``[out, R] × [R, in]`` products up to 1.25× faster (ahead in 2 of 3 paired runs; the host's
noise is larger), at torch/MKL's speed for 4096³, with the same result (1.1e-6 from a float64 reference, like YNNPACK). But XLA's oneDNN fusion is
experimental: under it TSV's compiled program died with SIGILL ("partition compile failed", jax
0.10.2). So nothing in jaxmerge turns it on by default: ``jaxmerge bench merge --xla-cpu-dot
onednn`` uses it for the linear merge only, and a user may call ``prefer_onednn_dot`` at the top of
a program that only does linear merges. The flags are read once, when JAX starts its CPU backend;
``dot_backend`` reads a compiled executable's HLO, so a caller reports what actually ran.
"""

from __future__ import annotations

import os
import platform

ONEDNN_DOT_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=", "--xla_cpu_use_onednn=true",
                    "--xla_cpu_experimental_onednn_fusion_type=dot")
# any of these in XLA_FLAGS means the user chose the dot library: leave it alone
DOT_CHOICE_FLAGS = frozenset({
    "xla_cpu_experimental_ynn_fusion_type", "xla_cpu_use_onednn", "xla_cpu_experimental_onednn_fusion_type",
    "xla_cpu_experimental_onednn_custom_call", "xla_cpu_experimental_xnn_fusion_type",
    "xla_cpu_experimental_xnn_graph_fusion_mode", "xla_cpu_use_xnnpack"})
OPT_OUT = "JAXMERGE_XLA_CPU_DOT"  # =default keeps XLA's own choice


def flag_names(flags: str) -> set[str]:
    """The flag names in an ``XLA_FLAGS`` string: ``"--a=1 --b"`` → ``{"a", "b"}``."""
    return {f.lstrip("-").split("=", 1)[0] for f in flags.split()}


def prefer_onednn_dot() -> bool:
    """Append ``ONEDNN_DOT_FLAGS`` to ``XLA_FLAGS`` so that XLA:CPU runs float dots through oneDNN.
    Linear merges only: TSV crashed under it (module docstring).

    Does nothing (returns False) when the machine is not x86-64 (oneDNN's fast kernels are x86),
    when ``XLA_FLAGS`` already names a dot library, or when ``$JAXMERGE_XLA_CPU_DOT=default``.
    Returns True when it changed ``XLA_FLAGS``; that only takes effect if JAX's CPU backend has not
    started yet (check with ``dot_backend``). Harmless on GPU/TPU: the flags are XLA:CPU's.
    """
    if os.environ.get(OPT_OUT, "").lower() == "default":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if flag_names(flags) & DOT_CHOICE_FLAGS:
        return False
    os.environ["XLA_FLAGS"] = " ".join([flags, *ONEDNN_DOT_FLAGS]).strip()
    return True


def dot_backend(compiled) -> str:
    """The library that runs the dots of a compiled executable (``jax.stages.Compiled``), from its
    optimized HLO: ``"onednn"``, ``"ynnpack"``, ``"xnnpack"``, ``"xla"`` (XLA's own emitter or a
    non-CPU backend's GEMM), or ``"unknown"`` (the backend gives no HLO text)."""
    text = compiled.as_text()
    if not text:
        return "unknown"
    for tag, name in (("__onednn_fusion", "onednn"), ("__ynn_fusion", "ynnpack"), ("__xnn_fusion", "xnnpack")):
        if tag in text:
            return name
    return "xla"
