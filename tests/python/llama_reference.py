"""llama.cpp's greedy continuation of each prompt, with teacher-forced
log-probabilities, for the engine's agreement test
(crates/engine/tests/agreement.rs). Prints one JSON document:
[{"prompt_ids": [...], "steps": [{"id": token, "logprob": lp, "top1": id}, ...]}, ...]
where step j is llama.cpp's distribution after the prompt and the first j
continuation tokens.

Usage: llama_reference.py MODEL.gguf N_TOKENS PROMPT [PROMPT...]
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_server  # noqa: E402,F401  (turns weight repacking off)
from llama_cpp import Llama  # noqa: E402

path, n = sys.argv[1], int(sys.argv[2])
llm = Llama(model_path=path, n_ctx=1024, n_threads=2, logits_all=True, verbose=False, seed=1)
out = []
for prompt in sys.argv[3:]:
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.reset()
    cont = []
    for tok in llm.generate(ids, temp=0.0, top_k=1):
        if tok == llm.token_eos() or len(cont) == n:
            break
        cont.append(tok)
    llm.reset()
    llm.eval(ids + cont)
    scores = np.array(llm.scores[: len(ids) + len(cont)], dtype=np.float64)
    steps = []
    for j, tok in enumerate(cont):
        row = scores[len(ids) - 1 + j]
        lp = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        steps.append({"id": int(tok), "logprob": float(lp[tok]), "top1": int(lp.argmax())})
    out.append({"prompt_ids": [int(i) for i in ids], "steps": steps})
print(json.dumps(out))
