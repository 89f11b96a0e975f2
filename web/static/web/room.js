// The room page: a spectator of one room over /spectate/ws (docs/api.md, "Spectator socket").
//
// - Every event is handled once, whatever the socket sends: a fresh join's `state` carries the
//   latest id and the backlog audio after it has older ids, and a resumed socket replays from
//   `after`, so events are de-duplicated by id (never by order).
// - History: a fresh join's socket sends only the room as it is now, so on the first `state`
//   the page loads the turns, transcript and events of the last HISTORY_EVENTS ids before it
//   from GET /api/rooms/{room}/events (no audio: what was played is not played again) and
//   holds the socket's messages until they are drawn; the same id is never handled twice.
// - On a dropped connection it reconnects with `after=<highest id seen>`, with a growing
//   back-off, and says so in the event log.
// - Audio: each `audio_chunk` (base64 PCM) becomes an AudioBuffer scheduled on the
//   AudioContext clock. A stream's first chunk (or one that came after its predecessor had
//   finished playing: an underrun) starts JITTER_S from now; every other chunk starts exactly
//   where the previous one of its stream ends, so consecutive chunks play without gaps.
//   A fresh start fades in over a few ms, a cut stream fades out, so neither clicks.
// - What it did is on `window.parleyRoom` (the browser tests read it): `scheduled` holds
//   {stream, seq, id, startAt, duration, endAt} in AudioContext seconds.
"use strict";

