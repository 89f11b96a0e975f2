// The agent page: talk to Parley's voice agent (WS /ws/agent, docs/agent.md) in a browser.
//
// Start (a user gesture, which browsers require for the microphone and for audio output)
// opens the WebSocket and the microphone. mic-worklet.js turns the microphone into 16 kHz
// PCM16 in 20 ms chunks, which go to the server as binary frames of one open utterance
// (`user.audio.start` once, then audio forever: the server's VAD finds the turns and barges
// in by itself). The agent's audio is played through Web Audio, each chunk scheduled right
// after the previous one; `agent.interrupt` stops all of it at once.
//
// State for tests and the curious: window.parley (see `parley` below).

(function () {
  "use strict";

  const root = document.getElementById("agent");
  if (!root) return;

  const $ = (selector) => root.querySelector(selector);
  const ui = {
    start: $("#agent-start"),
    stop: $("#agent-stop"),
    state: $("#agent-state"),
    session: $("#agent-session"),
    roomLink: $("#agent-room-link"),
    roomNone: $("#agent-room-none"),
    meter: $("#agent-meter-level"),
    log: $("#agent-transcript"),
    errors: $("#agent-errors"),
    form: $("#agent-text-form"),
    text: $("#agent-text"),
    send: $("#agent-send"),
    empty: $("#agent-empty"),
  };

  const config = {
    room: root.dataset.room || "",
    wsPath: root.dataset.wsPath || "/ws/agent",
    workletUrl: root.dataset.workletUrl,
    // "binary" (default): raw PCM frames; "json": user.audio.chunk frames with base64 audio.
    wire: new URLSearchParams(location.search).get("wire") === "json" ? "json" : "binary",
  };

  const PLAYBACK_LEAD_S = 0.04; // how far ahead of "now" a chunk is scheduled when idle
  const MAX_EVENTS = 10000;
  const INPUT_FORMAT = { encoding: "pcm_s16le", sample_rate_hz: 16000, channels: 1 };

  // Everything tests read. Audio payloads are never kept: frames are stored with
  // `audio_bytes` in place of `audio`.
  const parley = {
    state: "idle", // idle | connecting | connected | closed | error
    mic: "off", // off | starting | on | unavailable
    session: null,
    events: [],
    sent: [], // client frames (JSON ones; binary audio frames are only counted)
    transcripts: [], // {role, utteranceId, text, final, ...} in conversation order
    playedChunks: 0, // agent chunks whose playback started
    scheduledChunks: 0,
    flushedChunks: 0, // scheduled but stopped before they started (interrupts)
    droppedChunks: 0, // arrived for a reply that was already interrupted
    playback: [], // per agent chunk: {utteranceId, sequence, scheduledAt, startedAt, state}
    interrupted: [], // {utteranceId, heard_ms, heard_text, at}
    metrics: [],
    errors: [],
    micChunks: 0,
    level: 0,
  };
  window.parley = parley;

  let socket = null;
  let audio = null; // AudioContext (playback, and capture where the browser allows)
  let captureAudio = null; // a capture-only AudioContext, when one is needed (Firefox)
  let micStream = null;
  let micSource = null;
  let micNode = null;
  let micSink = null;
  let micUtterance = null;
  let micSequence = 0;
  let outputFormat = { encoding: "pcm_s16le", sample_rate_hz: 16000, channels: 1 };
  let nextStart = 0; // AudioContext time at which the next agent chunk starts
  let currentReply = null; // utteranceId of the agent audio being played
  const live = new Set(); // scheduled or playing {source, record}
  const cutReplies = new Set(); // agent utteranceIds whose playback was cut
  const entries = new Map(); // "user:<id>" / "agent:<id>" -> transcript entry
  const nodes = new WeakMap(); // transcript entry -> its <li>
  const t0 = performance.now();
  const now = () => Math.round(performance.now() - t0);

  // ---------------------------------------------------------------------------------------
  // state and errors

  function setState(state) {
    parley.state = state;
    root.dataset.state = state;
    ui.state.textContent = {
      idle: "Not connected",
      connecting: "Connecting…",
      connected: parley.mic === "on" ? "Listening" : "Connected (text only)",
      closed: "Disconnected",
      error: "Error",
    }[state];
    const active = state === "connecting" || state === "connected";
    ui.start.textContent = active ? "End" : "Start";
    ui.start.classList.toggle("agent-button-end", active);
    ui.stop.disabled = state !== "connected";
    ui.send.disabled = state !== "connected";
    ui.text.disabled = state !== "connected";
  }

  function showError(message, detail) {
    const error = { message, detail: detail || "", at: now() };
    parley.errors.push(error);
    const item = document.createElement("li");
    item.textContent = detail ? `${message}: ${detail}` : message;
    ui.errors.append(item);
    ui.errors.hidden = false;
    while (ui.errors.children.length > 5) ui.errors.firstElementChild.remove();
  }

  // ---------------------------------------------------------------------------------------
  // connection

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const query = config.room ? `?room=${encodeURIComponent(config.room)}` : "";
    return `${scheme}://${location.host}${config.wsPath}${query}`;
  }

  function sendJson(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    parley.sent.push({ ...frame, at: now() });
    if (parley.sent.length > MAX_EVENTS) parley.sent.splice(0, parley.sent.length - MAX_EVENTS);
    return true;
  }

  async function start() {
    for (const item of [...ui.errors.children]) item.remove();
    ui.errors.hidden = true;
    // Both inside the click: audio output and microphone need the user's gesture.
    audio = new (window.AudioContext || window.webkitAudioContext)({ latencyHint: "interactive" });
    if (audio.state === "suspended") audio.resume().catch(() => {});
    nextStart = 0;
    // A new session numbers its utterances afresh: earlier turns stay on screen, unkeyed.
    entries.clear();
    cutReplies.clear();
    currentReply = null;
    setState("connecting");

    const opened = new Promise((resolve, reject) => {
      socket = new WebSocket(wsUrl());
      socket.binaryType = "arraybuffer";
      socket.addEventListener("open", () => resolve(socket), { once: true });
      socket.addEventListener("error", () => reject(new Error("WebSocket error")), { once: true });
      socket.addEventListener("message", onMessage);
      socket.addEventListener("close", onClose);
    });
    const mic = openMicrophone();

    try {
      await opened;
    } catch (err) {
      showError("Could not connect to the agent", wsUrl());
      stopAll("error");
      return;
    }
    setState("connected");
    const ready = await mic;
    if (ready && socket && socket.readyState === WebSocket.OPEN) startStreaming();
    setState(parley.state === "connected" ? "connected" : parley.state);
  }

  function onClose(event) {
    if (event.target !== socket) return;
    const wasActive = parley.state === "connected" || parley.state === "connecting";
    if (wasActive && event.code !== 1000) {
      showError("The connection closed", `code ${event.code}${event.reason ? `, ${event.reason}` : ""}`);
    }
    stopAll(parley.state === "error" ? "error" : "closed");
  }

  function stopAll(state) {
    stopMicrophone();
    flushPlayback("hangup");
    if (socket) {
      const s = socket;
      socket = null;
      if (s.readyState === WebSocket.OPEN || s.readyState === WebSocket.CONNECTING) s.close(1000);
    }
    if (audio) {
      const a = audio;
      audio = null;
      a.close().catch(() => {});
    }
    setState(state);
  }

  // ---------------------------------------------------------------------------------------
  // microphone

  async function openMicrophone() {
    parley.mic = "starting";
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      parley.mic = "unavailable";
      showError("No microphone access here", "the page needs https:// or localhost; text still works");
      return false;
    }
    try {
      micStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      if (!audio) throw new Error("stopped");
      await audio.audioWorklet.addModule(config.workletUrl);
      if (!audio) throw new Error("stopped");
      const capture = captureContext();
      if (capture !== audio) await capture.audioWorklet.addModule(config.workletUrl);
      micSource = capture.createMediaStreamSource(micStream);
      micNode = new AudioWorkletNode(capture, "parley-mic-downsampler", {
        numberOfInputs: 1,
        numberOfOutputs: 1,
        outputChannelCount: [1],
        processorOptions: { outRate: INPUT_FORMAT.sample_rate_hz },
      });
      // A silent path to the destination keeps the node pulled in every browser.
      micSink = capture.createGain();
      micSink.gain.value = 0;
      micSource.connect(micNode);
      micNode.connect(micSink);
      micSink.connect(capture.destination);
      micNode.port.onmessage = onMicChunk;
      parley.mic = "on";
      return true;
    } catch (err) {
      stopMicrophone();
      if (err && err.message === "stopped") return false;
      parley.mic = "unavailable";
      showError("Microphone unavailable", `${err && err.name ? err.name + ": " : ""}${err && err.message}; text still works`);
      return false;
    }
  }

  // The AudioContext that captures. Normally the playback one; but Firefox cannot connect a
  // microphone whose rate differs from the context's, so then a second context at the
  // microphone's own rate captures (the worklet downsamples from whatever rate it runs at).
  function captureContext() {
    try {
      audio.createMediaStreamSource(micStream).disconnect();
      return audio;
    } catch (err) {
      const rate = micStream.getAudioTracks()[0].getSettings().sampleRate;
      if (!rate) throw err;
      captureAudio = new (window.AudioContext || window.webkitAudioContext)({ sampleRate: rate });
      captureAudio.resume().catch(() => {});
      return captureAudio;
    }
  }

  function startStreaming() {
    micUtterance = `mic-${Math.random().toString(36).slice(2, 10)}`;
    micSequence = 0;
    sendJson({ type: "user.audio.start", utteranceId: micUtterance, format: INPUT_FORMAT });
  }

  function onMicChunk(event) {
    const { pcm, peak } = event.data;
    parley.level = Math.max(peak, parley.level * 0.85);
    if (!micUtterance || !socket || socket.readyState !== WebSocket.OPEN) return;
    if (config.wire === "json") {
      socket.send(
        JSON.stringify({
          type: "user.audio.chunk",
          utteranceId: micUtterance,
          sequence: micSequence,
          timestamp: micSequence * 20,
          audio: toBase64(new Uint8Array(pcm)),
        }),
      );
    } else {
      socket.send(pcm);
    }
    micSequence += 1;
    parley.micChunks += 1;
  }

  function stopMicrophone() {
    if (micUtterance && socket && socket.readyState === WebSocket.OPEN) {
      sendJson({ type: "user.audio.end", utteranceId: micUtterance });
    }
    micUtterance = null;
    if (micNode) {
      micNode.port.onmessage = null;
      micNode.port.postMessage("stop");
      micNode.disconnect();
    }
    if (micSource) micSource.disconnect();
    if (micSink) micSink.disconnect();
    if (micStream) for (const track of micStream.getTracks()) track.stop();
    micNode = micSource = micSink = micStream = null;
    if (captureAudio) {
      captureAudio.close().catch(() => {});
      captureAudio = null;
    }
    if (parley.mic !== "unavailable") parley.mic = "off";
    parley.level = 0;
  }

  function drawMeter() {
    parley.level *= 0.92; // decays between chunks
    const db = parley.level > 0 ? 20 * Math.log10(parley.level) : -100;
    const fraction = Math.max(0, Math.min(1, (db + 60) / 60)); // -60 dBFS .. 0 dBFS
    ui.meter.style.width = `${(fraction * 100).toFixed(1)}%`;
    ui.meter.classList.toggle("agent-meter-hot", db > -6);
    requestAnimationFrame(drawMeter);
  }

  // ---------------------------------------------------------------------------------------
  // agent audio playback

  function playChunk(frame) {
    const record = {
      utteranceId: frame.utteranceId,
      sequence: frame.sequence,
      receivedAt: now(),
      scheduledAt: null,
      startedAt: null,
      state: "received",
    };
    parley.playback.push(record);
    if (parley.playback.length > MAX_EVENTS) parley.playback.splice(0, parley.playback.length - MAX_EVENTS);
    currentReply = frame.utteranceId;
    if (cutReplies.has(frame.utteranceId) || !audio || !frame.audio) {
      record.state = "dropped";
      parley.droppedChunks += 1;
      return;
    }
    const rate = outputFormat.sample_rate_hz || 16000;
    const channels = outputFormat.channels || 1;
    const bytes = fromBase64(frame.audio);
    const samples = new Int16Array(bytes.buffer, bytes.byteOffset, Math.floor(bytes.length / 2));
    const frames = Math.floor(samples.length / channels);
    if (frames === 0) return;
    const buffer = audio.createBuffer(channels, frames, rate);
    for (let c = 0; c < channels; c++) {
      const out = buffer.getChannelData(c);
      for (let i = 0; i < frames; i++) out[i] = samples[i * channels + c] / 32768;
    }
    const source = audio.createBufferSource();
    source.buffer = buffer;
    source.connect(audio.destination);
    const at = Math.max(audio.currentTime + PLAYBACK_LEAD_S, nextStart);
    nextStart = at + buffer.duration;
    const item = { source, record, at };
    live.add(item);
    source.onended = () => {
      live.delete(item);
      if (record.state === "scheduled") markStarted(record); // ended on its own: it played
      if (record.state === "playing") record.state = "played";
    };
    source.start(at);
    record.scheduledAt = now();
    record.startsAt = at;
    record.state = "scheduled";
    parley.scheduledChunks += 1;
    // Counted as played once its start time has come (unless flushed before that).
    setTimeout(() => markStarted(record), Math.max(0, (at - audio.currentTime) * 1000));
  }

  function markStarted(record) {
    if (record.state !== "scheduled") return;
    record.state = "playing";
    record.startedAt = now();
    parley.playedChunks += 1;
  }

  // Stop every scheduled source now, and forget the queue.
  function flushPlayback(reason) {
    let flushed = 0;
    const ctxNow = audio ? audio.currentTime : 0;
    for (const item of live) {
      try {
        item.source.stop();
      } catch (err) {
        /* already stopped */
      }
      if (item.record.state === "scheduled" && item.at > ctxNow) {
        item.record.state = "flushed";
        flushed += 1;
      } else if (item.record.state === "scheduled" || item.record.state === "playing") {
        markStarted(item.record); // it had begun: cut in the middle
        item.record.state = "cut";
      }
      item.record.stopReason = reason;
    }
    live.clear();
    parley.flushedChunks += flushed;
    nextStart = 0;
    return flushed;
  }

  // ---------------------------------------------------------------------------------------
  // server frames

  function onMessage(event) {
    if (typeof event.data !== "string") return; // the server sends JSON only
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (err) {
      showError("Malformed frame from the server", String(event.data).slice(0, 80));
      return;
    }
    const logged = { ...frame, received_at: now() };
    if (typeof frame.audio === "string") {
      delete logged.audio;
      logged.audio_bytes = Math.floor((frame.audio.length * 3) / 4);
    }
    parley.events.push(logged);
    if (parley.events.length > MAX_EVENTS) parley.events.splice(0, parley.events.length - MAX_EVENTS);
    const handler = handlers[frame.type];
    if (handler) handler(frame);
  }

  const handlers = {
    "session.created": onSession,
    "session.updated": onSession,
    "user.speech.started": (f) => {
      const entry = entry_("user", f.utteranceId);
      entry.speaking = true;
      render(entry);
    },
    "user.speech.stopped": (f) => {
      const entry = entry_("user", f.utteranceId);
      entry.speaking = false;
      render(entry);
    },
    "transcript.partial": (f) => {
      const entry = entry_("user", f.utteranceId);
      if (!entry.final) entry.text = f.text || "";
      render(entry);
    },
    "transcript.final": (f) => {
      const typed = pendingTyped(f.text);
      const entry = typed || entry_("user", f.utteranceId);
      if (typed) {
        entries.set(`user:${f.utteranceId}`, typed);
        typed.utteranceId = f.utteranceId;
      }
      entry.text = f.text || "";
      entry.final = true;
      entry.speaking = false;
      render(entry);
    },
    "agent.text.delta": (f) => {
      const entry = entry_("agent", f.utteranceId);
      entry.text += f.text || "";
      render(entry);
    },
    "agent.text.done": (f) => {
      const entry = entry_("agent", f.utteranceId);
      if (typeof f.text === "string") entry.text = f.text;
      entry.final = true;
      render(entry);
    },
    "agent.audio.chunk": playChunk,
    "agent.audio.end": (f) => {
      const entry = entry_("agent", f.utteranceId);
      entry.audioDone = true;
      entry.duration_ms = f.duration_ms;
      render(entry);
    },
    "agent.interrupt": onInterrupt,
    "turn.metrics": (f) => {
      parley.metrics.push({ ...f });
      const entry =
        entries.get(`agent:${f.reply_utteranceId}`) || entries.get(`user:${f.utteranceId}`);
      if (entry) {
        entry.metrics = { ...f };
        render(entry);
      }
    },
    error: (f) => showError(f.code || "error", [f.detail, f.field && `(${f.field})`].filter(Boolean).join(" ")),
  };

  function onSession(frame) {
    const session = frame.session || {};
    parley.session = session;
    if (session.output_format) outputFormat = { ...outputFormat, ...session.output_format };
    ui.session.textContent = session.id || "—";
    const room = session.room || config.room;
    if (room) showRoom(room);
  }

  function showRoom(room) {
    ui.roomLink.href = `/rooms/${encodeURIComponent(room)}/`;
    ui.roomLink.textContent = room;
    ui.roomLink.hidden = false;
    ui.roomNone.hidden = true;
  }

  function onInterrupt(frame) {
    const flushed = flushPlayback("interrupt");
    if (frame.utteranceId) cutReplies.add(frame.utteranceId);
    const record = {
      utteranceId: frame.utteranceId,
      heard_ms: frame.heard_ms,
      heard_text: frame.heard_text,
      flushed,
      at: now(),
    };
    parley.interrupted.push(record);
    const entry = frame.utteranceId ? entries.get(`agent:${frame.utteranceId}`) : lastAgentEntry();
    if (entry) {
      entry.interrupted = true;
      entry.heard_text = typeof frame.heard_text === "string" ? frame.heard_text : "";
      entry.heard_ms = frame.heard_ms;
      render(entry);
    }
  }

  // ---------------------------------------------------------------------------------------
  // transcript

  function entry_(role, utteranceId) {
    const key = `${role}:${utteranceId}`;
    let entry = entries.get(key);
    if (!entry) {
      entry = { role, utteranceId, text: "", final: false, at: now() };
      entries.set(key, entry);
      parley.transcripts.push(entry);
    }
    return entry;
  }

  function lastAgentEntry() {
    for (let i = parley.transcripts.length - 1; i >= 0; i--) {
      if (parley.transcripts[i].role === "agent") return parley.transcripts[i];
    }
    return null;
  }

  // A typed line waiting for the server's transcript of it (text.input).
  function pendingTyped(text) {
    for (const entry of parley.transcripts) {
      if (entry.typed && !entry.utteranceId && entry.text.trim() === (text || "").trim()) return entry;
    }
    return null;
  }

  function render(entry) {
    let node = nodes.get(entry);
    if (!node) {
      node = document.createElement("li");
      node.className = `agent-turn agent-turn-${entry.role}`;
      const who = document.createElement("span");
      who.className = "agent-who";
      who.textContent = entry.role === "user" ? "You" : "Agent";
      const body = document.createElement("div");
      body.className = "agent-says";
      const meta = document.createElement("div");
      meta.className = "agent-meta";
      node.append(who, body, meta);
      nodes.set(entry, node);
      ui.log.append(node);
      ui.empty.hidden = true;
    }
    if (entry.utteranceId) node.dataset.utteranceId = entry.utteranceId;
    node.classList.toggle("agent-partial", !entry.final);
    node.classList.toggle("agent-speaking", Boolean(entry.speaking));
    node.classList.toggle("agent-interrupted", Boolean(entry.interrupted));
    const body = node.querySelector(".agent-says");
    body.replaceChildren();
    if (entry.interrupted) {
      const heard = entry.heard_text || "";
      const full = entry.text || "";
      const rest = (full.startsWith(heard) ? full.slice(heard.length) : full).trimStart();
      const heardSpan = document.createElement("span");
      heardSpan.className = "agent-heard";
      heardSpan.textContent = heard;
      const cut = document.createElement("span");
      cut.className = "agent-cut";
      cut.title = `interrupted after ${entry.heard_ms ?? "?"} ms`;
      cut.textContent = "✂";
      const unheard = document.createElement("del");
      unheard.className = "agent-unheard";
      unheard.textContent = rest;
      body.append(heardSpan, cut, unheard);
    } else if (entry.text) {
      body.textContent = entry.text;
    } else {
      body.textContent = entry.role === "user" ? "…" : "";
      body.classList.add("agent-placeholder");
    }
    if (entry.text || entry.interrupted) body.classList.remove("agent-placeholder");
    if (entry.final && entry.role === "user" && !entry.text) {
      body.textContent = "(nothing recognised)";
      body.classList.add("agent-placeholder");
    }
    node.querySelector(".agent-meta").textContent = describeMeta(entry);
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function describeMeta(entry) {
    const parts = [];
    if (entry.typed) parts.push("typed");
    if (entry.interrupted) parts.push(`interrupted at ${fmtMs(entry.heard_ms)}`);
    const m = entry.metrics;
    if (m) {
      if (m.reply_latency_ms != null) parts.push(`reply in ${fmtMs(m.reply_latency_ms)}`);
      const detail = [
        ["vad wait", m.vad_wait_ms],
        ["stt", m.stt_ms],
        ["first token", m.first_token_ms],
        ["first audio", m.first_audio_ms],
      ]
        .filter(([k, v]) => v != null && !(v === 0 && (k === "stt" || k === "vad wait")))
        .map(([k, v]) => `${k} ${fmtMs(v)}`);
      if (detail.length) parts.push(detail.join(", "));
    }
    return parts.join(" · ");
  }

  function fmtMs(ms) {
    if (ms == null || Number.isNaN(Number(ms))) return "?";
    return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
  }

  // ---------------------------------------------------------------------------------------
  // base64 without choking on large buffers

  function toBase64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  function fromBase64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // ---------------------------------------------------------------------------------------
  // controls

  ui.start.addEventListener("click", () => {
    if (parley.state === "connecting" || parley.state === "connected") {
      stopAll("closed");
    } else {
      start();
    }
  });

  ui.stop.addEventListener("click", () => {
    // Silence now; the server answers with agent.interrupt (heard_ms, heard_text).
    // Chunks of this reply still on their way are dropped too.
    if (currentReply) cutReplies.add(currentReply);
    flushPlayback("stop");
    sendJson({ type: "agent.interrupt" });
  });

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.text.value.trim();
    if (!text || !sendJson({ type: "text.input", text })) return;
    const entry = { role: "user", utteranceId: null, text, final: true, typed: true, at: now() };
    parley.transcripts.push(entry);
    render(entry);
    ui.text.value = "";
  });

  if (config.room) showRoom(config.room);
  setState("idle");
  requestAnimationFrame(drawMeter);
})();
