"""XLA:CPU's float32 GEMM library, chosen per compiled executable: which library runs a jitted dot,
and compiling one program with oneDNN's.

jax 0.10's XLA:CPU sends dots to YNNPACK (``__ynn_fusion``). oneDNN (``__onednn_fusion``) is linked
into jaxlib but off; the three ``ONEDNN_DOT_OPTIONS`` together turn it on (each alone changes
nothing). They are XLA debug options, so they can be given to one compilation
(``lowered.compile(compiler_options=...)``) instead of to the whole process through ``XLA_FLAGS``:
``compile`` does that, and every other program keeps XLA's default.

Why per executable: on the AVX-512 machine of BUILD_NOTES oneDNN runs the merge's
``[out, R] × [R, in]`` products at torch/MKL's speed, ~1.2× YNNPACK's (``jaxmerge bench merge``:
0.75–0.84 of the machine's peak against 0.62–0.72), with the same result. But XLA's oneDNN
fusion is experimental: when an elementwise product of two entry parameters feeds a dot (``u @ (v *
s[:, None])``) it pulls the multiply into the oneDNN partition, fails to compile it ("partition
compile failed") and the process dies of SIGILL (jax 0.10.2) — TSV's programs have that pattern,
and nothing keeps other programs from having it. ``linear_layer_into`` does not (its row scaling is fused with the layer's
dynamic slice, so oneDNN gets two plain operands; tested over shapes of both orientations), so
it is the program ``jaxmerge bench merge`` compiles with oneDNN, by default on x86-64.

``dot_backend`` reads a compiled executable's HLO, so a caller reports what actually ran.
"""

from __future__ import annotations

import os
import platform

# XLA DebugOptions for one compilation (the XLA_FLAGS spelling: --xla_cpu_experimental_ynn_fusion_type=
# --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot)
ONEDNN_DOT_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_onednn": True,
                      "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
# any of these in XLA_FLAGS means the user chose the dot library: "auto" leaves it alone
DOT_CHOICE_FLAGS = frozenset({
    "xla_cpu_experimental_ynn_fusion_type", "xla_cpu_use_onednn", "xla_cpu_experimental_onednn_fusion_type",
    "xla_cpu_experimental_onednn_custom_call", "xla_cpu_experimental_xnn_fusion_type",
    "xla_cpu_experimental_xnn_graph_fusion_mode", "xla_cpu_use_xnnpack"})
OPT_OUT = "JAXMERGE_XLA_CPU_DOT"  # =default: "auto" keeps XLA's own choice
DOT_CHOICES = ("auto", "default", "onednn")


def flag_names(flags: str) -> set[str]:
    """The flag names in an ``XLA_FLAGS`` string: ``"--a=1 --b"`` → ``{"a", "b"}``."""
    return {f.lstrip("-").split("=", 1)[0] for f in flags.split()}


def dot_options(dot: str = "auto", platform_name: str | None = None) -> dict:
    """XLA compiler options for a program's dots on ``platform_name`` (default: JAX's default
    backend; any other than ``"cpu"`` gets ``{}``): ``"default"`` → ``{}`` (XLA's choice),
    ``"onednn"`` → ``ONEDNN_DOT_OPTIONS``, ``"auto"`` → oneDNN's on an x86-64 machine unless
    ``$JAXMERGE_XLA_CPU_DOT=default`` or ``XLA_FLAGS`` (a dot library named there) says otherwise,
    else ``{}``. Only for programs known to compile under oneDNN (module docstring)."""
    if dot not in DOT_CHOICES:
        raise ValueError(f"dot={dot!r}: expected one of {DOT_CHOICES}")
    if platform_name is None:
        import jax
        platform_name = jax.default_backend()
    if dot == "default" or platform_name != "cpu":
        return {}
    if dot == "onednn":
        return dict(ONEDNN_DOT_OPTIONS)
    if os.environ.get(OPT_OUT, "").lower() == "default":
        return {}
    if platform.machine().lower() not in ("x86_64", "amd64"):  # oneDNN's fast kernels are x86's
        return {}
    if flag_names(os.environ.get("XLA_FLAGS", "")) & DOT_CHOICE_FLAGS:
        return {}
    return dict(ONEDNN_DOT_OPTIONS)


def compile(lowered, dot: str = "auto"):  # noqa: A001 — used as xla_cpu.compile
    """``lowered.compile()`` (a ``jax.stages.Lowered`` for JAX's default backend) with ``dot_options(dot)``:
    e.g. ``xla_cpu.compile(merge.linear_layer_into.lower(buf, stack, w, 0))``. The options are part
    of JAX's compilation-cache key, and a oneDNN executable is never written to JAX's persistent
    cache anyway (jax 0.10 warns "ToProto is not implemented for thunk kind: onednn-fusion"), so a
    process with that cache on recompiles it (~0.1 s per module at 8B shapes).
    With ``dot="auto"``, a jaxlib that rejects the options (renamed in a later XLA) gets XLA's
    default and a warning; with ``dot="onednn"`` the error is raised."""
    import warnings

    import jax
    options = dot_options(dot)
    if not options:
        return lowered.compile()
    try:
        with warnings.catch_warnings():
            # Known and harmless (docstring): jax cannot persist a oneDNN executable and says so as a cache
            # *write error* that reads like a failure; the program is compiled and runs. Only that one is hidden.
            warnings.filterwarnings("ignore", message=r"(?s)Error writing persistent compilation cache entry.*"
                                    r"ToProto is not implemented for thunk kind: onednn-fusion")
            return lowered.compile(compiler_options=options)
    except jax.errors.JaxRuntimeError as e:  # INVALID_ARGUMENT for an option this XLA does not know
        if dot != "auto":
            raise
        warnings.warn(f"jaxmerge.xla_cpu: this jaxlib rejects the oneDNN dot options ({e}); using XLA's default",
                      RuntimeWarning, stacklevel=2)
        return lowered.compile()


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
