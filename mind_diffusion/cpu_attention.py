"""Fused attention on CPU: a MindSpore ``aot`` Custom operator built from ``attention_cpu.cc``.

MindSpore 2.10 has no fused attention kernel for the CPU. The composed path (``q k^T``, softmax,
``p v``, each a separate kernel, with the heads transposed in and out) streams the whole score
matrix through memory three times: 1 GiB at the SD-v1 UNet's 64x64 latent positions (batch 2,
8 heads). The kernel here computes the same thing block by block in the core's cache (see the
``.cc`` file) and reads q, k, v in the layout the projections write, (B, N, heads, dim_head).
Measured on the 2-core CI CPU (``bench/attention.py``): 4096 x 320 positions x channels 0.70 s
composed, 0.48 s PyTorch SDPA, ~0.36 s fused.

How it is built: on first use the source is compiled with the system C++ compiler (``$CXX``,
else ``g++`` / ``c++``; ``-O3 -march=native``) against MindSpore's own oneDNN
(``mindspore/lib/libdnnl.so.*``, its ``dnnl_sgemm``) into
``$MIND_DIFFUSION_KERNEL_CACHE`` (default ``~/.cache/mind_diffusion/kernels``)``/<key>/``, the key
hashing the source, the compiler (its resolved file, size and time), the flags, the oneDNN file and this CPU's model and flags (a home
folder shared by machines of different CPUs gets one library per CPU). The library is written
to a temporary name and renamed, so concurrent processes never load a half-written file.

Used by the LDM UNet's attention (channels last), GLIDE's attention blocks and the autoencoder's
(channels first). When it is used: on the CPU device (inputs cast to float32), unless
``MIND_DIFFUSION_FUSED_ATTENTION=off`` (also ``0``/``false``/``no``). Where the library cannot be
built (no compiler, no oneDNN in MindSpore's lib folder, not Linux) the networks use the composed
path and one note says why. Results agree with the composed path to float32 rounding (the
softmax's sum and the normalisation happen in another order); a backward (``bprop``) composed of
MindSpore ops makes it trainable.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

SOURCE = Path(__file__).with_name("attention_cpu.cc")
FUNC = "MindDiffusionAttention"
ENV_SWITCH = "MIND_DIFFUSION_FUSED_ATTENTION"
ENV_THREADS = "MIND_DIFFUSION_ATTENTION_THREADS"
ENV_CACHE = "MIND_DIFFUSION_KERNEL_CACHE"
OFF_VALUES = ("0", "off", "false", "no", "none")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-std=c++17", "-shared",
         "-fPIC", "-pthread"]

_state: dict = {}


def kernel_root() -> Path:
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mind_diffusion" / "kernels"


def _dnnl_library() -> Path | None:
    import mindspore

    libs = sorted((Path(mindspore.__file__).resolve().parent / "lib").glob("libdnnl.so*"))
    return libs[-1] if libs else None


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    keep = []
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and line not in keep:
            keep.append(line)
    return "\n".join(keep) or platform.machine()


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        return shutil.which(cxx) or (cxx if Path(cxx).is_file() else None)
    return shutil.which("g++") or shutil.which("c++")


def build_kernel(source: Path, stem: str, link: list[str], ident: list[bytes], what: str) -> tuple[Path | None, str]:
    """Compile ``source`` into ``<kernel cache>/<key>/<stem>.so`` (or find it there) and return
    (library, "") or (None, why). The key hashes the source, the compiler (its resolved file, size
    and time), the flags, ``ident`` (the libraries linked) and this CPU. Written under a temporary
    name and renamed, so concurrent processes never load a half-written file. A kernel folder that
    ``$MS_CUSTOM_AOT_WHITE_LIST`` does not hold is refused (MindSpore would not load it)."""
    if not sys.platform.startswith("linux"):
        return None, f"the {what} is built for Linux only (this is {sys.platform})"
    cxx = _compiler()
    if cxx is None:
        return None, f"no C++ compiler (install g++ or set CXX) to build the {what}"
    # the compiler's identity without running it (this runs at every start): its resolved file,
    # size and modification time, which an upgrade changes
    real = Path(cxx).resolve()
    stat = real.stat()
    compiler = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    h = hashlib.sha256()
    for part in (source.read_bytes(), compiler.encode(), " ".join(FLAGS).encode(), *ident,
                 _cpu_signature().encode(), platform.machine().encode()):
        h.update(part + b"\0")
    folder = kernel_root() / h.hexdigest()[:20]
    lib = folder / f"{stem}.so"
    refused = _check_white_list(lib)
    if refused:
        return None, refused
    if lib.is_file():
        return lib, ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, f"cannot create {folder} ({exc.strerror}); set {ENV_CACHE} to a writable folder"
    tmp = folder / f".{stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.so"
    cmd = [cxx, *FLAGS, "-o", str(tmp), str(source), *link]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        tmp.unlink(missing_ok=True)
        return None, f"building the {what} failed ({exc})"
    if res.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        first = (res.stderr.strip().splitlines() or ["no output"])[0]
        return None, f"building the {what} failed ({cxx}: {first})"
    os.replace(tmp, lib)
    return lib, ""


def _check_white_list(lib: Path) -> str:
    """Why MindSpore would refuse to load ``lib`` (``$MS_CUSTOM_AOT_WHITE_LIST``), or ""."""
    # MindSpore (ops.Custom) refuses an aot library outside $MS_CUSTOM_AOT_WHITE_LIST (one folder)
    # when that is set; it is the user's security setting, so it is kept
    allowed = os.environ.get("MS_CUSTOM_AOT_WHITE_LIST")
    if allowed is not None:
        root = os.path.realpath(allowed)
        if os.path.commonpath([os.path.realpath(lib), root]) != root:
            return (f"MS_CUSTOM_AOT_WHITE_LIST={allowed} does not hold the kernel folder "
                    f"{lib.parent}; set {ENV_CACHE} to a folder inside it")
    return ""


def _build() -> tuple[Path | None, str]:
    if os.environ.get(ENV_SWITCH, "").strip().lower() in OFF_VALUES:
        return None, f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    dnnl = _dnnl_library()
    if dnnl is None:
        return None, "MindSpore's lib folder has no libdnnl.so (oneDNN) to link the fused kernel against"
    return build_kernel(SOURCE, "attention_cpu",
                        [f"-L{dnnl.parent}", f"-l:{dnnl.name}", f"-Wl,-rpath,{dnnl.parent}"],
                        [dnnl.name.encode(), str(dnnl.stat().st_size).encode()], "fused CPU kernel")


def library() -> Path | None:
    """The built kernel library, or None (``unavailable_reason()`` says why). Built once per
    process (and once per machine and source version, in the kernel cache)."""
    if "lib" not in _state:
        _state["lib"], _state["why"] = _build()
    return _state["lib"]


@contextlib.contextmanager
def switched_off(state: dict, switch: str):
    """Inside the block, ``switch`` (an environment variable) is "off" and ``state`` (a kernel module's
    built state) empty, so networks built there use MindSpore's own kernels; afterwards both are as
    before (for tests and benches that compare the two paths)."""
    saved_state, saved_env = dict(state), os.environ.get(switch)
    os.environ[switch] = "off"
    state.clear()
    try:
        yield
    finally:
        state.clear()
        state.update(saved_state)
        if saved_env is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = saved_env


def composed():
    """Inside the block, networks built use MindSpore's composed attention kernels (the path of GPU and
    Ascend), as with ``MIND_DIFFUSION_FUSED_ATTENTION=off``; afterwards the switch and the built state
    are as before."""
    return switched_off(_state, ENV_SWITCH)


def unavailable_reason() -> str:
    library()
    return _state.get("why", "")


def threads_problem() -> str:
    """What is wrong with ``MIND_DIFFUSION_ATTENTION_THREADS`` ("" when unset or a positive integer:
    the kernel's worker threads; any other value is ignored, the kernel uses every CPU the process
    may use)."""
    raw = os.environ.get(ENV_THREADS)
    if raw is None or raw == "":
        return ""
    if raw.isascii() and raw.isdigit() and 0 < int(raw) < 1 << 16:
        return ""
    return (f"{ENV_THREADS}={raw!r} is not a positive whole number; the fused attention uses every CPU the "
            f"process may use (set it to e.g. 2, or unset it)")


def kernel_ready(state: dict, library, switch: str, note: str) -> bool:
    """Whether a kernel module applies to networks built now: the CPU device and its library.
    ``library`` is the module's builder (called only on the CPU device, so other devices never run
    the compiler); it stores why it has no library under ``state["why"]``. Without the library
    (and not switched off by ``switch``), says ``note: why`` once."""
    import mindspore as ms

    if ms.get_context("device_target") != "CPU":
        return False
    if library() is None:
        why = state.get("why", "")
        if not state.get("told") and not why.startswith(switch):
            state["told"] = True
            print(f"note: {note}: {why}", file=sys.stderr)
        return False
    return True


def enabled() -> bool:
    """Whether networks built now use the fused kernel: CPU device and a library."""
    if not kernel_ready(_state, library, ENV_SWITCH, "attention uses the composed MindSpore kernels"):
        return False
    problem = threads_problem()
    if problem and _state.get("told_threads") != problem:
        _state["told_threads"] = problem
        print(f"warning: {problem}", file=sys.stderr)
    return True


def key_part() -> str:
    """What the compile cache key needs to know (graphs with and without the kernel differ)."""
    lib = library()
    return f"fused:{lib.parent.name}" if lib is not None else "composed"


LAYOUTS = ("channels_last", "channels_first")


def _make_op(layout: str):
    import mindspore as ms
    from mindspore import ops

    bmm_nt = ops.BatchMatMul(transpose_b=True)
    bmm_tn = ops.BatchMatMul(transpose_a=True)
    bmm = ops.BatchMatMul()
    softmax = ops.Softmax(axis=-1)

    def bprop_last(q, k, v, out, dout):
        # recompute P = softmax(q k^T) per head; dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)),
        # dQ = dS K, dK = dS^T Q. Layout (B, heads, positions, dim) for the batched matmuls.
        qh, kh, vh = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        doh, oh = dout.transpose(0, 2, 1, 3), out.transpose(0, 2, 1, 3)
        p = softmax(bmm_nt(qh, kh))
        dv = bmm_tn(p, doh)
        rowsum = (doh * oh).sum(axis=-1, keepdims=True)
        ds = p * (bmm_nt(doh, vh) - rowsum)
        dq = bmm(ds, kh)
        dk = bmm_tn(ds, qh)
        return dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)

    def bprop_first(q, k, v, out, dout):
        # q (G, D, N), k / v (G, D, M): P = softmax(q^T k) (G, N, M), O = V P^T; dV = dO P,
        # dS = P * (dO^T V - colsum(dO * O)^T), dQ = K dS^T, dK = Q dS
        p = softmax(bmm_tn(q, k))
        dv = bmm(dout, p)
        rowsum = (dout * out).sum(axis=1).expand_dims(-1)
        ds = p * (bmm_tn(dout, v) - rowsum)
        return bmm_nt(k, ds), bmm(q, ds), dv

    func, bprop = (FUNC, bprop_last) if layout == "channels_last" else (FUNC + "CF", bprop_first)
    return ops.Custom(f"{library()}:{func}", out_shape=lambda q, k, v: q,
                      out_dtype=lambda q, k, v: ms.float32, func_type="aot", bprop=bprop)


def fused_attention_op(layout: str = "channels_last"):
    """A Custom primitive ``op(q, k, v) -> o``, all float32, the scale already applied, or None
    when :func:`enabled` is False (another device, ``MIND_DIFFUSION_FUSED_ATTENTION=off``, or no
    library).

    - ``channels_last``: q (B, N, heads, dim), k and v (B, M, heads, dim), o (B, N, heads, dim);
    - ``channels_first``: q (G, dim, N), k and v (G, dim, M), o (G, dim, N), G = batch x heads
      (the layout of 1x1-convolution projections: GLIDE's attention, the VAE's)."""
    if layout not in LAYOUTS:
        raise ValueError(f"fused attention layout must be one of {LAYOUTS}, got {layout!r}")
    if not enabled():
        return None
    return _make_op(layout)
