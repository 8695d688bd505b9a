"""Declares the container's C library; every other setting lives in pyproject.toml.

csrc/ holds plain C (no Python.h). It is built as a shared library beside the container package
and loaded with ctypes, so building needs only a C compiler.
"""

from __future__ import annotations

from setuptools import Extension, setup

NATIVE = Extension(
    "onnxcompress.container._native",
    sources=["csrc/huffman.c", "csrc/codebook.c"],
    depends=["csrc/huffman.h", "csrc/codebook.h"],
    include_dirs=["csrc"],
    extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra"],
)

setup(ext_modules=[NATIVE])
