"""llama.cpp (llama-cpp-python) decode speed on a GGUF, for the engine
benchmark to compare against in the same run. Prints one JSON line:
{"ttft_ms": ..., "decode_tok_s": ..., "tokens": ...}.

Usage: bench_llama_cpp.py MODEL.gguf PROMPT MAX_TOKENS THREADS RUNS
Weight repacking is off, as in llama_server.py (it crashes on this CPU).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_server  # noqa: E402,F401  (turns weight repacking off)
from llama_cpp import Llama  # noqa: E402

path, prompt, max_tokens, threads, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False, seed=1)
best = None
for _ in range(runs + 1):  # the first run warms up
    llm.reset()
    start = time.perf_counter()
    first = last = None
    n = 0
    for _chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
        now = time.perf_counter()
        if first is None:
            first = now
        last = now
        n += 1
    ttft = (first - start) * 1000
    tps = (n - 1) / (last - first) if n > 1 else 0.0
    if best is None or tps > best["decode_tok_s"]:
        best = {"ttft_ms": ttft, "decode_tok_s": tps, "tokens": n}
print(json.dumps(best))
