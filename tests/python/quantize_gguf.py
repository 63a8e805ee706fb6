"""Requantizes a GGUF with llama.cpp's own quantizer (llama-cpp-python), for
the engine benchmark's rows of one real model in several types.

Usage: quantize_gguf.py IN.gguf OUT.gguf TYPE   (TYPE: q8_0, q4_0, q4_k_m)
Requantizing an already quantized file is allowed: fine for speed figures,
not for quality ones.
"""

import ctypes
import sys

import llama_cpp

FTYPES = {
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}

src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = FTYPES[kind]
params.allow_requantize = True
params.nthread = 2
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
if rc != 0:
    sys.exit(f"llama_model_quantize returned {rc}")
