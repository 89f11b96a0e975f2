// The /record/ page: the microphone into Parley's Socket.IO namespace /streaming (seed 001,
// docs/recordings.md), with the official Socket.IO client (web/static/web/vendor/).
//
// The socket connects first, declaring raw PCM in its handshake `auth`
// ({format: "pcm", sample_rate_hz, channels: 1, bytes_per_sample: 2}); once the server's
// `response` ("Connected to server", with the streaming_id) arrives, the microphone starts. An
// AudioWorklet (the agent page's mic-worklet.js: a windowed-sinc downsampler) turns the
// AudioContext's rate into 16-bit mono PCM at the chosen rate and reports the level; every
// ~100 ms of it leaves as one `audio_chunk` {chunk: <binary>}. Stop sends the rest, then
// `stop_recording`; `result_file_path` gives the WAV's URL, which the page plays and offers.
//
// Everything measured is on window.parleyRecord (times are performance.now() milliseconds).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const root = $("record");
  const els = {
    start: $("record-start"),
    stop: $("record-stop"),
    clock: $("record-clock"),
    status: $("record-status"),
    meter: $("record-meter-level"),
    peak: $("record-meter-peak"),
    level: $("record-level"),
    rate: $("record-rate"),
    room: $("record-room"),
    speaker: $("record-speaker"),
    apiKey: $("record-api-key"),
    live: $("record-live"),
    liveLink: $("record-live-link"),
    errors: $("record-errors"),
    result: $("record-result"),
    audio: $("record-audio"),
    download: $("record-download"),
    fileUrl: $("record-file-url"),
    sid: $("record-sid"),
    wall: $("record-wall"),
    sent: $("record-sent"),
    saved: $("record-saved"),
  };

  const NAMESPACE = "/streaming";
  const SEND_EVERY_MS = 100; // one audio_chunk (one committed row) per ~100 ms of audio
  const KEY_STORAGE = "parley.apiKey";

  const state = (window.parleyRecord = {
    state: "idle",
    streamingId: null,
    sampleRate: null,
    captureRate: null, // the AudioContext's (the microphone side)
    startedAt: null, // the first microphone audio
    stoppedAt: null, // Stop pressed
    wallSeconds: null, // stoppedAt - startedAt: how long the page recorded
    samplesSent: 0,
    recordedSeconds: 0, // samplesSent / sampleRate
    chunksSent: 0,
    chunksAcked: 0,
    bytesSent: 0,
    level: { rms: 0, peak: 0, db: -Infinity },
    fileUrl: null,
    recording: null, // GET /api/recordings/<sid>, when readable
    events: [],
    errors: [],
  });

  let session = null; // the current recording

  function setState(name) {
    state.state = name;
    root.dataset.state = name;
    els.start.disabled = name !== "idle";
    els.stop.disabled = name !== "recording";
  }

  function setStatus(text) {
    els.status.textContent = text;
  }

  function log(event, data) {
    state.events.push({ at: performance.now(), event, data });
  }

  function showError(error) {
    let e = error;
    if (!(error && error.error)) {
      // A DOMException from getUserMedia or Web Audio: NotAllowedError (permission refused),
      // NotFoundError (no microphone), NotReadableError (in use elsewhere)...
      const name = error && error.name ? error.name : "error";
      e = { error: name, detail: error && error.message ? error.message : String(error), field: null };
    }
    if (e.error && typeof e.error === "object") {
      // OpenAI's shape {"error": {"code", "message", "param"}}, should the API answer it.
      e = { error: e.error.code || "error", detail: e.detail || e.error.message, field: e.field || e.error.param || null };
    }
    state.errors.push(e);
    if (e.error === "auth_required" || e.error === "invalid_api_key") {
      // The key field lives in the closed settings: show it.
      els.apiKey.closest("details").open = true;
      els.apiKey.focus();
    }
    const li = document.createElement("li");
    li.textContent = e.field ? `${e.error}: ${e.detail} (field ${e.field})` : `${e.error}: ${e.detail}`;
    els.errors.append(li);
    els.errors.hidden = false;
  }

  function seconds(value) {
    return `${value.toFixed(2)} s`;
  }

  function clockText(s) {
    const minutes = Math.floor(s / 60);
    return `${minutes}:${(s - minutes * 60).toFixed(1).padStart(4, "0")}`;
  }

  /** The file on this page's origin: the server builds file_url from the Host it saw, which
   * behind a proxy or TLS terminator may not be the address the browser used. */
  function sameOrigin(fileUrl) {
    const url = new URL(fileUrl, location.href);
    return url.pathname.startsWith("/static/audio/") ? `${url.pathname}${url.search}` : url.href;
  }

  // --- level meter ------------------------------------------------------------------------------

  function showLevel(rms, peak) {
    const db = rms > 0 ? 20 * Math.log10(rms) : -Infinity;
    state.level = { rms, peak, db };
    // -60 dBFS .. 0 dBFS across the bar.
    const width = (v) => `${Math.max(0, Math.min(100, ((v > 0 ? 20 * Math.log10(v) : -60) + 60) / 0.6))}%`;
    els.meter.style.width = width(rms);
    els.peak.style.left = width(peak);
    els.level.textContent = Number.isFinite(db) ? `${db.toFixed(1)} dBFS` : "silence";
  }

  // --- one recording --------------------------------------------------------------------------

  function auth(rate) {
    const a = { format: "pcm", sample_rate_hz: rate, channels: 1, bytes_per_sample: 2 };
    const room = els.room.value.trim();
    const speaker = els.speaker.value.trim();
    const key = els.apiKey.value.trim();
    if (room) a.room = room;
    if (speaker) a.speaker = speaker;
    if (key) a.api_key = key;
    return a;
  }

  function connect(rate) {
    // websocket only: no sticky sessions needed behind a balancer (docs/recordings.md).
    const socket = io(NAMESPACE, {
      transports: ["websocket"],
      auth: auth(rate),
      reconnection: false,
      forceNew: true,
    });
    return new Promise((resolve, reject) => {
      socket.on("connect_error", (err) => {
        // A refused handshake carries the server's error object in `data`.
        reject(err && err.data && err.data.error ? err.data : { error: "connect_failed", detail: err.message });
        socket.close();
      });
      socket.on("response", (data) => {
        log("response", data);
        if (data && data.message === "Connected to server") resolve({ socket, greeting: data });
        else if (data && data.message === "received chunk") state.chunksAcked += 1;
      });
    });
  }

  async function start() {
    if (session) return;
    els.errors.replaceChildren();
    els.errors.hidden = true;
    els.result.hidden = true;
    Object.assign(state, {
      streamingId: null,
      startedAt: null,
      stoppedAt: null,
      wallSeconds: null,
      samplesSent: 0,
      recordedSeconds: 0,
      chunksSent: 0,
      chunksAcked: 0,
      bytesSent: 0,
      fileUrl: null,
      recording: null,
    });
    const rate = parseInt(els.rate.value, 10);
    state.sampleRate = rate;
    setState("connecting");
    setStatus("Connecting…");
    const current = { rate, pending: [], pendingSamples: 0, done: false };
    session = current;
    // The AudioContext is made in the click (a user gesture), before any await.
    current.ctx = new AudioContext({ latencyHint: "interactive" });
    try {
      const { socket, greeting } = await connect(rate);
      current.socket = socket;
      state.streamingId = greeting.streaming_id;
      socket.on("error", (data) => {
        log("error", data);
        showError(data);
      });
      socket.on("result_file_path", (data) => onResult(current, data));
      socket.on("disconnect", (reason) => {
        log("disconnect", reason);
        if (session === current && !current.done) {
          showError({ error: "disconnected", detail: `The server closed the connection (${reason}).` });
          teardown(current);
          setState("idle");
        }
      });
      await startMicrophone(current);
    } catch (error) {
      showError(error);
      teardown(current);
      setState("idle");
      setStatus("Not recording.");
      return;
    }
    const room = els.room.value.trim();
    els.live.hidden = !room;
    if (room) {
      els.liveLink.href = `/rooms/${encodeURIComponent(room)}/`;
      els.liveLink.textContent = room;
    }
    setState("recording");
    setStatus("Recording…");
  }

  async function startMicrophone(current) {
    const stream = await navigator.mediaDevices.getUserMedia({
      // The voice as it is: no processing that changes the level or cuts quiet parts.
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    current.stream = stream;
    const ctx = current.ctx;
    if (ctx.state === "suspended") await ctx.resume();
    state.captureRate = ctx.sampleRate;
    await ctx.audioWorklet.addModule(root.dataset.workletUrl);
    const node = new AudioWorkletNode(ctx, "parley-mic-downsampler", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      processorOptions: { outRate: current.rate },
    });
    current.node = node;
    current.sendEvery = Math.round((current.rate * SEND_EVERY_MS) / 1000);
    node.port.onmessage = (event) => onPcm(current, event.data);
    current.source = ctx.createMediaStreamSource(stream);
    current.source.connect(node);
  }

  function onPcm(current, { pcm, rms, peak }) {
    if (current.done || session !== current) return;
    const samples = new Int16Array(pcm);
    if (state.startedAt == null) {
      // The first block covers the time just before it arrived.
      state.startedAt = performance.now() - (samples.length / current.rate) * 1000;
    }
    current.pending.push(samples);
    current.pendingSamples += samples.length;
    showLevel(rms, peak);
    if (current.pendingSamples >= current.sendEvery) flush(current);
    els.clock.textContent = clockText((state.samplesSent + current.pendingSamples) / current.rate);
  }

  function flush(current) {
    if (!current.pendingSamples) return;
    const chunk = new Int16Array(current.pendingSamples);
    let offset = 0;
    for (const part of current.pending) {
      chunk.set(part, offset);
      offset += part.length;
    }
    current.pending = [];
    current.pendingSamples = 0;
    // An ArrayBuffer is sent as a binary attachment, as the seed's `chunk` is.
    current.socket.emit("audio_chunk", { chunk: chunk.buffer });
    state.chunksSent += 1;
    state.bytesSent += chunk.byteLength;
    state.samplesSent += chunk.length;
    state.recordedSeconds = state.samplesSent / current.rate;
  }

  function stopMicrophone(current) {
    if (current.node) {
      current.node.port.onmessage = null;
      current.node.port.postMessage("stop");
    }
    if (current.source) current.source.disconnect();
    if (current.stream) for (const track of current.stream.getTracks()) track.stop();
  }

  function stop() {
    const current = session;
    if (!current || state.state !== "recording") return;
    state.stoppedAt = performance.now();
    stopMicrophone(current);
    flush(current); // what the worklet handed over before the stop
    state.wallSeconds = state.startedAt == null ? 0 : (state.stoppedAt - state.startedAt) / 1000;
    if (!state.samplesSent) {
      showError({ error: "no_audio", detail: "The microphone sent nothing: nothing to save." });
      teardown(current);
      setState("idle");
      return;
    }
    setState("saving");
    setStatus("Saving…");
    // Events are handled in order on the server: every chunk above is stored first.
    current.socket.emit("stop_recording");
  }

  async function onResult(current, data) {
    log("result_file_path", data);
    current.done = true;
    state.fileUrl = data.file_url;
    const url = sameOrigin(data.file_url);
    els.audio.src = url;
    els.download.href = url;
    els.download.download = `${data.streaming_id}.wav`;
    els.fileUrl.href = url;
    els.fileUrl.textContent = data.file_url;
    els.sid.textContent = data.streaming_id;
    els.wall.textContent = seconds(state.wallSeconds || 0);
    els.sent.textContent = `${seconds(state.recordedSeconds)} in ${state.chunksSent} chunks (${state.bytesSent} bytes)`;
    els.saved.textContent = "…";
    els.result.hidden = false;
    teardown(current);
    setState("idle");
    setStatus("Saved.");
    try {
      const key = els.apiKey.value.trim();
      const response = await fetch(`/api/recordings/${encodeURIComponent(data.streaming_id)}`, {
        headers: key ? { Authorization: `Bearer ${key}` } : {},
      });
      if (response.ok) {
        state.recording = await response.json();
        const r = state.recording;
        els.saved.textContent = `${seconds(r.duration_ms / 1000)}, ${r.file_bytes} bytes (${r.status})`;
      } else {
        els.saved.textContent = "—";
      }
    } catch (_) {
      els.saved.textContent = "—";
    }
  }

  function teardown(current) {
    stopMicrophone(current);
    if (current.socket) current.socket.close();
    if (current.ctx && current.ctx.state !== "closed") current.ctx.close();
    showLevel(0, 0);
    if (session === current) session = null;
  }

  // --- wiring ---------------------------------------------------------------------------------

  els.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  els.apiKey.addEventListener("change", () => {
    const key = els.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  });
  // The settings are a form only so the key field is one (browsers ask that of passwords).
  $("record-settings").addEventListener("submit", (event) => event.preventDefault());
  els.start.addEventListener("click", start);
  els.stop.addEventListener("click", stop);
  if (typeof io !== "function") {
    showError({ error: "client_missing", detail: "The Socket.IO client did not load." });
    els.start.disabled = true;
  }
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    showError({
      error: "unsupported",
      detail: "This browser cannot record here (microphone access needs https or localhost).",
    });
    els.start.disabled = true;
  }
})();
