"""Declares the container's C library; every other setting lives in pyproject.toml.

csrc/ holds plain C (no Python.h). It is built as a shared library beside the container package
and loaded with ctypes, so building needs only a C compiler.
"""

from __future__ import annotations

from setuptools import Extension, setup

NATIVE = Extension(
    "onnxcompress.container._native",
    sources=["csrc/huffman.c", "csrc/codebook.c", "csrc/bitgroups.c", "csrc/rans.c"],
    depends=["csrc/huffman.h", "csrc/codebook.h", "csrc/bitgroups.h", "csrc/rans.h"],
    include_dirs=["csrc"],
    extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra"],
)

# XnorConv kernels (csrc/xnor, plain C + pthreads, loaded with ctypes by
# onnxcompress/kernels/xnor_native.py).  -ffp-contract=off keeps y = float(D) * alpha + bias
# rounded twice, as in the numpy reference and the portable ONNX form.
XNOR = Extension(
    "onnxcompress.kernels._xnor",
    sources=[f"csrc/xnor/{n}.c" for n in ("xnor_conv", "xnor_pool", "xnor_binary", "xnor_bwn",
                                          "xnor_portable", "xnor_avx2", "xnor_avx512",
                                          "xnor_bench")],
    depends=["csrc/xnor/xnor.h", "csrc/xnor/xnor_internal.h"],
    include_dirs=["csrc/xnor"],
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-ffp-contract=off", "-pthread"],
    extra_link_args=["-pthread"],
)

setup(ext_modules=[NATIVE, XNOR])
