// The home page's live room list: polls GET /api/rooms every POLL_MS (paused while the tab
// is hidden) and redraws the tables. No framework, no build step.
"use strict";

(() => {
  const POLL_MS = 2000;
  const status = document.getElementById("rooms-status");
  const table = document.getElementById("live-rooms");
  const body = table.querySelector("tbody");
  const empty = document.getElementById("live-empty");
  const recent = document.getElementById("recent-rooms");
  // What the browser tests read.
  const state = (window.parleyHome = { polls: 0, errors: 0, live: [], recent: [] });
  let timer = null;
  let polling = false;

  const roomUrl = (name) => `/rooms/${encodeURIComponent(name)}/`;

  function ago(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return `${seconds} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return new Date(iso).toLocaleString();
  }

  const LABELS = [...table.tHead.rows[0].cells].map((th) => th.textContent);

  function cell(row, content) {
    const td = row.insertCell();
    // The column's name, shown before the value when a phone draws rows as cards.
    if (td.cellIndex > 0) td.dataset.label = LABELS[td.cellIndex];
    if (content instanceof Node) td.append(content);
    else td.textContent = content ?? "";
    return td;
  }

  function link(name) {
    const a = document.createElement("a");
    a.href = roomUrl(name);
    a.textContent = name;
    return a;
  }

  function drawLive(rooms) {
    body.replaceChildren();
    for (const room of rooms) {
      const row = body.insertRow();
      row.dataset.room = room.room;
      cell(row, link(room.room));
      cell(row, room.speaker ?? "free");
      const since = room.turn ? room.turn.claimed_at : null;
      const sinceCell = cell(row, since ? ago(since) : "");
      if (since) sinceCell.title = new Date(since).toLocaleString();
      cell(row, room.stream ? `${room.stream.speaker}: ${room.stream.status}` : "");
      cell(row, String(room.spectators));
      cell(row, ago(room.last_activity_at));
    }
    table.hidden = rooms.length === 0;
    empty.hidden = rooms.length !== 0;
  }

  function drawRecent(rooms) {
    recent.replaceChildren();
    for (const room of rooms) {
      const li = document.createElement("li");
      li.append(link(room.room), ` · ${ago(room.last_activity_at)}`);
      if (room.spectators) li.append(` · ${room.spectators} watching`);
      recent.append(li);
    }
    if (!rooms.length) recent.append(Object.assign(document.createElement("li"), { textContent: "none yet" }));
  }

  async function getJson(url) {
    const answer = await fetch(url, { headers: { Accept: "application/json" } });
    if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
    return answer.json();
  }

  async function poll() {
    timer = null;
    if (polling) return;
    polling = true;
    try {
      const [live, latest] = await Promise.all([
        getJson("/api/rooms?active=true&limit=50"),
        getJson("/api/rooms?active=false&limit=10"),
      ]);
      state.polls += 1;
      state.live = live.results;
      state.recent = latest.results;
      drawLive(live.results);
      drawRecent(latest.results);
      const more = live.count > live.results.length ? ` (first ${live.results.length} of ${live.count})` : "";
      status.textContent = `${live.count} live${more} · updated ${new Date().toLocaleTimeString()}`;
      status.classList.remove("home-status-error");
    } catch (error) {
      state.errors += 1;
      status.textContent = `cannot reach the server (${error.message}); retrying`;
      status.classList.add("home-status-error");
    }
    polling = false;
    if (!document.hidden) timer = setTimeout(poll, POLL_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null) poll();
  });

  document.getElementById("open-room").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = document.getElementById("open-room-name").value.trim() || "default";
    location.href = roomUrl(name);
  });

  poll();
})();
