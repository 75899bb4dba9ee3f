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

  /** The last samples, marked as the last (possibly none): the page commits after them. */
  flush() {
    this.port.postMessage({ last: this.chunk.slice(0, this.fill).buffer });
    this.fill = 0;
  }

  process(inputs) {
    const channels = inputs[0] || [];
    const frames = channels.length ? channels[0].length : 0;
    for (let i = 0; i < frames; i++) {
      let sum = 0;
      for (const channel of channels) sum += channel[i];  // mono: the channels' mean
      this.chunk[this.fill++] = Math.max(-1, Math.min(1, sum / channels.length)) * 0x7fff;
      if (this.fill === this.chunk.length) {
        this.port.postMessage(this.chunk.slice().buffer);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm16", Pcm16);
