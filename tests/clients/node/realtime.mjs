// The official openai Node SDK's Realtime WebSocket client (openai/realtime/ws, on the `ws` package)
// in a transcription session against a RAPL server: tests/http/test_realtime_clients.py runs it.
//
//   node realtime.mjs <base URL ending in /v1> <24 kHz PCM16 mono file> [pace]
//
// pace 1 sends the audio in real time (100 ms appends), 2 twice as fast. Prints one JSON line per
// thing that happened, each with `t` (ms since start): {"event": <server event>} as the SDK hands
// it to its `event` listener, {"sent": "session.update" | "commit"}, {"error": ...}, {"closed": code}.
import fs from "node:fs";
import net from "node:net";
import OpenAI from "openai";
import { OpenAIRealtimeWS } from "openai/realtime/ws";

const [baseURL, pcmPath, paceArg = "1"] = process.argv.slice(2);
const pace = Number(paceArg);
const pcm = fs.readFileSync(pcmPath);
const CHUNK = 4800; // 100 ms of 24 kHz PCM16
const started = Date.now();
const print = (line) => process.stdout.write(JSON.stringify({ t: Date.now() - started, ...line }) + "\n");

const client = new OpenAI({ baseURL, apiKey: "local" });
// The SDK always dials wss:// (realtime/internal-base buildRealtimeURL sets the protocol; a custom
// buildRealtimeURL must be wss: too). RAPL on loopback speaks plain ws://, so the socket is made
// with plain TCP through ws's own createConnection option; every byte on it is the SDK's.
const rt = new OpenAIRealtimeWS({
  intent: "transcription",
  options: { createConnection: (options) => net.connect(options) },
}, client);

let finished = false;
const done = (code) => {
  if (finished) return;
  finished = true;
  rt.close();
  setTimeout(() => process.exit(code), 200);
};
setTimeout(() => { print({ error: { message: "timed out" } }); done(2); }, 120_000);

rt.on("error", (err) => print({ error: { message: String(err?.message ?? err), error: err?.error ?? null } }));
rt.socket.on("close", (code) => { print({ closed: code }); done(0); });
rt.on("event", (event) => {
  print({ event });
  if (event.type === "session.updated") stream();
  if (event.type === "conversation.item.input_audio_transcription.completed" ||
      event.type === "conversation.item.input_audio_transcription.failed") done(0);
});

rt.socket.on("open", () => {
  rt.send({
    type: "session.update",
    session: {
      type: "transcription",
      audio: {
        input: {
          format: { type: "audio/pcm", rate: 24000 },
          transcription: { model: "gpt-4o-transcribe", language: "en" },
          turn_detection: null,
        },
      },
    },
  });
  print({ sent: "session.update" });
});

let streaming = false;
function stream() {
  if (streaming) return;
  streaming = true;
  const t0 = Date.now();
  let at = 0;
  const next = () => {
    if (at >= pcm.length) {
      rt.send({ type: "input_audio_buffer.commit" });
      print({ sent: "commit" });
      return;
    }
    rt.send({ type: "input_audio_buffer.append", audio: pcm.subarray(at, at + CHUNK).toString("base64") });
    at += CHUNK;
    const due = t0 + (at / (CHUNK * 10)) * 1000 / pace;
    setTimeout(next, Math.max(0, due - Date.now()));
  };
  next();
}
