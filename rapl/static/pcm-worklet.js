/* RAPL web page, live dictation: the microphone's samples as 16-bit PCM, 100 ms per message.
   Runs in the page's AudioWorklet; the page sends each message to /v1/realtime. */
"use strict";

class Pcm16 extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = new Int16Array(Math.round(sampleRate / 10));
    this.fill = 0;
    this.port.onmessage = () => this.flush();  // the page stops: what is left goes too
  }

  flush() {
    if (this.fill) this.port.postMessage(this.chunk.slice(0, this.fill).buffer);
    this.fill = 0;
  }

  process(inputs) {
    const samples = inputs[0] && inputs[0][0];
    if (samples) {
      for (let i = 0; i < samples.length; i++) {
        this.chunk[this.fill++] = Math.max(-1, Math.min(1, samples[i])) * 0x7fff;
        if (this.fill === this.chunk.length) {
          this.port.postMessage(this.chunk.slice().buffer);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm16", Pcm16);
