/* RAPL web page: upload or record audio, stream the transcript, show server status.
   Plain browser JavaScript: no build step, no dependencies, nothing fetched from elsewhere. */
"use strict";

(() => {
  const KEY_STORE = "rapl.apiKey";
  const STREAMED = new Set(["json", "text"]);
  const HEALTH_EVERY_MS = 3000;
  const $ = (id) => document.getElementById(id);

  const el = {
    health: $("health"), healthState: $("health-state"), healthModel: $("health-model"),
    healthError: $("health-error"),
    healthQueue: $("health-queue"), footerBackend: $("footer-backend"),
    dropzone: $("dropzone"), file: $("file"), record: $("record"), recordLabel: $("record-label"),
    recordTime: $("record-time"), micNote: $("mic-note"), live: $("live"), liveLabel: $("live-label"),
    language: $("language"), format: $("format"), again: $("again"),
    model: $("model"), modelField: $("model-field"),
    keyForm: $("key-form"), keyMessage: $("key-message"), apiKey: $("api-key"),
    keySet: $("key-set"), forgetKey: $("forget-key"),
    job: $("job"), output: $("output"), copy: $("copy"),
    dlTxt: $("dl-txt"), dlSrt: $("dl-srt"), dlVtt: $("dl-vtt"),
    baseUrl: $("base-url"), keyHint: $("key-hint"), spokenlyUrl: $("spokenly-url"),
    spokenlyKey: $("spokenly-key"), toast: $("toast"),
  };

  const state = {
    apiKey: readKey(),
    authRequired: false,
    audio: null,          // {blob, name} of the last file or recording
    cache: new Map(),     // "format|language" -> response body, for the current audio
    shown: null,          // {format, body, text} on screen
    controller: null,     // AbortController of the running request
    pendingRetry: null,   // what to run once the user gives an API key
    recorder: null,
    live: null,           // the live dictation session: {ws, stream, context, node, items, ...}
    healthTimer: null,
  };

  /* ---------- small helpers ---------- */

  function readKey() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
  }

  function writeKey(value) {
    try {
      if (value) localStorage.setItem(KEY_STORE, value); else localStorage.removeItem(KEY_STORE);
    } catch { /* private mode: keep it for this page only */ }
  }

  function apiUrl(path) {
    return new URL(path, document.baseURI).toString();
  }

  function baseUrl() {
    return apiUrl("v1").replace(/\/$/, "");
  }

  function authHeaders() {
    return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
  }

  let toastTimer = null;
  function toast(message) {
    el.toast.textContent = message;
    el.toast.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.toast.hidden = true; }, 2200);
  }

  function setJob(text, kind = "") {
    el.job.textContent = text;
    el.job.dataset.kind = kind;
  }

  function seconds(ms) {
    return `${(ms / 1000).toFixed(1)} s`;
  }

  class HttpError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function errorFrom(resp) {
    let message = `${resp.status} ${resp.statusText}`.trim();
    let code = null;
    try {
      const body = await resp.json();
      if (body && body.error) {
        message = body.error.message || message;
        code = body.error.code || null;
      }
    } catch { /* not JSON: keep the status line */ }
    return new HttpError(resp.status, message, code);
  }

  /* ---------- server status ---------- */

  const STATE_LABELS = {
    ready: "Ready", loading: "Loading model…", failed: "Model failed to load",
    unloading: "Idle (model freed)", unloaded: "Idle (model freed)",
  };

  async function pollHealth() {
    clearTimeout(state.healthTimer);
    try {
      const resp = await fetch(apiUrl("health"), { cache: "no-store" });
      const body = await resp.json();
      showHealth(body);
    } catch {
      showHealth({ status: "offline" });
    }
    state.healthTimer = setTimeout(pollHealth, HEALTH_EVERY_MS);
  }

  /** A model given as a long local path shows as its last two parts; the full path is in the tooltip. */
  function shortModel(model) {
    const parts = model.split(/[\\/]/).filter(Boolean);
    const isPath = /^([a-zA-Z]:)?[\\/]|^\.{1,2}[\\/]|^~/.test(model) || parts.length > 2;
    return isPath && parts.length > 2 ? `…/${parts.slice(-2).join("/")}` : model;
  }

  /** Offer only the languages the loaded model accepts (Auto-detect always stays). */
  function offerLanguages(codes) {
    const accepted = new Set(codes);
    for (const option of el.language.options) {
      option.hidden = option.disabled = option.value !== "" && !accepted.has(option.value);
    }
    if (el.language.selectedOptions[0]?.disabled) el.language.value = "";
  }

  /** With several models (MODELS_FILE), offer each; the first is the server's default. */
  function offerModels(models) {
    const ids = models.map((m) => String(m.id));
    const shown = Array.from(el.model.options, (o) => o.value);
    if (ids.join("\n") !== shown.join("\n")) {
      const chosen = el.model.value;
      el.model.replaceChildren(...models.map((m) => {
        const option = document.createElement("option");
        option.value = String(m.id);
        option.textContent = `${m.id} (${m.backend})`;
        return option;
      }));
      if (ids.includes(chosen)) el.model.value = chosen;
    }
    el.modelField.hidden = models.length < 2;
  }

  function showHealth(body) {
    const status = body.status || "unknown";
    el.health.dataset.state = status;
    el.healthState.textContent = STATE_LABELS[status] || (status === "offline" ? "Server unreachable" : status);
    el.healthModel.textContent = shortModel(body.model || "");
    el.healthModel.title = body.model || "";
    el.health.title = body.error ? `Error: ${body.error}` : "";
    el.healthError.hidden = !body.error;  // in view, not only on hover; the library's words only on hover
    el.healthError.textContent = body.error ? `The model could not be loaded. ${body.error}` : "";
    el.healthError.title = body.detail ? `Detail: ${body.detail}` : "";
    if (Array.isArray(body.languages)) offerLanguages(body.languages);
    if (Array.isArray(body.models)) offerModels(body.models);
    if (typeof body.queue_depth === "number") {
      el.healthQueue.hidden = false;
      el.healthQueue.textContent = `Queue: ${body.queue_depth}`;
      el.healthQueue.title = "Requests waiting for the model";
    } else {
      el.healthQueue.hidden = true;
    }
    el.footerBackend.textContent = body.backend ? `Backend: ${body.backend}` : "";
  }

  /* ---------- API key ---------- */

  function askForKey(retry, rejected) {
    state.pendingRetry = retry || state.pendingRetry;
    state.authRequired = true;
    renderSnippets();
    el.keyMessage.textContent = rejected
      ? "The server did not accept that API key. Enter the right one to continue."
      : "This server needs an API key. Enter it to continue.";
    if (el.keyForm.hidden || rejected) el.apiKey.value = "";
    el.keyForm.hidden = false;
    el.keySet.hidden = true;
    el.apiKey.focus();
  }

  function showKeyState() {
    el.keySet.hidden = !state.apiKey || !el.keyForm.hidden;
  }

  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = el.apiKey.value.trim();
    if (!value) return;
    state.apiKey = value;
    writeKey(value);
    el.keyForm.hidden = true;
    showKeyState();
    const retry = state.pendingRetry;
    state.pendingRetry = null;
    if (retry) retry(); else probeAuth();
  });

  el.forgetKey.addEventListener("click", () => {
    state.apiKey = "";
    writeKey("");
    showKeyState();
    toast("API key forgotten");
    probeAuth();
  });

  /** Ask /v1/models whether this server wants a key (so the page can say so before an upload). */
  async function probeAuth() {
    try {
      const resp = await fetch(apiUrl("v1/models"), { headers: authHeaders(), cache: "no-store" });
      if (resp.status === 401) {
        askForKey(null, Boolean(state.apiKey));
      } else if (resp.ok && state.apiKey) {
        state.authRequired = true;  // it took our key; assume it is needed
      }
    } catch { /* offline: the status pill says so */ }
    renderSnippets();
    showKeyState();
  }

  /* ---------- transcription ---------- */

  function options() {
    return { language: el.language.value, format: el.format.value };
  }

  function formData(blob, name, fields) {
    const form = new FormData();
    form.append("file", blob, name);
    // the chosen model (several models), else any name but whisper-1, which streams (OpenAI's rule)
    form.append("model", !el.modelField.hidden && el.model.value ? el.model.value : "gpt-4o-transcribe");
    for (const [key, value] of Object.entries(fields)) {
      if (value !== "" && value !== null && value !== undefined) form.append(key, value);
    }
    return form;
  }

  async function post(fields, signal) {
    const { blob, name } = state.audio;
    const resp = await fetch(apiUrl("v1/audio/transcriptions"), {
      method: "POST", headers: authHeaders(), body: formData(blob, name, fields), signal,
    });
    if (!resp.ok) throw await errorFrom(resp);
    return resp;
  }

  function setBusy(busy) {
    el.output.setAttribute("aria-busy", String(busy));
    el.again.textContent = busy ? "Cancel" : "Transcribe again";
    el.again.disabled = !busy && !state.audio;
    el.again.classList.toggle("btn-danger", busy);
    el.dropzone.classList.toggle("busy", busy);
  }

  function showOutput(text, { code = false, placeholder = false } = {}) {
    const out = el.output;
    const atBottom = out.scrollHeight - out.scrollTop - out.clientHeight < 24;
    out.textContent = text;
    if (atBottom) out.scrollTop = out.scrollHeight;
    el.output.classList.toggle("code", code);
    el.output.classList.toggle("empty", placeholder);
  }

  function setActions(enabled) {
    el.copy.disabled = !enabled;
    for (const button of [el.dlTxt, el.dlSrt, el.dlVtt]) button.disabled = !enabled || !state.audio;
  }

  async function transcribe() {
    if (!state.audio) return;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const { language, format } = options();
    const started = performance.now();
    const label = state.audio.name;
    let ticker = null;
    const tick = (what) => setJob(`${what} ${label}… ${seconds(performance.now() - started)}`, "busy");

    state.shown = null;
    setActions(false);
    setBusy(true);
    showOutput("", { code: !STREAMED.has(format) });
    el.output.classList.add("pending");
    tick("Transcribing");
    ticker = setInterval(() => tick("Transcribing"), 250);

    try {
      if (STREAMED.has(format)) {
        await streamTranscript(language, format, controller.signal);
      } else {
        const resp = await post({ language, response_format: format }, controller.signal);
        let body = await resp.text();
        if (format === "verbose_json") body = JSON.stringify(JSON.parse(body), null, 2);
        state.cache.set(`${format}|${language}`, body);
        state.shown = { format, body, text: format === "verbose_json" ? JSON.parse(body).text : null };
        showOutput(body, { code: true });
      }
      const text = state.shown ? (state.shown.text ?? state.shown.body) : "";
      const audioSeconds = state.audio.duration ? ` · ${Math.round(state.audio.duration)} s of audio` : "";
      setJob(text.trim() ? `Done in ${seconds(performance.now() - started)}${audioSeconds}`
        : "Done: no speech was recognised.", "done");
      setActions(Boolean(text.trim()));
    } catch (error) {
      if (controller.signal.aborted) {
        setJob("Cancelled.", "");
      } else if (error instanceof HttpError && error.status === 401) {
        setJob("Waiting for the API key…", "");
        askForKey(transcribe, Boolean(state.apiKey));
      } else {
        const prefix = error instanceof HttpError && error.status === 503 ? "Not ready: " : "Error: ";
        setJob(prefix + (error.message || String(error)), "error");
      }
      if (!el.output.textContent.trim()) {
        showOutput("Your transcript will appear here.", { placeholder: true });
      }
      setActions(Boolean(state.shown));
    } finally {
      clearInterval(ticker);
      el.output.classList.remove("pending");
      if (state.controller === controller) state.controller = null;
      setBusy(false);
    }
  }

  /** POST with stream=true and read the Server-Sent Events with fetch (EventSource cannot POST). */
  async function streamTranscript(language, format, signal) {
    const resp = await post({ language, response_format: format, stream: "true" }, signal);
    const type = resp.headers.get("content-type") || "";
    if (!type.includes("text/event-stream")) {
      // A server that ignores stream=true answers with the whole body: show it all the same.
      const raw = await resp.text();
      let text = raw;
      try { text = JSON.parse(raw).text ?? raw; } catch { /* text format */ }
      finish(text);
      return;
    }
    let text = "";
    let done = false;
    const handle = (event) => {
      if (event.type === "transcript.text.delta") {
        text += event.delta || "";
        showOutput(text);
      } else if (event.type === "transcript.text.done") {
        finish(event.text ?? text);
        if (event.usage && event.usage.seconds) state.audio.duration = event.usage.seconds;
        done = true;
      } else if (event.type === "error") {
        const err = event.error || {};
        throw new HttpError(err.status || 500, err.message || "The transcription failed.", err.code);
      }
    };
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    const boundary = /\r\n\r\n|\n\n|\r\r/;
    try {
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (value) buffer += value;
        let match;
        while (!done && (match = boundary.exec(buffer))) {
          const chunk = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          const event = parseEvent(chunk);
          if (event) handle(event);
        }
        if (ended || done) break;
      }
      if (!done && buffer.trim()) {
        const event = parseEvent(buffer);
        if (event) handle(event);
      }
    } finally {
      reader.cancel().catch(() => {});
    }
    if (!done) {
      if (!text) throw new Error("The server closed the stream before the transcript was done.");
      finish(text);
      setJob("The stream ended early: the transcript may be incomplete.", "error");
    }

    function finish(finalText) {
      const clean = finalText.trim();
      state.cache.set(`text|${language}`, clean);
      state.shown = { format, body: clean, text: clean };
      showOutput(clean || "(no speech recognised)", { placeholder: !clean });
    }
  }

  function parseEvent(chunk) {
    const data = chunk.split(/\r\n|\n|\r/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""))
      .join("\n");
    if (!data || data === "[DONE]") return null;
    try { return JSON.parse(data); } catch { return null; }
  }

  function useAudio(blob, name, duration) {
    state.audio = { blob, name, duration };
    state.cache.clear();
    el.again.disabled = false;
    transcribe();
  }

  el.again.addEventListener("click", () => {
    if (state.controller) state.controller.abort(); else transcribe();
  });

  /* ---------- file input and drag & drop ---------- */

  el.file.addEventListener("change", () => {
    const file = el.file.files && el.file.files[0];
    if (file) useAudio(file, file.name);
    el.file.value = "";
  });

  el.dropzone.addEventListener("click", (event) => {
    if (event.target.closest("button, label, input, a")) return;
    el.file.click();
  });

  let dragDepth = 0;
  el.dropzone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    dragDepth += 1;
    el.dropzone.classList.add("dragging");
  });
  el.dropzone.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) el.dropzone.classList.remove("dragging");
  });
  el.dropzone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  el.dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    el.dropzone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) useAudio(file, file.name);
  });
  // A file dropped beside the drop zone must not make the browser leave the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  /* ---------- microphone ---------- */

  const canRecord = Boolean(window.MediaRecorder && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  if (!canRecord) {
    el.record.disabled = true;
    el.micNote.hidden = false;
    el.micNote.textContent = window.isSecureContext
      ? "This browser cannot record audio."
      : "Recording needs a secure page: open it over HTTPS or on localhost.";
  }

  function pickMime() {
    const wanted = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"];
    return wanted.find((type) => MediaRecorder.isTypeSupported(type)) || "";
  }

  async function startRecording() {
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (error) {
      setJob(`Microphone unavailable: ${error.message || error.name}`, "error");
      return;
    }
    const mimeType = pickMime();
    const recorder = new MediaRecorder(stream, mimeType ? { mimeType } : undefined);
    const chunks = [];
    const started = performance.now();
    recorder.addEventListener("dataavailable", (event) => { if (event.data.size) chunks.push(event.data); });
    recorder.addEventListener("stop", () => {
      stream.getTracks().forEach((track) => track.stop());
      clearInterval(timer);
      state.recorder = null;
      el.record.setAttribute("aria-pressed", "false");
      el.record.classList.remove("recording");
      el.recordLabel.textContent = "Record from microphone";
      el.recordTime.hidden = true;
      const type = recorder.mimeType || mimeType || "audio/webm";
      const ext = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
      const blob = new Blob(chunks, { type });
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
      if (blob.size) useAudio(blob, `recording-${stamp}.${ext}`, (performance.now() - started) / 1000);
      else setJob("Nothing was recorded.", "error");
    });
    const showTime = () => {
      const total = Math.floor((performance.now() - started) / 1000);
      el.recordTime.textContent = `${Math.floor(total / 60)}:${String(total % 60).padStart(2, "0")}`;
    };
    const timer = setInterval(showTime, 250);
    showTime();
    recorder.start(1000);
    state.recorder = recorder;
    el.record.setAttribute("aria-pressed", "true");
    el.record.classList.add("recording");
    el.recordLabel.textContent = "Stop recording";
    el.recordTime.hidden = false;
    setJob("Recording… press Stop recording when you are done.", "busy");
  }

  el.record.addEventListener("click", () => {
    if (state.recorder) state.recorder.stop(); else startRecording();
  });

  /* ---------- live dictation: the microphone over OpenAI's Realtime WebSocket ---------- */

  const LIVE_RATE = 24000; // OpenAI's rate; any other the browser insists on is declared instead
  if (!(window.AudioWorkletNode && navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) {
    el.live.disabled = true;
  }

  function liveUrl() {
    const url = new URL("v1/realtime?intent=transcription", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  function base64(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  async function microphoneGraph(stream) {
    let context = new AudioContext({ sampleRate: LIVE_RATE });
    let source;
    try {
      source = context.createMediaStreamSource(stream);
    } catch { // a browser that cannot resample the microphone: its own rate, declared to the server
      await context.close();
      context = new AudioContext();
      source = context.createMediaStreamSource(stream);
    }
    let node;
    try {
      await context.audioWorklet.addModule(apiUrl("static/pcm-worklet.js"));
      node = new AudioWorkletNode(context, "pcm16");
    } catch (error) {
      context.close();
      throw error;
    }
    source.connect(node);
    node.connect(context.destination); // pulled by the graph; it outputs silence
    return { context, node };
  }

  async function startLive() {
    el.live.disabled = true; // until the session exists: a second click must not open a second one
    let stream = null;
    let graph = null;
    let ws;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
      graph = await microphoneGraph(stream);
      const protocols = state.apiKey ? ["realtime", `openai-insecure-api-key.${state.apiKey}`] : [];
      ws = new WebSocket(liveUrl(), protocols);
    } catch (error) {
      if (stream) stream.getTracks().forEach((track) => track.stop());
      if (graph) graph.context.close();
      el.live.disabled = false;
      const what = stream ? "Live dictation unavailable" : "Microphone unavailable";
      setJob(`${what}: ${error.message || error.name}`, "error");
      return;
    }
    const { context, node } = graph;
    const live = { ws, stream, context, node, items: new Map(), pending: [],
                   ready: false, stopping: false, committed: false, opened: false, failed: false };
    state.live = live;
    state.audio = null;
    setActions(false);
    showOutput("", { placeholder: false });
    el.live.disabled = false;
    el.live.setAttribute("aria-pressed", "true");
    el.live.classList.add("recording");
    el.liveLabel.textContent = "Stop live dictation";
    setJob("Connecting…", "busy");
    ws.addEventListener("open", () => { live.opened = true; });
    ws.addEventListener("message", (message) => onLiveEvent(live, JSON.parse(message.data)));
    ws.addEventListener("close", (event) => endLive(live, event));
    node.port.onmessage = (message) => {
      const last = message.data.last; // the worklet's answer to "flush": the final samples
      if (live.committed) return;
      if (!live.ready) { // before session.updated: kept, so the first words are not lost
        live.pending.push(last || message.data);
        return;
      }
      sendAudio(live, last || message.data);
      if (last) { // the turn is complete
        live.committed = true;
        live.node.disconnect();
        live.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
      }
    };
  }

  function sendAudio(live, buffer) {
    if (buffer.byteLength && live.ws.readyState === WebSocket.OPEN) {
      live.ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(buffer) }));
    }
  }

  function onLiveEvent(live, event) {
    const transcription = { model: "gpt-4o-transcribe" };
    if (options().language) transcription.language = options().language;
    switch (event.type) {
      case "session.created":
        live.ws.send(JSON.stringify({ type: "session.update", session: { type: "transcription", audio: { input: {
          format: { type: "audio/pcm", rate: live.context.sampleRate }, turn_detection: null, transcription } } } }));
        break;
      case "session.updated":
        live.ready = true;
        live.pending.splice(0).forEach((buffer) => sendAudio(live, buffer));
        setJob("Listening… the words appear as you speak.", "busy");
        break;
      case "conversation.item.input_audio_transcription.delta":
        live.items.set(event.item_id, (live.items.get(event.item_id) || "") + event.delta);
        showLive(live);
        break;
      case "conversation.item.input_audio_transcription.completed":
        live.items.set(event.item_id, event.transcript);
        showLive(live);
        if (live.stopping) live.ws.close(1000, "done");
        break;
      case "conversation.item.input_audio_transcription.failed":
        live.failed = true;
        setJob(`Transcription failed: ${event.error.message}`, "error");
        if (live.stopping) live.ws.close(1000, "done");
        break;
      case "error":
        if (live.stopping && event.error.code === "input_audio_buffer_commit_empty") live.ws.close(1000, "done");
        else { live.failed = true; setJob(event.error.message, "error"); }
        break;
      default:
        break;
    }
  }

  function showLive(live) {
    const text = [...live.items.values()].join(" ");
    showOutput(text);
    state.shown = { format: "text", body: text, text };
    el.copy.disabled = !text;
  }

  function stopLive() {
    const live = state.live;
    if (!live || live.stopping) return;
    live.stopping = true;
    el.liveLabel.textContent = "Finishing…";
    el.live.disabled = true;
    live.stream.getTracks().forEach((track) => track.stop());
    if (live.ready) live.node.port.postMessage("flush"); // its last samples, then the commit (above)
    else live.ws.close(1000, "stopped");
  }

  function endLive(live, event) {
    live.stream.getTracks().forEach((track) => track.stop());
    live.context.close();
    if (state.live === live) state.live = null;
    el.live.disabled = false;
    el.live.setAttribute("aria-pressed", "false");
    el.live.classList.remove("recording");
    el.liveLabel.textContent = "Live dictation";
    if (!live.opened) { // the handshake was refused: the browser says only 1006, so ask why over HTTP
      if (live.stopping) setJob("Stopped.", ""); else explainRefusal();
      return;
    }
    if (event.code !== 1000 && !live.failed) setJob(`Live dictation stopped: ${event.reason || `connection closed (${event.code})`}`, "error");
    else if (!live.failed) setJob(live.items.size ? "Done." : "Nothing was heard.", live.items.size ? "" : "error");
  }

  /** Why the server refused the WebSocket: the same URL as a plain GET answers 401 (the key), 426 (the
      endpoint is there: the upgrade itself failed) or the error that refused it. */
  async function explainRefusal() {
    try {
      const resp = await fetch(apiUrl("v1/realtime?intent=transcription"), { headers: authHeaders(), cache: "no-store" });
      if (resp.status === 401) {
        setJob("Waiting for the API key…", "");
        askForKey(startLive, Boolean(state.apiKey));
      } else if (resp.status === 426) {
        setJob(el.health.dataset.state === "failed" ? "Live dictation unavailable: the model failed to load."
          : "The server refused the live session: live dictation needs RAPL's own server (python -m rapl).", "error");
      } else {
        setJob(`Live dictation unavailable: ${(await errorFrom(resp)).message}`, "error");
      }
    } catch {
      setJob("Live dictation failed: the server could not be reached.", "error");
    }
  }

  el.live.addEventListener("click", () => {
    if (state.live) stopLive(); else startLive();
  });

  /* ---------- copy and download ---------- */

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Plain-HTTP pages have no clipboard API: fall back to a selection.
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    toast("Copied to the clipboard");
  }

  el.copy.addEventListener("click", () => {
    if (state.shown) copyText(state.shown.body);
  });

  for (const button of document.querySelectorAll(".copy-snippet")) {
    button.addEventListener("click", () => copyText($(button.dataset.copy).textContent));
  }

  function save(body, ext) {
    const base = (state.audio ? state.audio.name : "transcript").replace(/\.[^.]+$/, "") || "transcript";
    const url = URL.createObjectURL(new Blob([body], { type: "text/plain;charset=utf-8" }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `${base}.${ext}`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  async function download(format, ext, button) {
    const language = el.language.value;
    const key = `${format}|${language}`;
    if (format === "text" && state.shown && state.shown.text !== null && !state.cache.has(key)) {
      save(state.shown.text, ext);
      return;
    }
    if (state.cache.has(key)) {
      save(state.cache.get(key), ext);
      return;
    }
    button.disabled = true;
    const previous = el.job.textContent;
    setJob(`Preparing the .${ext} file…`, "busy");
    try {
      const resp = await post({ language, response_format: format });
      const body = await resp.text();
      state.cache.set(key, body);
      save(body, ext);
      setJob(previous, "done");
    } catch (error) {
      if (error instanceof HttpError && error.status === 401) {
        askForKey(() => download(format, ext, button), Boolean(state.apiKey));
      } else {
        setJob(`Error: ${error.message || error}`, "error");
      }
    } finally {
      button.disabled = false;
    }
  }

  el.dlTxt.addEventListener("click", () => download("text", "txt", el.dlTxt));
  el.dlSrt.addEventListener("click", () => download("srt", "srt", el.dlSrt));
  el.dlVtt.addEventListener("click", () => download("vtt", "vtt", el.dlVtt));

  /* ---------- how to connect ---------- */

  function renderSnippets() {
    const base = baseUrl();
    const keyed = state.authRequired;
    el.baseUrl.textContent = base;
    el.spokenlyUrl.textContent = base;
    el.keyHint.textContent = keyed ? "this server needs its API key" : "any API key works";
    el.spokenlyKey.innerHTML = keyed
      ? "<span class=\"hint\">this server's key</span>"
      : "<span class=\"hint\">anything, e.g.</span> <code>local</code>";
    $("snippet-curl").textContent = [
      `curl ${base}/audio/transcriptions \\`,
      ...(keyed ? ["  -H \"Authorization: Bearer $RAPL_API_KEY\" \\"] : []),
      "  -F file=@speech.mp3 \\",
      "  -F model=whisper-1",
    ].join("\n");
    $("snippet-python").textContent = [
      ...(keyed ? ["import os", ""] : []),
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${base}", api_key=${keyed ? "os.environ[\"RAPL_API_KEY\"]" : "\"local\""})`,
      "",
      "with open(\"speech.mp3\", \"rb\") as f:",
      "    result = client.audio.transcriptions.create(model=\"whisper-1\", file=f)",
      "print(result.text)",
    ].join("\n");
  }

  const tabs = Array.from(document.querySelectorAll("[role=tab]"));
  function selectTab(tab, focus) {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !selected;
    }
    if (focus) tab.focus();
  }
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => selectTab(tab, false));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: 1, ArrowLeft: -1 };
      if (event.key in moves) {
        selectTab(tabs[(index + moves[event.key] + tabs.length) % tabs.length], true);
        event.preventDefault();
      } else if (event.key === "Home" || event.key === "End") {
        selectTab(tabs[event.key === "Home" ? 0 : tabs.length - 1], true);
        event.preventDefault();
      }
    });
  });

  /* ---------- start ---------- */

  el.format.addEventListener("change", () => {
    if (state.audio && !state.controller) setJob("Press Transcribe again to use the new format.", "");
  });
  el.language.addEventListener("change", () => {
    if (state.audio && !state.controller) setJob("Press Transcribe again to use the new language.", "");
  });
  el.model.addEventListener("change", () => {
    state.cache.clear();  // what was saved came from another model
    if (state.audio && !state.controller) setJob("Press Transcribe again to use the new model.", "");
  });

  renderSnippets();
  showKeyState();
  pollHealth();
  probeAuth();
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) pollHealth();
  });
})();
