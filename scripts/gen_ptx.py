#!/usr/bin/env python3
"""Compiles Veil's CUDA kernels (kernels/cuda/veil.cu) to PTX with NVRTC.

    python3 scripts/gen_ptx.py            # (re)writes kernels/ptx/veil.sm_80.ptx, veil.sm_90a.ptx
    python3 scripts/gen_ptx.py --check    # compiles in memory; fails if a kernel does not
                                          # compile, warns, lacks its .entry, or the PTX is stale
    python3 scripts/gen_ptx.py --resources  # also assembles SASS and prints registers/spills

NVRTC comes from the pip wheel nvidia-cuda-nvrtc-cu12 at the version pinned below, installed on
first use with `python3 -m pip install --target` into ~/.cache/veil/nvrtc-<version> (override
with VEIL_NVRTC_DIR). No CUDA toolkit or GPU is needed. The output depends only on the sources,
the options and the NVRTC version, so the committed PTX can be checked for staleness anywhere.
"""

import argparse
import ctypes
import glob
import os
import subprocess
import sys
import tempfile

NVRTC_VERSION = "12.9.86"  # nvidia-cuda-nvrtc-cu12; PTX ISA 8.8, needs a driver >= 575
WHEEL = "nvidia-cuda-nvrtc-cu12"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_DIR = os.path.join(ROOT, "kernels", "cuda")
PTX_DIR = os.path.join(ROOT, "kernels", "ptx")
MAIN = "veil.cu"

# (output file, NVRTC virtual architecture, real architecture for --resources)
TARGETS = [
    ("veil.sm_80.ptx", "compute_80", "sm_80"),
    ("veil.sm_90a.ptx", "compute_90a", "sm_90a"),
]
OPTIONS = ["--std=c++17", "-default-device"]

# The ABI (kernels/cuda/ABI.md); each must be a .entry of every PTX module.
KERNELS = [
    "veil_embed",
    "veil_add_rmsnorm",
    "veil_rmsnorm_rows",
    "veil_rope_kv",
    "veil_attention_decode",
    "veil_attention_reduce",
    "veil_attention_prefill",
    "veil_silu_mul",
    "veil_sample",
    "veil_gcm_verify",
    "veil_gcm_decrypt",
    "veil_gcm_seal",
]

STALE = "stale: run python3 scripts/gen_ptx.py"


def fail(msg):
    print(f"gen_ptx: {msg}", file=sys.stderr)
    sys.exit(1)


def nvrtc_dir():
    override = os.environ.get("VEIL_NVRTC_DIR")
    if override:
        return override
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "veil", f"nvrtc-{NVRTC_VERSION}")


def find_libs(base):
    """(libnvrtc.so.12, libnvrtc-builtins.so.*) inside an installed wheel, or None."""
    lib = os.path.join(base, "nvidia", "cuda_nvrtc", "lib")
    nvrtc = os.path.join(lib, "libnvrtc.so.12")
    builtins = sorted(
        p for p in glob.glob(os.path.join(lib, "libnvrtc-builtins.so.*")) if ".alt." not in p
    )
    if os.path.isfile(nvrtc) and builtins:
        return nvrtc, builtins[0]
    return None


def ensure_nvrtc():
    base = nvrtc_dir()
    libs = find_libs(base)
    if libs:
        return libs
    parent = os.path.dirname(base)
    os.makedirs(parent, exist_ok=True)
    print(f"gen_ptx: installing {WHEEL}=={NVRTC_VERSION} into {base}", file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix=".nvrtc-", dir=parent)
    cmd = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--target", tmp, f"{WHEEL}=={NVRTC_VERSION}",
    ]
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore")
    r = subprocess.run(cmd, stdout=sys.stderr, env=env)
    if r.returncode != 0:
        fail(f"`{' '.join(cmd)}` failed (exit {r.returncode}); NVRTC is needed to build the PTX")
    try:
        os.rename(tmp, base)  # atomic; a concurrent run may have won the race, which is fine
    except OSError:
        if not find_libs(base):
            fail(f"could not move {tmp} to {base}")
    libs = find_libs(base)
    if not libs:
        fail(f"{WHEEL} installed in {base} but libnvrtc.so.12 / libnvrtc-builtins were not found")
    return libs


