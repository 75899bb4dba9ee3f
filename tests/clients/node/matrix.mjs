// The official openai Node SDK against a RAPL server: every call tests/http/test_clients.py asserts on.
//
//   node matrix.mjs <base URL ending in /v1> <audio clip> [case ...]
//
// Prints one JSON object: {case: {ok: true, value} | {ok: false, error: {...}}}. Each value is what
// the SDK hands the caller (parsed JSON, a string, or the stream's events), so the Python side can
// check it against the fields the SDK's TypeScript types declare.
import fs from "node:fs";
import OpenAI from "openai";

const [baseURL, clip, ...only] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "local", maxRetries: 0, timeout: 120_000 });
const file = () => fs.createReadStream(clip);
const transcribe = (params) => client.audio.transcriptions.create({ file: file(), model: "whisper-1", ...params });

async function events(stream) {
  const seen = [];
  for await (const event of stream) seen.push(event);
  return seen;
}

const cases = {
  json: () => transcribe({}),
  text: () => transcribe({ response_format: "text" }),
  srt: () => transcribe({ response_format: "srt" }),
  vtt: () => transcribe({ response_format: "vtt" }),
  verbose_json: () => transcribe({ response_format: "verbose_json" }),
  words: () => transcribe({ response_format: "verbose_json", timestamp_granularities: ["word"] }),
  segments: () => transcribe({ response_format: "verbose_json", timestamp_granularities: ["segment"] }),
  words_and_segments: () =>
    transcribe({ response_format: "verbose_json", timestamp_granularities: ["word", "segment"] }),
  stream: async () => events(await transcribe({ model: "gpt-4o-transcribe", stream: true })),
  translation: () => client.audio.translations.create({ file: file(), model: "whisper-1" }),
  models_list: async () => {
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    return ids;
  },
  models_retrieve: () => client.models.retrieve("whisper-1"),
  bad_language: () => transcribe({ language: "de" }),
};

function describe(err) {
  const classes = ["BadRequestError", "AuthenticationError", "NotFoundError", "UnprocessableEntityError",
    "RateLimitError", "InternalServerError", "APIConnectionError", "APIError"];
  return {
    class: classes.find((name) => err instanceof OpenAI[name]) ?? err?.constructor?.name,
    status: err?.status ?? null,
    error: err?.error ?? null,
    requestID: err?.requestID ?? null,
    message: String(err?.message ?? err),
  };
}

const results = {};
for (const [name, run] of Object.entries(cases)) {
  if (only.length && !only.includes(name)) continue;
  try {
    results[name] = { ok: true, value: await run() };
  } catch (err) {
    results[name] = { ok: false, error: describe(err) };
  }
}
process.stdout.write(JSON.stringify(results));
