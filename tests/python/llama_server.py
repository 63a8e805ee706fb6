"""Starts llama-cpp-python's OpenAI-compatible server (a real llama.cpp
server) for the upstream-backend test and the engine benchmark.

Same arguments as `python -m llama_cpp.server`. One change: llama.cpp's
weight repacking ("extra buffer types", which picks AMX / AVX-512 kernels
for quantized weights) is turned off, because on the CI machines it crashes
llama.cpp 0.3.36 with a segmentation fault on quantized GGUFs; the plain
CPU kernels are used instead.
"""

import runpy
import sys

import llama_cpp.llama_cpp as lib

_default = lib.llama_model_default_params


def _no_repack():
    params = _default()
    params.use_extra_bufts = False
    return params


lib.llama_model_default_params = _no_repack

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
