"""Tools and structured outputs through the official OpenAI Python client.

Run by tests/tests/e2e/tools.rs with OPENAI_BASE_URL, OPENAI_API_KEY,
SHARENET_TOOLS_MODEL (a model whose nodes take tools) and
SHARENET_PLAIN_MODEL (one whose nodes do not). Exits non-zero with the
failing assertion.
"""

import json
import os

import jsonschema
import openai
from openai import OpenAI
from pydantic import BaseModel, Field

tools_model = os.environ["SHARENET_TOOLS_MODEL"]
plain_model = os.environ["SHARENET_PLAIN_MODEL"]
client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key=os.environ["OPENAI_API_KEY"], max_retries=0)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
force = {"type": "function", "function": {"name": "get_weather"}}


def check_call(call):
    assert call.type == "function", call
    assert call.id, call
    assert call.function.name == "get_weather", call
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    return args


# 1. A forced call, not streamed: finish_reason tool_calls, content null.
r = client.chat.completions.create(
    model=tools_model, messages=ask, tools=[WEATHER, TIME], tool_choice=force, max_tokens=200, seed=1
)
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", choice
assert choice.message.content is None, choice.message
assert len(choice.message.tool_calls) == 1, choice.message
check_call(choice.message.tool_calls[0])
assert isinstance(r.usage.cost, float) and r.usage.cost > 0, r.usage
extra = r.usage.model_extra or {}
details = extra["cost_details"]
assert details["charge_nano_usd"] == details["provider_nano_usd"] + details["network_fee_nano_usd"] + details["margin_nano_usd"]
assert abs(r.usage.cost - details["charge_nano_usd"] / 1e9) < 1e-12, (r.usage.cost, details)
assert (r.model_extra or {}).get("provider"), r.model_extra

# 2. The tool's result goes back; the model answers in text (round trip).
follow = ask + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": "18 degrees and sunny"},
]
r2 = client.chat.completions.create(
    model=tools_model, messages=follow, tools=[WEATHER, TIME], tool_choice="none", max_tokens=12, seed=2
)
assert r2.choices[0].finish_reason in ("stop", "length"), r2.choices[0]
assert isinstance(r2.choices[0].message.content, str), r2.choices[0].message
assert not r2.choices[0].message.tool_calls
# The call and its result reached the prompt: more prompt tokens than the
# question alone.
r0 = client.chat.completions.create(
    model=tools_model, messages=ask, tools=[WEATHER, TIME], tool_choice="none", max_tokens=1
)
assert r2.usage.prompt_tokens > r0.usage.prompt_tokens + 10, (r2.usage, r0.usage)

# 3. The same call streamed, put together by index as the SDK documents.
stream = client.chat.completions.create(
    model=tools_model, messages=ask, tools=[WEATHER, TIME], tool_choice=force, max_tokens=200, seed=1,
    stream=True, stream_options={"include_usage": True},
)
calls, finish, usage, providers = {}, None, None, set()
for chunk in stream:
    providers.add((chunk.model_extra or {}).get("provider"))
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        for tc in c.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
        if c.finish_reason:
            finish = c.finish_reason
assert finish == "tool_calls", finish
assert list(calls) == [0], calls
assert calls[0]["name"] == "get_weather" and calls[0]["id"], calls
# Same seed, same call as the non-streamed request.
assert json.loads(calls[0]["arguments"]) == json.loads(choice.message.tool_calls[0].function.arguments), calls
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
assert len(providers) == 1 and None not in providers, providers

# 4. The SDK's own stream helper accumulates the same call.
with client.chat.completions.stream(
    model=tools_model, messages=ask, tools=[WEATHER], tool_choice=force, max_tokens=200, seed=1
) as s:
    final = s.get_final_completion()
assert final.choices[0].message.tool_calls[0].function.name == "get_weather", final
check_call(final.choices[0].message.tool_calls[0])

# 5. response_format json_schema: every seed's answer validates.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "languages": {"type": "array", "items": {"enum": ["en", "fr", "de"]}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
for seed in range(50):
    r = client.chat.completions.create(
        model=tools_model, messages=[{"role": "user", "content": "Invent a person."}],
        response_format=fmt, max_tokens=300, seed=seed, temperature=1.0,
    )
    text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)
    assert r.choices[0].finish_reason == "stop", (seed, r.choices[0])

# json_object: any JSON object.
r = client.chat.completions.create(
    model=plain_model, messages=[{"role": "user", "content": "JSON please"}],
    response_format={"type": "json_object"}, max_tokens=300, seed=4,
)
# The constraint opens an object whatever the weights say; it parses when
# it ends in time.
assert r.choices[0].message.content.lstrip().startswith("{"), r.choices[0]
if r.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0]


# 6. The SDK's structured-output helper with a Pydantic model.
class City(BaseModel):
    name: str = Field(max_length=12)
    population: int = Field(ge=0, le=10_000_000)


parsed = client.chat.completions.parse(
    model=tools_model, messages=[{"role": "user", "content": "A city?"}], response_format=City,
    max_tokens=200, seed=3,
)
assert isinstance(parsed.choices[0].message.parsed, City), parsed.choices[0].message

# 7. The raw response carries the exact cost as a header.
raw = client.chat.completions.with_raw_response.create(
    model=tools_model, messages=ask, max_tokens=4, seed=5
)
assert int(raw.headers["x-sharenet-cost-nano-usd"]) == (raw.parse().usage.model_extra or {})["cost_details"]["charge_nano_usd"]


# 8. Refusals name the parameter; a missing capability is a 503 naming it.
def refused(kind, param_part, **kw):
    try:
        client.chat.completions.create(max_tokens=4, **kw)
    except kind as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body)
        assert param_part in ((err.get("param") or "") + (err.get("message") or "")), (param_part, err)
        return
    raise AssertionError(f"expected {kind.__name__} for {kw}")


refused(openai.BadRequestError, "tool_choice", model=tools_model, messages=ask, tools=[WEATHER], tool_choice="sometimes")
refused(openai.BadRequestError, "tool_choice", model=tools_model, messages=ask, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "launch_missiles"}})
refused(openai.BadRequestError, "messages[1].tool_call_id", model=tools_model,
        messages=ask + [{"role": "tool", "content": "x"}])
refused(openai.BadRequestError, "tools[0].function.name", model=tools_model, messages=ask,
        tools=[{"type": "function", "function": {"name": "bad name"}}])
refused(openai.BadRequestError, "response_format", model=tools_model, messages=ask,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "https://example.com/s.json"}}})
refused(openai.InternalServerError, "tools", model=plain_model, messages=ask, tools=[WEATHER])

print("OK")