(() => {
  const ROOM = JSON.parse(document.getElementById("room-name").textContent);
  const params = new URLSearchParams(location.search);
  // The jitter buffer: how far ahead of "now" a stream's first chunk is scheduled.
  const JITTER_MS = clamp(Number(params.get("jitter_ms")) || 120, 20, 2000);
  const JITTER_S = JITTER_MS / 1000;
  // A chunk due closer to "now" than this is late: the audio thread could miss its start.
  const MIN_LEAD_S = 0.01;
  const FADE_S = 0.005;
  const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];
  const MAX_LOG_ROWS = 400;
  const MAX_KEPT_EVENTS = 20000;
  const HISTORY_EVENTS = 300;
  const HISTORY_TYPES = "turn,speech,playback_done,input";
  const HISTORY_TIMEOUT_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    conn: $("room-conn"),
    listen: $("room-listen"),
    audio: $("room-audio"),
    holder: $("floor-holder"),
    since: $("floor-since"),
    stream: $("floor-stream"),
    spectators: $("floor-spectators"),
    lastEvent: $("floor-last-event"),
    timeline: $("room-timeline"),
    transcript: $("room-transcript"),
    log: $("room-log"),
    showAudio: $("room-show-audio"),
  };

  const state = (window.parleyRoom = {
    room: ROOM,
    jitterMs: JITTER_MS,
    status: "connecting",
    listening: false,
    connections: 0, // sockets opened
    reconnects: 0, // of which after a drop
    socketUrls: [], // every URL a socket was opened on (shows the `after` it resumed from)
    lastId: 0, // the highest event id handled
    events: [], // {id, type} of every event handled, once each, in handling order
    duplicates: 0, // events received again and dropped
    errors: [], // `error` messages from the server
    scheduled: [], // audio chunks put on the AudioContext clock
    skipped: 0, // chunks heard before this page listened (late join) or after a cut
    underruns: 0, // chunks that came after their predecessor had finished playing
    played: 0, // chunks whose playback ended
    floor: null, // the last `state` body
    history: 0, // events from before the join, loaded from the events endpoint
    historyLoaded: false,
    audioTime: () => (audio.ctx ? audio.ctx.currentTime : null),
  });

  const seen = new Set();
  const streams = new Map(); // stream_id -> what the page knows and plays of it
  const turns = new Map(); // turn_id -> timeline row
  const utterances = new Map(); // stream_id -> transcript row
  const audio = { ctx: null, master: null };
  let socket = null;
  let attempt = 0;
  let droppedAt = null;
  let floor = null;
  let held = null; // socket messages held while the history before the join loads
  let replaying = false; // drawing history: no scrolling, rows marked as history

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  // --- the socket -------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    let url = `${scheme}://${location.host}/spectate/ws?room=${encodeURIComponent(ROOM)}`;
    if (state.lastId > 0) url += `&after=${state.lastId}`;
    state.socketUrls.push(url);
    const ws = (socket = new WebSocket(url));
    setStatus(state.connections ? "reconnecting" : "connecting");
    ws.onopen = () => {
      state.connections += 1;
      attempt = 0;
      if (droppedAt !== null) {
        state.reconnects += 1;
        const away = ((performance.now() - droppedAt) / 1000).toFixed(1);
        note(`reconnected after ${away} s, resuming after event #${state.lastId}`, "reconnect");
        setStatus("reconnected");
        droppedAt = null;
      } else {
        setStatus("live");
      }
    };
    ws.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (held) {
        held.push(event);
        return;
      }
      if (!state.historyLoaded && event.type === "state" && typeof event.id === "number") {
        state.historyLoaded = true;
        held = [event];
        loadHistory(event.id).finally(() => {
          const messages = held;
          held = null;
          for (const message of messages) handle(message);
        });
        return;
      }
      handle(event);
    };
    ws.onclose = (close) => {
      if (ws !== socket) return;
      socket = null;
      if (close.code === 4400) {
        // A refused query (a bad room name or `after`): retrying cannot help.
        setStatus("refused", close.reason);
        return;
      }
      if (droppedAt === null) {
        droppedAt = performance.now();
        note(`connection lost (code ${close.code}${close.reason ? `: ${close.reason}` : ""})`, "drop");
      }
      const wait = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
      attempt += 1;
      setStatus("reconnecting", `retry in ${(wait / 1000).toFixed(1)} s`);
      setTimeout(connect, wait);
    };
  }

  function setStatus(status, detail = "") {
    state.status = status;
    ui.conn.dataset.state = status;
    const words = {
      connecting: "connecting…",
      live: "live",
      reconnecting: "reconnecting…",
      reconnected: `live · reconnected${state.reconnects > 1 ? ` ×${state.reconnects}` : ""}`,
      refused: "refused",
    };
    ui.conn.textContent = words[status] + (detail ? ` (${detail})` : "");
  }

  // --- history ----------------------------------------------------------------------------

  // The events before `until` (the join's `state` id), oldest first, without audio chunks.
  async function loadHistory(until) {
    let after = Math.max(0, until - HISTORY_EVENTS);
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), HISTORY_TIMEOUT_MS);
    replaying = true;
    try {
      for (let page = 0; page < 5 && after < until - 1; page += 1) {
        const url = `/api/rooms/${encodeURIComponent(ROOM)}/events?after=${after}&types=${HISTORY_TYPES}&wait=0`;
        const answer = await fetch(url, { headers: { Accept: "application/json" }, signal: controller.signal });
        if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
        const body = await answer.json();
        for (const event of body.events) {
          if (event.id >= until) break; // the socket sends these
          handle(event);
          state.history += 1;
        }
        if (!body.events.length || body.last_id <= after) break;
        after = body.last_id;
      }
    } catch (error) {
      note(`could not load the room's history (${error.message})`, "error");
    } finally {
      clearTimeout(timer);
      replaying = false;
    }
  }

  // --- events -----------------------------------------------------------------------------

  function handle(event) {
    if (event.type === "error") {
      // Not an event: its id is the last one the socket sent.
      state.errors.push(event);
      logRow({ ...event, id: null }, `${event.error}: ${event.detail}`, "error");
      return;
    }
    if (typeof event.id !== "number") return;
    if (seen.has(event.id)) {
      state.duplicates += 1;
      return;
    }
    seen.add(event.id);
    state.events.push({ id: event.id, type: event.type });
    if (state.events.length > MAX_KEPT_EVENTS) state.events.splice(0, MAX_KEPT_EVENTS / 2);
    if (seen.size > MAX_KEPT_EVENTS) {
      // Ids are resumed after the highest: anything far below it cannot come again.
      for (const id of seen) if (id < state.lastId - MAX_KEPT_EVENTS / 2) seen.delete(id);
    }
    state.lastId = Math.max(state.lastId, event.id);
    const handler = handlers[event.type];
    const summary = handler ? handler(event) : "";
    logRow(event, summary ?? "");
    ui.lastEvent.textContent = `#${state.lastId}`;
  }

  const handlers = {
    state(event) {
      floor = event;
      state.floor = event;
      drawFloor();
      if (event.turn) timelineTurn(event.turn, event.ts);
      if (event.stream) {
        const stream = streamOf(event.stream.stream_id, event.stream.speaker);
        stream.turnId = event.turn ? event.turn.turn_id : stream.turnId;
        // A late joiner listens from where the room is, not from the stream's start.
        if (!stream.chunks) stream.skipUntilMs = event.stream.playhead_ms;
        timelineStream(stream);
      }
      return event.speaker ? `${event.speaker} holds the floor` : "the floor is free";
    },
    turn(event) {
      timelineTurn(
        { turn_id: event.turn_id, speaker: event.speaker, status: event.status, reason: event.reason },
        event.ts,
      );
      if (event.status === "interrupted") {
        for (const stream of streams.values()) {
          if (stream.turnId === event.turn_id || (!stream.ended && stream.speaker === event.speaker)) {
            cutStream(stream, null);
          }
        }
      }
      return `${event.speaker}: ${event.status}${event.reason ? ` (${event.reason})` : ""}`;
    },
    audio_chunk(event) {
      const stream = streamOf(event.stream_id, event.speaker);
      if (!stream.turnId && floor && floor.turn && floor.turn.speaker === event.speaker) {
        stream.turnId = floor.turn.turn_id;
      }
      stream.chunks += 1;
      const bytes = base64Bytes(event.data);
      const frames = bytes.length / (event.bytes_per_sample * event.channels);
      const durationMs = (frames / event.sample_rate_hz / event.playback_speed) * 1000;
      stream.receivedMs = Math.max(stream.receivedMs, event.offset_ms + durationMs);
      play(stream, event, bytes);
      timelineStream(stream);
      return `${event.stream_id} #${event.seq} · ${bytes.length} B at ${event.offset_ms} ms`;
    },
    playback_done(event) {
      const stream = streamOf(event.stream_id, event.speaker);
      stream.turnId = event.turn_id || stream.turnId;
      stream.ended = true;
      stream.durationMs = event.duration_ms;
      timelineStream(stream);
      return `${event.stream_id} played (${seconds(event.duration_ms)})`;
    },
    speech(event) {
      const stream = streamOf(event.stream_id, event.speaker);
      if (event.interrupted) cutStream(stream, event.heard_ms);
      transcriptLine(stream, event);
      return `${event.speaker}: “${event.text}”${event.interrupted ? ` (cut at ${seconds(event.heard_ms)})` : ""}`;
    },
    input(event) {
      return `${event.name}${event.stream_id ? ` · ${event.stream_id}` : ""}`;
    },
  };

  function streamOf(id, speaker) {
    let stream = streams.get(id);
    if (!stream) {
      stream = {
        id,
        speaker,
        turnId: null,
        chunks: 0,
        receivedMs: 0,
        durationMs: null,
        heardMs: null,
        ended: false,
        cut: false,
        skipUntilMs: 0,
        nextAt: null,
        gain: null,
        sources: new Set(),
        row: null,
      };
      if (floor && floor.stream && floor.stream.stream_id === id && floor.turn) {
        stream.turnId = floor.turn.turn_id;
      }
      streams.set(id, stream);
    }
    return stream;
  }

  // --- audio ------------------------------------------------------------------------------

  function base64Bytes(text) {
    const binary = atob(text || "");
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // Little-endian PCM to one Float32Array per channel (8-bit is unsigned, as in WAV).
  function decode(bytes, width, channels) {
    const frames = Math.floor(bytes.length / (width * channels));
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const out = Array.from({ length: channels }, () => new Float32Array(frames));
    for (let frame = 0; frame < frames; frame += 1) {
      for (let channel = 0; channel < channels; channel += 1) {
        const at = (frame * channels + channel) * width;
        let value;
        if (width === 1) value = (view.getUint8(at) - 128) / 128;
        else if (width === 2) value = view.getInt16(at, true) / 32768;
        else if (width === 3) value = (((view.getInt8(at + 2) << 16) | view.getUint16(at, true)) / 8388608);
        else value = view.getInt32(at, true) / 2147483648;
        out[channel][frame] = value;
      }
    }
    return out;
  }

  function play(stream, event, bytes) {
    if (!state.listening || !audio.ctx || stream.cut || !bytes.length) {
      state.skipped += 1;
      return;
    }
    const ctx = audio.ctx;
    const speed = event.playback_speed || 1;
    const samples = decode(bytes, event.bytes_per_sample, event.channels);
    const frames = samples[0].length;
    if (!frames) return;
    const chunkMs = (frames / event.sample_rate_hz / speed) * 1000;
    // Late join: skip what the room heard before this page did (state.stream.playhead_ms).
    let offsetS = 0; // into the buffer, in buffer seconds
    if (stream.skipUntilMs > event.offset_ms) {
      if (stream.skipUntilMs >= event.offset_ms + chunkMs) {
        state.skipped += 1;
        return;
      }
      offsetS = ((stream.skipUntilMs - event.offset_ms) / 1000) * speed;
    }
    const buffer = ctx.createBuffer(event.channels, frames, event.sample_rate_hz);
    samples.forEach((channel, index) => buffer.copyToChannel(channel, index));
    const now = ctx.currentTime;
    let startAt = stream.nextAt;
    let fresh = false;
    if (startAt === null || startAt < now + MIN_LEAD_S) {
      if (startAt !== null) state.underruns += 1;
      startAt = now + JITTER_S;
      fresh = true;
    }
    if (!stream.gain) {
      stream.gain = ctx.createGain();
      stream.gain.connect(audio.master);
    }
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.playbackRate.value = speed;
    let target = stream.gain;
    if (fresh) {
      // Start from silence: a waveform starting mid-swing clicks.
      target = ctx.createGain();
      target.gain.setValueAtTime(0, startAt);
      target.gain.linearRampToValueAtTime(1, startAt + FADE_S);
      target.connect(stream.gain);
    }
    source.connect(target);
    const duration = (buffer.duration - offsetS) / speed;
    const entry = {
      stream: stream.id,
      seq: event.seq,
      id: event.id,
      startAt,
      duration,
      endAt: startAt + duration,
      fresh,
      ended: false,
    };
    source.onended = () => {
      entry.ended = true;
      state.played += 1;
      stream.sources.delete(source);
      drawAudio();
    };
    source.start(startAt, offsetS);
    stream.sources.add(source);
    stream.nextAt = entry.endAt;
    state.scheduled.push(entry);
    drawAudio();
  }

  // How much of a stream this page has played by now (ms of the stream), for a cut that
  // comes without the server's heard_ms (a forced cut publishes no text).
  function heardHere(stream) {
    const now = audio.ctx ? audio.ctx.currentTime : 0;
    let heard = stream.skipUntilMs;
    for (const chunk of state.scheduled) {
      if (chunk.stream === stream.id) heard += clamp(now - chunk.startAt, 0, chunk.duration) * 1000;
    }
    return Math.round(heard);
  }

  function cutStream(stream, heardMs) {
    if (heardMs !== null && heardMs !== undefined) stream.heardMs = heardMs;
    else if (stream.heardMs === null && state.listening) stream.heardMs = heardHere(stream);
    stream.ended = true;
    if (!stream.cut) {
      stream.cut = true;
      if (!utterances.has(stream.id)) {
        // No text was published (a forced cut): the transcript still shows the cut reply.
        transcriptLine(stream, { ts: new Date().toISOString(), speaker: stream.speaker, text: "(no text published)" });
      }
      if (audio.ctx && stream.gain) {
        const now = audio.ctx.currentTime;
        stream.gain.gain.setValueAtTime(stream.gain.gain.value, now);
        stream.gain.gain.linearRampToValueAtTime(0, now + 0.02);
        for (const source of stream.sources) source.stop(now + 0.03);
      }
    }
    timelineStream(stream);
    const row = utterances.get(stream.id);
    if (row) markCut(row, stream);
  }

  async function listen() {
    if (!audio.ctx) {
      const Context = window.AudioContext || window.webkitAudioContext;
      audio.ctx = new Context({ latencyHint: "interactive" });
      audio.master = audio.ctx.createGain();
      audio.master.connect(audio.ctx.destination);
    }
    if (state.listening) {
      state.listening = false;
      await audio.ctx.suspend();
    } else {
      await audio.ctx.resume();
      state.listening = true;
    }
    ui.listen.textContent = state.listening ? "Mute" : "Listen";
    ui.listen.setAttribute("aria-pressed", String(state.listening));
    drawAudio();
  }

  function drawAudio() {
    if (!state.listening) {
      ui.audio.textContent = audio.ctx ? "muted" : "sound off: press Listen";
      return;
    }
    const pending = state.scheduled.length - state.played;
    ui.audio.textContent = `listening · ${JITTER_MS} ms buffer · ${state.scheduled.length} chunks scheduled` +
      (pending > 0 ? `, ${pending} to play` : "") +
      (state.underruns ? ` · ${state.underruns} underruns` : "");
  }

  // --- drawing ----------------------------------------------------------------------------

  function seconds(ms) {
    return ms === null || ms === undefined ? "?" : `${(ms / 1000).toFixed(1)} s`;
  }

  function clock(iso) {
    return iso ? new Date(iso).toLocaleTimeString() : "";
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawFloor() {
    if (!floor) return;
    ui.holder.textContent = floor.speaker ?? "free";
    ui.holder.dataset.speaker = floor.speaker ?? "";
    ui.stream.textContent = floor.stream
      ? `${floor.stream.stream_id} (${floor.stream.status}, ${seconds(floor.stream.duration_ms)})`
      : "none";
    ui.spectators.textContent = String(floor.spectators);
    tickSince();
  }

  function tickSince() {
    if (!floor || !floor.turn) {
      ui.since.textContent = "—";
      return;
    }
    const held = Math.max(0, (Date.now() - Date.parse(floor.turn.claimed_at)) / 1000);
    ui.since.textContent = `${clock(floor.turn.claimed_at)} (${held.toFixed(0)} s)`;
  }

  function timelineTurn(turn, ts) {
    let row = turns.get(turn.turn_id);
    if (!row) {
      row = element("li", "room-turn");
      row.dataset.turn = turn.turn_id;
      row.append(element("span", "room-turn-time", clock(turn.claimed_at || ts)));
      row.append(element("strong", "room-turn-speaker", turn.speaker));
      row.append(element("span", "room-chip"));
      row.append(element("ul", "room-turn-streams"));
      ui.timeline.prepend(row);
      turns.set(turn.turn_id, row);
      while (ui.timeline.children.length > 100) {
        const last = ui.timeline.lastElementChild;
        turns.delete(last.dataset.turn);
        last.remove();
      }
    }
    const chip = row.querySelector(".room-chip");
    chip.textContent = turn.reason && turn.reason !== turn.status ? `${turn.status} · ${turn.reason}` : turn.status;
    chip.dataset.status = turn.status;
    if (!["claimed", "finalized"].includes(turn.status)) {
      row.dataset.endedAt = ts;
    }
  }

  function timelineStream(stream) {
    if (!stream.turnId || !turns.has(stream.turnId)) return;
    if (!stream.row) {
      stream.row = element("li", "room-stream");
      turns.get(stream.turnId).querySelector(".room-turn-streams").append(stream.row);
    }
    // A stream from the history has no chunks here (they are not loaded): only its length.
    const chunks = stream.chunks ? `${stream.chunks} chunks, ` : "";
    let text = `${stream.id}: ${chunks}${seconds(stream.durationMs ?? stream.receivedMs)}`;
    if (stream.cut) text += stream.heardMs !== null ? ` · cut at ${seconds(stream.heardMs)}` : " · cut";
    else if (stream.ended) text += " · played";
    stream.row.textContent = text;
  }

  function transcriptLine(stream, event) {
    let row = utterances.get(stream.id);
    if (!row) {
      row = element("li", "room-utterance");
      row.dataset.stream = stream.id;
      row.append(element("span", "room-utterance-time", clock(event.ts)));
      row.append(element("strong", "room-utterance-speaker", event.speaker));
      row.append(element("span", "room-utterance-text"));
      ui.transcript.append(row);
      utterances.set(stream.id, row);
    }
    row.querySelector(".room-utterance-text").textContent = event.text;
    if (event.interrupted) markCut(row, stream);
    if (!replaying) row.scrollIntoView({ block: "nearest" });
  }

  // A cut reply: its text is what was heard; the bar shows where it was cut in the whole.
  function markCut(row, stream) {
    row.classList.add("room-utterance-cut");
    let mark = row.querySelector(".room-cut");
    if (!mark) {
      mark = element("span", "room-cut");
      row.append(mark);
    }
    const total = stream.durationMs ?? stream.receivedMs;
    const heard = stream.heardMs;
    mark.textContent = heard !== null ? `✂ cut at ${seconds(heard)}${total ? ` of ${seconds(total)}` : ""}` : "✂ cut";
    if (heard !== null && total) {
      const bar = element("span", "room-cut-bar");
      bar.style.setProperty("--heard", `${Math.min(100, (heard / total) * 100).toFixed(1)}%`);
      bar.title = `heard ${seconds(heard)} of ${seconds(total)}`;
      mark.append(bar);
    }
  }

  function logRow(event, summary, kind = "") {
    const row = element("li", `room-event room-event-${event.type}${kind ? ` room-event-${kind}` : ""}`);
    if (replaying) row.classList.add("room-event-history");
    if (event.id !== null) row.dataset.id = event.id;
    row.append(element("span", "room-event-id", event.id !== null ? `#${event.id}` : ""));
    row.append(element("span", "room-event-time", clock(event.ts)));
    row.append(element("span", "room-event-type", event.type));
    row.append(element("span", "room-event-summary", summary));
    ui.log.prepend(row);
    while (ui.log.children.length > MAX_LOG_ROWS) ui.log.lastElementChild.remove();
  }

  function note(text, kind) {
    logRow({ type: "connection", id: null, ts: new Date().toISOString() }, text, kind);
  }

  ui.showAudio.addEventListener("change", () => {
    ui.log.classList.toggle("room-log-audio", ui.showAudio.checked);
  });
  ui.listen.addEventListener("click", () => {
    listen().catch((error) => {
      ui.audio.textContent = `cannot play sound: ${error.message}`;
    });
  });
  setInterval(tickSince, 1000);
  drawAudio();
  connect();
})();
