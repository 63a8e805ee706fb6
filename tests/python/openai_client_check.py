"""The official OpenAI Python client against a running sharenet network.

Run by tests/tests/openai_python.rs with OPENAI_BASE_URL, OPENAI_API_KEY and
SHARENET_MODEL set. Exits non-zero (with the failing assertion) if any shape
is not what an OpenAI client expects.
"""

import os
import sys

import openai
from openai import OpenAI

model = os.environ["SHARENET_MODEL"]
client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
messages = [{"role": "user", "content": "Hello from the openai client!"}]

# Models.
models = client.models.list()
assert model in [m.id for m in models.data], models

# Non-streaming chat.
r = client.chat.completions.create(model=model, messages=messages, max_tokens=16, seed=11, temperature=0.7)
assert r.object == "chat.completion", r
assert r.id.startswith("chatcmpl-"), r.id
assert len(r.choices) == 1
choice = r.choices[0]
assert choice.message.role == "assistant"
assert isinstance(choice.message.content, str)
assert choice.finish_reason in ("stop", "length"), choice.finish_reason
assert r.usage is not None and 1 <= r.usage.completion_tokens <= 16, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def check_usage_details(u):
    """OpenAI's breakdowns parse into the client's own models (all zero:
    no prefix cache, no reasoning or predicted tokens), and sharenet says
    who counted the tokens."""
    assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == 0, u
    d = u.completion_tokens_details
    assert d is not None and d.reasoning_tokens == 0, u
    assert d.accepted_prediction_tokens == 0 and d.rejected_prediction_tokens == 0, u
    assert (u.model_extra or {}).get("counted_by") in ("coordinator", "node"), u.model_extra


check_usage_details(r.usage)
receipt_id = (r.model_extra or {}).get("receipt_id")
assert receipt_id and len(receipt_id) == 32, r.model_extra

# Streaming chat with usage: same seed, same text.
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, seed=11, temperature=0.7,
    stream=True, stream_options={"include_usage": True},
)
pieces, usage, finish, chunks = [], None, None, 0
for chunk in stream:
    chunks += 1
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
assert "".join(pieces) == choice.message.content, (pieces, choice.message.content)
assert finish == choice.finish_reason, finish
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
check_usage_details(usage)
assert usage.model_extra.get("counted_by") == r.usage.model_extra.get("counted_by"), usage
assert chunks >= 3, chunks

# Legacy completions with logprobs, streamed and not: same text.
c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, logprobs=2)
assert c.object == "text_completion", c
ct = c.choices[0]
assert isinstance(ct.text, str) and ct.finish_reason in ("stop", "length")
lp = ct.logprobs
assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs), lp
assert all(x <= 0 for x in lp.token_logprobs) and all(len(t) == 2 for t in lp.top_logprobs), lp
assert "".join(lp.tokens) == ct.text, (lp.tokens, ct.text)
streamed = "".join(
    ch.choices[0].text
    for ch in client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True)
    if ch.choices
)
assert streamed == ct.text, (streamed, ct.text)

# Chat logprobs with alternatives.
r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
content = r.choices[0].logprobs.content
assert content and all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content), content

# Embeddings (all-MiniLM-L6-v2 on its own node).
embed_model = os.environ.get("SHARENET_EMBED_MODEL")
if embed_model:
    e = client.embeddings.create(model=embed_model, input=["This is an example sentence", "Each sentence is converted"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 384, e
    assert all(abs(a - b) < 1e-4 for a, b in zip(e.data[0].embedding, [0.0677, 0.0635, 0.0487])), e.data[0].embedding[:3]
    assert e.usage.prompt_tokens > 0, e.usage
    # Embeddings keep OpenAI's embeddings usage; the node counted them.
    assert (e.usage.model_extra or {}).get("counted_by") == "node", e.usage
    # The client asks for base64 by default when numpy is around; both decode to the same floats.
    b = client.embeddings.create(model=embed_model, input="This is an example sentence", encoding_format="base64")
    assert abs(b.data[0].embedding[0] - e.data[0].embedding[0]) < 1e-6 if isinstance(b.data[0].embedding, list) else True
    try:
        client.chat.completions.create(model=embed_model, messages=messages, max_tokens=4)
        raise AssertionError("chat on an embedding model accepted")
    except openai.BadRequestError as err:
        assert err.status_code == 400

# n = 3: three choices; choice i has seed + i, so choice 0 is the n = 1
# answer; usage sums the three jobs; each has its own receipt.
many = client.chat.completions.create(model=model, messages=messages, max_tokens=16, seed=11, temperature=0.7, n=3)
assert [c.index for c in many.choices] == [0, 1, 2], many.choices
assert many.choices[0].message.content == choice.message.content, (many.choices[0], choice)
assert many.usage.completion_tokens == sum(
    client.chat.completions.create(model=model, messages=messages, max_tokens=16, seed=11 + i, temperature=0.7).usage.completion_tokens
    for i in range(3)
), many.usage
assert len(set((many.model_extra or {})["receipt_ids"])) == 3, many.model_extra
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, seed=11, temperature=0.7, n=3,
    stream=True, stream_options={"include_usage": True},
)
texts, finishes, usage = {}, {}, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        if c.finish_reason:
            finishes[c.index] = c.finish_reason
assert [texts[i] for i in range(3)] == [c.message.content for c in many.choices], (texts, many.choices)
assert sorted(finishes) == [0, 1, 2], finishes
assert usage is not None and usage.completion_tokens == many.usage.completion_tokens, (usage, many.usage)
nc = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=0.9, seed=2, n=2)
assert [c.index for c in nc.choices] == [0, 1], nc.choices

# Errors come back as the client's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
try:
    OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-wrong-key-0000000", max_retries=0).chat.completions.create(
        model=model, messages=messages, max_tokens=4)
    raise AssertionError("bad key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401

print(f"openai {openai.__version__}: chat, completions, n, logprobs, embeddings, streaming, models and errors OK")
sys.exit(0)