class Nvrtc:
    def __init__(self):
        nvrtc, builtins = ensure_nvrtc()
        # libnvrtc dlopens its builtins library by name; loading it first makes that resolve.
        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(nvrtc)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "version")
        self.version = f"{major.value}.{minor.value}"

    def check(self, rc, what):
        if rc != 0:
            fail(f"NVRTC {what}: {self.lib.nvrtcGetErrorString(rc).decode()}")

    def compile(self, arch, extra=()):
        """Compiles veil.cu for `arch`; returns (log, ptx or cubin bytes or None)."""
        with open(os.path.join(SRC_DIR, MAIN), "rb") as f:
            src = f.read()
        headers = sorted(glob.glob(os.path.join(SRC_DIR, "*.cuh")))
        h_src = []
        for h in headers:
            with open(h, "rb") as f:
                h_src.append(f.read())
        h_names = [os.path.basename(h).encode() for h in headers]
        n = len(headers)
        prog = ctypes.c_void_p()
        self.check(
            self.lib.nvrtcCreateProgram(
                ctypes.byref(prog), src, MAIN.encode(), n,
                (ctypes.c_char_p * n)(*h_src), (ctypes.c_char_p * n)(*h_names),
            ),
            "create program",
        )
        opts = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in OPTIONS]
        opts += [o.encode() for o in extra]
        rc = self.lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        self.check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
        buf = ctypes.create_string_buffer(size.value)
        self.check(self.lib.nvrtcGetProgramLog(prog, buf), "log")
        log = buf.value.decode(errors="replace").strip()
        out = None
        if rc == 0:
            real = arch.startswith("sm_")
            get_size = self.lib.nvrtcGetCUBINSize if real else self.lib.nvrtcGetPTXSize
            get = self.lib.nvrtcGetCUBIN if real else self.lib.nvrtcGetPTX
            self.check(get_size(prog, ctypes.byref(size)), "output size")
            buf = ctypes.create_string_buffer(size.value)
            self.check(get(prog, buf), "output")
            out = buf.raw[: size.value]
        self.lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return log, (out if rc == 0 else None), rc


def header(arch):
    return (
        f"// Veil CUDA kernels for {arch}: generated by scripts/gen_ptx.py from kernels/cuda/{MAIN}\n"
        f"// with NVRTC {NVRTC_VERSION} ({WHEEL}); do not edit, regenerate.\n"
    )


def build(nv, arch):
    log, ptx, rc = nv.compile(arch)
    if ptx is None:
        fail(f"{arch}: compilation failed ({nv.lib.nvrtcGetErrorString(rc).decode()}):\n{log}")
    if log:
        fail(f"{arch}: NVRTC reported warnings (treated as errors):\n{log}")
    text = header(arch) + ptx.rstrip(b"\0").decode()
    if not text.endswith("\n"):
        text += "\n"
    entries = {
        line.split(".entry", 1)[1].strip().split("(")[0].strip()
        for line in text.splitlines()
        if ".entry" in line and not line.lstrip().startswith("//")
    }
    missing = [k for k in KERNELS if k not in entries]
    if missing:
        fail(f"{arch}: kernels missing from the PTX: {', '.join(missing)}")
    extra = sorted(entries - set(KERNELS))
    if extra:
        fail(f"{arch}: entries not in the ABI list (add them to KERNELS and ABI.md): {extra}")
    return text


def resources(nv, real):
    log, cubin, rc = nv.compile(real, ["--ptxas-options=--verbose"])
    if cubin is None:
        fail(f"{real}: SASS compilation failed:\n{log}")
    name = None
    for line in log.splitlines():
        if "Compiling entry function" in line:
            name = line.split("'")[1]
        elif name and ("registers" in line or "spill" in line):
            text = line.split(":", 1)[1] if "registers" in line else line.split(".", 1)[1]
            print(f"  {real} {name}: {text.strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="compile in memory and compare with the committed PTX")
    ap.add_argument("--resources", action="store_true",
                    help="also print registers and spills per kernel (SASS via NVRTC)")
    args = ap.parse_args()
    nv = Nvrtc()
    stale = []
    for fname, arch, real in TARGETS:
        text = build(nv, arch)
        path = os.path.join(PTX_DIR, fname)
        rel = os.path.relpath(path, ROOT)
        if args.check:
            try:
                with open(path, encoding="utf-8", newline="") as f:
                    same = f.read() == text
            except FileNotFoundError:
                same = False
            if not same:
                stale.append(rel)
            print(f"gen_ptx: {arch}: {len(KERNELS)} kernels compile, "
                  f"{rel} {'up to date' if same else 'STALE'}")
        else:
            os.makedirs(PTX_DIR, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            print(f"gen_ptx: {arch}: wrote {rel} ({len(text.splitlines())} lines)")
        if args.resources:
            resources(nv, real)
    if stale:
        fail(f"{', '.join(stale)} differ from the sources; {STALE}")
    print(f"gen_ptx: NVRTC {nv.version} ({WHEEL}=={NVRTC_VERSION}), "
          f"{'check passed' if args.check else 'done'}")


if __name__ == "__main__":
    main()
