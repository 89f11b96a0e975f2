// The /tts/ page: a playground for POST /v1/audio/speech (docs/speech.md).
//
// "Speak" asks for server-sent events carrying raw PCM ({"stream_format": "sse",
// "response_format": "pcm"}): `speech.audio.info` gives the rate, channels and job id, each
// `speech.audio.delta` is base64 PCM16LE that is scheduled at once, back to back, through Web
// Audio at the rate the info event announced (the browser resamples to its output rate), so the
// audio plays while the rest is synthesized. The job's progress comes from its WebSocket
// (/v1/status/progress/<job_id>/ws; the HTTP GET of the same path if the socket fails). The
// download is a WAV (or raw PCM) built from the very bytes that were played; the compressed
// formats are asked of the server again, non-streamed, when the link is clicked.
//
// For tests and the curious, everything measured is on window.parleyTts (times are
// performance.now() milliseconds).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const root = $("tts");
  const form = $("tts-form");
  const els = {
    input: $("tts-input"),
    model: $("tts-model"),
    voice: $("tts-voice"),
    format: $("tts-format"),
    speed: $("tts-speed"),
    speedValue: $("tts-speed-value"),
    strategy: $("tts-strategy"),
    chunkSize: $("tts-chunk-size"),
    bufferSize: $("tts-buffer-size"),
    quality: $("tts-quality"),
    sampleRate: $("tts-sample-rate"),
    exaggeration: $("tts-exaggeration"),
    cfgWeight: $("tts-cfg-weight"),
    temperature: $("tts-temperature"),
    instructions: $("tts-instructions"),
    apiKey: $("tts-api-key"),
    notes: $("tts-model-notes"),
    speak: $("tts-speak"),
    stop: $("tts-stop"),
    download: $("tts-download"),
    status: $("tts-status"),
    progress: $("tts-progress"),
    progressText: $("tts-progress-text"),
    step: $("tts-step"),
    ttfa: $("tts-ttfa"),
    done: $("tts-done"),
    duration: $("tts-duration"),
    rate: $("tts-rate"),
    job: $("tts-job"),
    errors: $("tts-errors"),
  };

  // Schedule the first chunk this far ahead of "now": room for the main thread to hand it
  // over before its start time passes.
  const LEAD_S = 0.08;
  const TERMINAL = new Set(["completed", "cancelled", "error"]);
  const KEY_STORAGE = "parley.apiKey";

  let models = [];
  let run = null; // the current synthesis (one at a time)
  let audioContext = null;

  const state = (window.parleyTts = {
    state: "idle",
    runs: 0,
    requestAt: null,
    responseAt: null,
    info: null,
    jobId: null,
    deltas: 0,
    bytes: 0,
    firstDeltaAt: null,
    firstAudioAt: null, // the first chunk handed to Web Audio
    playStartedAt: null, // when that chunk starts sounding
    synthesisDoneAt: null, // speech.audio.done received
    playbackEndsAt: null,
    scheduled: [], // [{start, duration}] in AudioContext seconds
    underruns: 0,
    progress: 0,
    progressStatus: null,
    progressEvents: [],
    progressSource: null,
    usage: null,
    error: null,
    downloadUrl: null,
    // The playback clock, in the seconds of `scheduled`: null before the first click.
    audioClock: () => (audioContext ? audioContext.currentTime : null),
  });

  // --- helpers --------------------------------------------------------------------------------

  function authHeaders() {
    const key = els.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function setStatus(text) {
    els.status.textContent = text;
  }

  function setState(name) {
    state.state = name;
    root.dataset.state = name;
    const busy = name === "requesting" || name === "streaming";
    els.speak.disabled = busy;
    els.stop.disabled = !busy && name !== "playing";
  }

  /** {error: code, detail, field} from either error shape the API answers: Parley's
   * {"error": code, "detail", "field"} or OpenAI's {"error": {"code", "message", "param"}}. */
  function normalizeError(body) {
    if (body && body.error && typeof body.error === "object") {
      const e = body.error;
      return {
        error: e.code || e.type || "error",
        detail: body.detail || e.message || "",
        field: body.field !== undefined ? body.field : e.param || null,
      };
    }
    return { error: body.error, detail: body.detail || "", field: body.field || null };
  }

  function showError(raw) {
    const error = normalizeError(raw);
    state.error = error;
    const li = document.createElement("li");
    li.textContent = error.field
      ? `${error.error}: ${error.detail} (field ${error.field})`
      : `${error.error}: ${error.detail || ""}`;
    els.errors.append(li);
    els.errors.hidden = false;
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    if (error.field) {
      const field = form.querySelector(`[name="${CSS.escape(error.field)}"]`);
      if (field) field.setAttribute("aria-invalid", "true");
    }
    if (error.error === "auth_required" || error.error === "invalid_api_key") {
      // The key field lives in the closed settings: show it.
      els.apiKey.closest("details").open = true;
      els.apiKey.setAttribute("aria-invalid", "true");
      els.apiKey.focus();
    }
  }

  function clearErrors() {
    els.errors.replaceChildren();
    els.errors.hidden = true;
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function ms(value) {
    return value == null ? "—" : `${Math.round(value)} ms`;
  }

  async function errorFrom(response) {
    try {
      const body = await response.json();
      if (body && body.error) return body;
    } catch (_) {
      // not JSON: fall through
    }
    return { error: `http_${response.status}`, detail: response.statusText, field: null };
  }

  // --- the form -------------------------------------------------------------------------------

  /** The request body from the form: only the fields a person set (the server's defaults
   * otherwise), so what is sent is what the page shows. */
  function body(overrides) {
    const b = { input: els.input.value };
    const text = (name, el) => {
      if (el.value.trim() !== "") b[name] = el.value.trim();
    };
    const number = (name, el, parse) => {
      if (el.value.trim() !== "") b[name] = parse(el.value);
    };
    text("model", els.model);
    text("voice", els.voice);
    text("streaming_strategy", els.strategy);
    text("streaming_quality", els.quality);
    if (els.instructions.value !== "") b.instructions = els.instructions.value;
    if (Number(els.speed.value) !== 1) b.speed = Number(els.speed.value);
    number("streaming_chunk_size", els.chunkSize, (v) => parseInt(v, 10));
    number("streaming_buffer_size", els.bufferSize, (v) => parseInt(v, 10));
    number("sample_rate", els.sampleRate, (v) => parseInt(v, 10));
    number("exaggeration", els.exaggeration, Number);
    number("cfg_weight", els.cfgWeight, Number);
    number("temperature", els.temperature, Number);
    return Object.assign(b, overrides);
  }

  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { headers: authHeaders() });
      if (!response.ok) throw await errorFrom(response);
      models = (await response.json()).data || [];
    } catch (error) {
      showError(error.error ? error : { error: "models_unavailable", detail: String(error) });
      return;
    }
    const keep = els.model.value;
    els.model.replaceChildren(new Option("default", ""));
    for (const m of models) {
      const label = m.id === m.engine ? m.id : `${m.id} (${m.engine})`;
      const option = new Option(m.available ? label : `${label}: unavailable`, m.id);
      option.disabled = !m.available;
      els.model.append(option);
    }
    els.model.value = keep;
    describeModel();
  }

  function selectedModel() {
    return models.find((m) => m.id === els.model.value) || null;
  }

  function describeModel() {
    const m = selectedModel() || models.find((x) => x.available) || null;
    if (!m) {
      els.notes.textContent = "";
      return;
    }
    const without = Object.keys((m.params && m.params.accepted_without_effect) || {});
    els.notes.textContent =
      `${m.engine}: ${m.sample_rate} Hz engine.` +
      (without.length ? ` No effect with this engine: ${without.join(", ")}.` : "");
  }

  async function loadVoices() {
    const m = selectedModel();
    const url = m ? `/v1/voices?engine=${encodeURIComponent(m.engine)}` : "/v1/voices";
    let voices;
    try {
      const response = await fetch(url, { headers: authHeaders() });
      if (!response.ok) throw await errorFrom(response);
      voices = (await response.json()).voices || [];
    } catch (error) {
      showError(error.error ? error : { error: "voices_unavailable", detail: String(error) });
      return;
    }
    const keep = els.voice.value;
    const groups = [
      ["openai", "OpenAI names"],
      ["stored", "Stored voices"],
      ["engine", "Engine voices"],
    ];
    els.voice.replaceChildren(new Option("the engine's default", ""));
    for (const [source, title] of groups) {
      const list = voices.filter((v) => v.source === source);
      if (!list.length) continue;
      const group = document.createElement("optgroup");
      group.label = title;
      for (const v of list) {
        const detail = v.engine_voice && v.engine_voice !== v.name ? ` → ${v.engine_voice}` : "";
        const engine = m ? "" : ` · ${v.engine}`;
        group.append(new Option(`${v.name}${detail}${engine}`, v.name));
      }
      els.voice.append(group);
    }
    // Unknown sources (a future kind of voice) still get listed.
    for (const v of voices.filter((x) => !groups.some(([s]) => s === x.source))) {
      els.voice.append(new Option(v.name, v.name));
    }
    els.voice.value = keep;
    if (els.voice.value !== keep) els.voice.value = "";
  }

  // --- playback -------------------------------------------------------------------------------

  function ensureAudio() {
    // Created on the first click: browsers start audio only after a gesture.
    if (!audioContext) audioContext = new AudioContext({ latencyHint: "interactive" });
    if (audioContext.state === "suspended") audioContext.resume();
    return audioContext;
  }

  function base64Bytes(text) {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  /** Web Audio for one run: PCM16LE in, AudioBuffers scheduled back to back. */
  class PcmPlayer {
    constructor(ctx, rate, channels) {
      this.ctx = ctx;
      this.rate = rate;
      this.channels = channels;
      this.frameBytes = 2 * channels;
      this.carry = new Uint8Array(0); // a delta may end mid-frame
      this.next = 0;
      this.sources = new Set();
      this.frames = 0;
    }

    push(bytes) {
      let data = bytes;
      if (this.carry.length) {
        data = new Uint8Array(this.carry.length + bytes.length);
        data.set(this.carry);
        data.set(bytes, this.carry.length);
      }
      const usable = data.length - (data.length % this.frameBytes);
      this.carry = data.slice(usable);
      const frames = usable / this.frameBytes;
      if (!frames) return null;
      const buffer = this.ctx.createBuffer(this.channels, frames, this.rate);
      const view = new DataView(data.buffer, data.byteOffset, usable);
      for (let c = 0; c < this.channels; c++) {
        const out = buffer.getChannelData(c);
        for (let i = 0; i < frames; i++) {
          out[i] = view.getInt16((i * this.channels + c) * 2, true) / 32768;
        }
      }
      const now = this.ctx.currentTime;
      let start = this.next;
      if (start < now + 0.005) {
        // Nothing queued (the first chunk) or the queue ran dry: start a little ahead.
        if (this.next > 0) state.underruns += 1;
        start = now + LEAD_S;
      }
      const source = this.ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(this.ctx.destination);
      source.onended = () => this.sources.delete(source);
      source.start(start);
      this.sources.add(source);
      this.next = start + buffer.duration;
      this.frames += frames;
      return { start, duration: buffer.duration, wallStart: performance.now() + (start - now) * 1000 };
    }

    stop() {
      for (const source of this.sources) {
        try {
          source.stop();
        } catch (_) {
          // already stopped
        }
      }
      this.sources.clear();
    }

    remaining() {
      return Math.max(0, this.next - this.ctx.currentTime);
    }
  }

  // --- progress -------------------------------------------------------------------------------

  function showProgress(p, source) {
    if (!run || p.job_id !== run.jobId) return;
    const percent = Number(p.progress_percentage) || 0;
    state.progress = Math.max(state.progress, percent);
    state.progressStatus = p.status;
    state.progressSource = state.progressSource || source;
    state.progressEvents.push({
      at: performance.now(),
      source,
      status: p.status,
      percentage: percent,
      chunk: p.current_chunk,
      total: p.total_chunks,
    });
    els.progress.value = state.progress;
    els.progressText.textContent = `${state.progress.toFixed(0)} %`;
    els.step.textContent = p.current_step || p.status;
  }

  function followProgress(current) {
    const jobId = current.jobId;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}/v1/status/progress/${encodeURIComponent(jobId)}/ws`;
    let terminal = false;
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (_) {
      pollProgress(current);
      return;
    }
    current.socket = socket;
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (message.type === "speech.progress") {
        showProgress(message.progress, "ws");
        if (TERMINAL.has(message.progress.status)) terminal = true;
      }
    };
    socket.onclose = () => {
      // A socket that ends before the job does (a proxy, a refused upgrade): ask over HTTP.
      if (!terminal && run === current && !current.aborted) pollProgress(current);
    };
  }

  async function pollProgress(current) {
    while (run === current && !current.aborted) {
      try {
        const response = await fetch(
          `/v1/status/progress/${encodeURIComponent(current.jobId)}`,
          { headers: authHeaders() },
        );
        if (response.ok) {
          const p = await response.json();
          showProgress(p, "http");
          if (TERMINAL.has(p.status)) return;
        }
      } catch (_) {
        // try again
      }
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
  }

  // --- one synthesis --------------------------------------------------------------------------

  function resetRun() {
    Object.assign(state, {
      requestAt: null,
      responseAt: null,
      info: null,
      jobId: null,
      deltas: 0,
      bytes: 0,
      firstDeltaAt: null,
      firstAudioAt: null,
      playStartedAt: null,
      synthesisDoneAt: null,
      playbackEndsAt: null,
      scheduled: [],
      underruns: 0,
      progress: 0,
      progressStatus: null,
      progressEvents: [],
      progressSource: null,
      usage: null,
      error: null,
    });
    els.progress.value = 0;
    els.progressText.textContent = "0 %";
    els.step.textContent = "—";
    for (const el of [els.ttfa, els.done, els.duration, els.rate, els.job]) el.textContent = "—";
    els.download.hidden = true;
    if (state.downloadUrl) URL.revokeObjectURL(state.downloadUrl);
    state.downloadUrl = null;
  }

  function stopRun(reason) {
    const current = run;
    if (!current) return;
    current.aborted = true;
    current.controller.abort();
    if (current.player) current.player.stop();
    if (current.socket) current.socket.close();
    clearTimeout(current.endTimer);
    run = null;
    setState("idle");
    if (reason) setStatus(reason);
  }

  async function speak() {
    stopRun();
    clearErrors();
    resetRun();
    state.runs += 1;
    const ctx = ensureAudio();
    const current = { controller: new AbortController(), chunks: [], aborted: false };
    run = current;
    setState("requesting");
    setStatus("Synthesizing…");
    state.requestAt = performance.now();
    let response;
    try {
      response = await fetch("/v1/audio/speech", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
        body: JSON.stringify(body({ stream_format: "sse", response_format: "pcm" })),
        signal: current.controller.signal,
      });
    } catch (error) {
      if (!current.aborted) failRun(current, { error: "network_error", detail: String(error) });
      return;
    }
    if (!response.ok) {
      failRun(current, await errorFrom(response));
      return;
    }
    state.responseAt = performance.now();
    setState("streaming");
    try {
      await readEvents(response, (name, data) => onEvent(current, ctx, name, data));
    } catch (error) {
      if (!current.aborted) failRun(current, { error: "stream_broken", detail: String(error) });
      return;
    }
    if (current.aborted || run !== current) return;
    if (state.synthesisDoneAt == null && !state.error) {
      failRun(current, { error: "stream_ended", detail: "The stream ended without speech.audio.done." });
    }
  }

  /** Server-sent events from a fetch body: calls onEvent(name, parsedData) per event. */
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (!data.length) continue;
        let parsed;
        try {
          parsed = JSON.parse(data.join("\n"));
        } catch (_) {
          continue;
        }
        onEvent(parsed.type || name, parsed);
      }
    }
  }

  function onEvent(current, ctx, name, data) {
    if (current.aborted) return;
    if (name === "speech.audio.info") {
      state.info = data;
      state.jobId = current.jobId = data.job_id;
      current.player = new PcmPlayer(ctx, data.sample_rate, data.channels || 1);
      els.rate.textContent = `${data.sample_rate} Hz, ${data.channels} ch, ${data.bits_per_sample}-bit`;
      els.job.textContent = data.job_id;
      if (data.job_id) followProgress(current);
    } else if (name === "speech.audio.delta") {
      if (!current.player) {
        // No info event (another server): the OpenAI default for raw PCM.
        current.player = new PcmPlayer(ctx, 24000, 1);
      }
      const bytes = base64Bytes(data.audio);
      current.chunks.push(bytes);
      state.deltas += 1;
      state.bytes += bytes.length;
      const now = performance.now();
      if (state.firstDeltaAt == null) state.firstDeltaAt = now;
      const slot = current.player.push(bytes);
      if (slot) {
        state.scheduled.push({ start: slot.start, duration: slot.duration });
        state.playbackEndsAt = slot.wallStart + slot.duration * 1000;
        if (state.firstAudioAt == null) {
          state.firstAudioAt = now;
          state.playStartedAt = slot.wallStart;
          els.ttfa.textContent = ms(now - state.requestAt);
          setStatus("Playing while synthesizing…");
        }
      }
      const seconds = current.player.frames / current.player.rate;
      els.duration.textContent = `${seconds.toFixed(2)} s`;
    } else if (name === "speech.audio.done") {
      state.synthesisDoneAt = performance.now();
      state.usage = data.usage || null;
      els.done.textContent = ms(state.synthesisDoneAt - state.requestAt);
      finishRun(current);
    } else if (name === "speech.audio.error") {
      failRun(current, data);
    }
  }

  function finishRun(current) {
    offerDownload(current);
    setState("playing");
    setStatus("Synthesis done; playing the rest…");
    const left = current.player ? current.player.remaining() : 0;
    current.endTimer = setTimeout(() => {
      if (run !== current) return;
      run = null;
      setState("idle");
      setStatus("Done.");
    }, left * 1000 + 50);
  }

  function failRun(current, error) {
    showError(error);
    setStatus("Failed.");
    // The progress socket stays open: its last update says how the job ended.
    current.aborted = true;
    if (current.player) current.player.stop();
    if (run === current) run = null;
    setState("idle");
  }

  // --- download -------------------------------------------------------------------------------

  function wavBlob(chunks, rate, channels) {
    const length = chunks.reduce((sum, c) => sum + c.length, 0);
    const header = new ArrayBuffer(44);
    const v = new DataView(header);
    const ascii = (offset, text) => {
      for (let i = 0; i < text.length; i++) v.setUint8(offset + i, text.charCodeAt(i));
    };
    ascii(0, "RIFF");
    v.setUint32(4, 36 + length, true);
    ascii(8, "WAVE");
    ascii(12, "fmt ");
    v.setUint32(16, 16, true);
    v.setUint16(20, 1, true); // PCM
    v.setUint16(22, channels, true);
    v.setUint32(24, rate, true);
    v.setUint32(28, rate * channels * 2, true);
    v.setUint16(32, channels * 2, true);
    v.setUint16(34, 16, true);
    ascii(36, "data");
    v.setUint32(40, length, true);
    return new Blob([header, ...chunks], { type: "audio/wav" });
  }

  function offerDownload(current) {
    const format = els.format.value;
    const info = state.info || { sample_rate: 24000, channels: 1 };
    const link = els.download;
    link.onclick = null;
    if (format === "wav" || format === "pcm") {
      const blob =
        format === "wav"
          ? wavBlob(current.chunks, info.sample_rate, info.channels || 1)
          : new Blob(current.chunks, { type: "audio/pcm" });
      state.downloadUrl = URL.createObjectURL(blob);
      link.href = state.downloadUrl;
      link.download = `speech.${format}`;
      link.textContent = format === "wav" ? "Download WAV" : `Download PCM (${info.sample_rate} Hz)`;
    } else {
      // A compressed format is the server's to encode: ask again, non-streamed, on click.
      const request = body({ response_format: format });
      link.removeAttribute("href");
      link.href = "#";
      link.download = `speech.${format}`;
      link.textContent = `Download ${format}`;
      link.onclick = async (event) => {
        event.preventDefault();
        link.setAttribute("aria-busy", "true");
        setStatus(`Encoding ${format}…`);
        try {
          const response = await fetch("/v1/audio/speech", {
            method: "POST",
            headers: { "Content-Type": "application/json", ...authHeaders() },
            body: JSON.stringify(request),
          });
          if (!response.ok) throw await errorFrom(response);
          const url = URL.createObjectURL(await response.blob());
          const a = document.createElement("a");
          a.href = url;
          a.download = `speech.${format}`;
          document.body.append(a);
          a.click();
          a.remove();
          setTimeout(() => URL.revokeObjectURL(url), 60000);
          setStatus(`Downloaded ${format}.`);
        } catch (error) {
          showError(error.error ? error : { error: "download_failed", detail: String(error) });
        } finally {
          link.removeAttribute("aria-busy");
        }
      };
    }
    link.hidden = false;
  }

  // --- wiring ---------------------------------------------------------------------------------

  els.speed.addEventListener("input", () => {
    els.speedValue.textContent = Number(els.speed.value).toFixed(2);
  });
  els.model.addEventListener("change", () => {
    describeModel();
    loadVoices();
  });
  els.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  els.apiKey.addEventListener("change", () => {
    const key = els.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    loadModels().then(loadVoices);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    speak();
  });
  els.stop.addEventListener("click", () => stopRun("Stopped."));

  loadModels().then(loadVoices);
})();
