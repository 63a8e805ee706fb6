"""The official `anthropic` Python client against sharenet's /v1/messages.

Run by tests/tests/e2e/tools.rs with ANTHROPIC_BASE_URL (the coordinator's
root, no /v1), ANTHROPIC_API_KEY, SHARENET_TOOLS_MODEL (takes tools) and
SHARENET_PLAIN_MODEL. Exits non-zero with the failing assertion.
"""

import json
import os

import anthropic
import jsonschema

tools_model = os.environ["SHARENET_TOOLS_MODEL"]
plain_model = os.environ["SHARENET_PLAIN_MODEL"]
client = anthropic.Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"], api_key=os.environ["ANTHROPIC_API_KEY"], max_retries=0)

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]

# Plain text, not streamed.
m = client.messages.create(model=plain_model, max_tokens=12, system="Be brief.", messages=ask)
assert m.type == "message" and m.role == "assistant", m
assert m.content[0].type == "text" and isinstance(m.content[0].text, str), m.content
assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
assert 1 <= m.usage.output_tokens <= 12 and m.usage.input_tokens > 0, m.usage
extra = m.model_extra or {}
assert extra.get("receipt_id") and extra.get("provider"), extra

# Streamed: the SDK's accumulator gets the same text and usage (same seed
# is not an Anthropic parameter, so compare with temperature 0).
m0 = client.messages.create(model=plain_model, max_tokens=12, temperature=0, messages=ask)
with client.messages.stream(model=plain_model, max_tokens=12, temperature=0, messages=ask) as s:
    text = "".join(s.text_stream)
    final = s.get_final_message()
assert text == m0.content[0].text, (text, m0.content)
assert final.usage.output_tokens == m0.usage.output_tokens, (final.usage, m0.usage)
assert final.usage.input_tokens == m0.usage.input_tokens, (final.usage, m0.usage)
assert final.stop_reason == m0.stop_reason, final.stop_reason

# A forced tool call, then its result, then a text answer.
m = client.messages.create(
    model=tools_model, max_tokens=200, tools=[WEATHER],
    # One call: the grammar then ends the reply, whatever this random model
    # would sample next (parallel calls could run on to max_tokens).
    tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, messages=ask,
)
assert m.stop_reason == "tool_use", m
uses = [b for b in m.content if b.type == "tool_use"]
assert len(uses) == 1 and uses[0].name == "get_weather", m.content
jsonschema.validate(uses[0].input, WEATHER["input_schema"])
follow = ask + [
    {"role": "assistant", "content": [b.model_dump() for b in m.content]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 degrees"}]},
]
m2 = client.messages.create(model=tools_model, max_tokens=8, tools=[WEATHER], tool_choice={"type": "none"}, messages=follow)
assert m2.stop_reason in ("end_turn", "max_tokens"), m2
# The call and its result reached the prompt.
m1 = client.messages.create(model=tools_model, max_tokens=1, tools=[WEATHER], tool_choice={"type": "none"}, messages=ask)
assert m2.usage.input_tokens > m1.usage.input_tokens + 10, (m2.usage, m1.usage)

# The same call streamed: the SDK puts the tool input together.
with client.messages.stream(
    model=tools_model, max_tokens=200, tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": True}, messages=ask,
) as s:
    final = s.get_final_message()
uses = [b for b in final.content if b.type == "tool_use"]
assert final.stop_reason == "tool_use" and len(uses) >= 1, final
jsonschema.validate(uses[0].input, WEATHER["input_schema"])

# Errors are Anthropic's typed exceptions with its error body.
try:
    client.messages.create(model=plain_model, max_tokens=8, messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}])
    raise AssertionError("an image block was accepted")
except anthropic.BadRequestError as e:
    assert e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", e.body
    assert "messages[0].content[0]" in e.body["error"]["message"], e.body
try:
    client.messages.create(model="no-such-model", max_tokens=8, messages=ask)
    raise AssertionError("an unknown model was served")
except anthropic.NotFoundError as e:
    assert e.body["error"]["type"] == "not_found_error", e.body
try:
    anthropic.Anthropic(base_url=os.environ["ANTHROPIC_BASE_URL"], api_key="sk-wrong", max_retries=0).messages.create(
        model=plain_model, max_tokens=8, messages=ask)
    raise AssertionError("a wrong key was accepted")
except anthropic.AuthenticationError:
    pass

print(f"anthropic {anthropic.__version__}: messages, streaming, tools, errors OK")
