// The official OpenAI JS client against sharenet: a tool-calling round trip
// (streamed and not, and the SDK's stream helper), response_format
// json_schema on 50 seeds, and n = 3. Run by tests/tests/e2e/tools.rs with
// OPENAI_BASE_URL, OPENAI_API_KEY and SHARENET_TOOLS_MODEL set; exits
// non-zero with the failing assertion.
import assert from "node:assert/strict";
import OpenAI from "openai";

const model = process.env.SHARENET_TOOLS_MODEL;
const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: process.env.OPENAI_API_KEY, maxRetries: 0 });

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Current weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string", maxLength: 12 }, unit: { enum: ["celsius", "fahrenheit"] } },
      required: ["city", "unit"],
      additionalProperties: false,
    },
  },
};
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const force = { type: "function", function: { name: "get_weather" } };

function checkArgs(text) {
  const args = JSON.parse(text);
  assert.equal(typeof args.city, "string");
  assert.ok([...args.city].length <= 12, text);
  assert.ok(["celsius", "fahrenheit"].includes(args.unit), text);
  assert.deepEqual(Object.keys(args).sort(), ["city", "unit"]);
  return args;
}

// A forced call, not streamed.
const r = await client.chat.completions.create({ model, messages: ask, tools: [weather], tool_choice: force, max_tokens: 200, seed: 1 });
const choice = r.choices[0];
assert.equal(choice.finish_reason, "tool_calls");
assert.equal(choice.message.content, null);
assert.equal(choice.message.tool_calls.length, 1);
assert.equal(choice.message.tool_calls[0].function.name, "get_weather");
const args = checkArgs(choice.message.tool_calls[0].function.arguments);
assert.equal(typeof r.usage.cost, "number");

// The result goes back; a text answer comes.
const r2 = await client.chat.completions.create({
  model, max_tokens: 8, seed: 2, tools: [weather], tool_choice: "none",
  messages: [...ask, choice.message, { role: "tool", tool_call_id: choice.message.tool_calls[0].id, content: "18 degrees" }],
});
assert.ok(["stop", "length"].includes(r2.choices[0].finish_reason));
assert.equal(typeof r2.choices[0].message.content, "string");

// Streamed: accumulated by index, the same call.
const stream = await client.chat.completions.create({ model, messages: ask, tools: [weather], tool_choice: force, max_tokens: 200, seed: 1, stream: true });
const calls = {};
let finish = null;
for await (const chunk of stream) {
  for (const c of chunk.choices) {
    for (const tc of c.delta.tool_calls ?? []) {
      const slot = (calls[tc.index] ??= { id: null, name: "", arguments: "" });
      if (tc.id) slot.id = tc.id;
      slot.name += tc.function?.name ?? "";
      slot.arguments += tc.function?.arguments ?? "";
    }
    if (c.finish_reason) finish = c.finish_reason;
  }
}
assert.equal(finish, "tool_calls");
assert.deepEqual(Object.keys(calls), ["0"]);
assert.equal(calls[0].name, "get_weather");
assert.deepEqual(JSON.parse(calls[0].arguments), args);

// The SDK's stream helper.
const runner = client.chat.completions.stream({ model, messages: ask, tools: [weather], tool_choice: force, max_tokens: 200, seed: 1 });
const final = await runner.finalChatCompletion();
checkArgs(final.choices[0].message.tool_calls[0].function.arguments);

// json_schema: every seed's answer has the schema's shape.
const person = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 10 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    languages: { type: "array", items: { enum: ["en", "fr", "de"] }, maxItems: 3 },
  },
  required: ["name", "age", "languages"],
  additionalProperties: false,
};
for (let seed = 0; seed < 50; seed++) {
  const p = await client.chat.completions.create({
    model, messages: [{ role: "user", content: "Invent a person." }], max_tokens: 300, seed, temperature: 1.0,
    response_format: { type: "json_schema", json_schema: { name: "person", schema: person, strict: true } },
  });
  assert.equal(p.choices[0].finish_reason, "stop", `seed ${seed}`);
  const v = JSON.parse(p.choices[0].message.content);
  assert.deepEqual(Object.keys(v).sort(), ["age", "languages", "name"], `seed ${seed}`);
  assert.ok(typeof v.name === "string" && [...v.name].length <= 10, `seed ${seed}`);
  assert.ok(Number.isInteger(v.age) && v.age >= 0 && v.age <= 120, `seed ${seed}`);
  assert.ok(Array.isArray(v.languages) && v.languages.length <= 3 && v.languages.every((l) => ["en", "fr", "de"].includes(l)), `seed ${seed}`);
}

// n = 3.
const many = await client.chat.completions.create({ model, messages: ask, max_tokens: 6, seed: 5, n: 3 });
assert.deepEqual(many.choices.map((c) => c.index), [0, 1, 2]);

console.log(`openai-node ${OpenAI.VERSION ?? ""}: tools, stream helper, json_schema x50, n=3 OK`);
