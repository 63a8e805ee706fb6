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
assert chunks >= 3, chunks

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

print(f"openai {openai.__version__}: chat, streaming, models and errors OK")
sys.exit(0)
