// Podium's live leaderboard page: the top 10 of one board, kept current over
// the WebSocket (docs: protocol/messages.py). Plain script, no build step.
//
// Spectators subscribe without auth. "Play as guest" signs in with a device id
// kept in localStorage, then authenticates the socket; "Score!" (dev mode only)
// mints an action token over HTTP and submits it over the socket.
"use strict";

(() => {
  const TOP = 10;
  const BOARD_RE = /^[a-z0-9][a-z0-9_-]{0,63}$/;
  const USERNAME_RE = /^[A-Za-z0-9_.-]{3,32}$/;
  const DEVICE_KEY = "podium.device_id";
  const USERNAME_KEY = "podium.username";
  const BACKOFF_INITIAL_MS = 500;
  const BACKOFF_MAX_MS = 15000;

  const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
  const ui = {
    status: $("status"),
    statusText: document.querySelector(".connection-text"),
    boardId: $("board-id"),
    boardMeta: $("board-meta"),
    table: $("board"),
    rows: $("rows"),
    meOutside: $("me-outside"),
    empty: $("empty"),
    join: $("join"),
    username: document.getElementById("username"),
    play: $("play"),
    playing: $("playing"),
    meName: $("me-name"),
    meRank: $("me-rank"),
    meScore: $("me-score"),
    score: $("score"),
    devNote: $("dev-note"),
    lastAck: $("last-ack"),
    playerError: $("player-error"),
  };

  const numberFormat = new Intl.NumberFormat();
  const fmt = (n) => (n === null || n === undefined ? "—" : numberFormat.format(n));

  const wsUrl = (() => {
    const meta = document.querySelector('meta[name="podium-ws-url"]');
    const value = meta ? meta.content : "";
    if (value && !value.includes("{{")) return value;
    return `ws://${location.hostname}:8001/v1/ws`; // served without substitution
  })();

  const board = (() => {
    const wanted = new URLSearchParams(location.search).get("board");
    return wanted && BOARD_RE.test(wanted) ? wanted : "global";
  })();

  // ------------------------------------------------------------------ state

  const state = {
    ws: null, // the current socket; events from older ones are ignored
    welcomed: false,
    authed: false, // this socket is authenticated
    attempt: 0, // reconnect attempts since the last welcome
    reconnectTimer: null,
    heartbeat: null, // {interval, deadline}
    heartbeatMs: 15000,
    reauthTried: false,
    seq: null, // last snapshot/update seq applied; null before the first
    entries: [],
    me: null, // {rank, score} on this board, or null
    session: null, // {user_id, username, access_token, refresh_token}
    devMode: null, // null unknown, true, false
    nextSubmit: 1,
    pending: new Map(), // submit id -> {delta}
  };

  // ------------------------------------------------------------------ status

  function setStatus(kind, text) {
    ui.status.dataset.state = kind;
    ui.statusText.textContent = text;
  }

  function setError(text) {
    ui.playerError.textContent = text || "";
  }

  function showAck(kind, text, ack) {
    ui.lastAck.dataset.kind = kind;
    // For tests and tools: which submission this is, and its outcome.
    for (const key of ["id", "newScore", "rank"]) delete ui.lastAck.dataset[key];
    if (ack) {
      ui.lastAck.dataset.id = String(ack.id);
      if (ack.new_score !== undefined) ui.lastAck.dataset.newScore = String(ack.new_score);
      if (ack.rank) ui.lastAck.dataset.rank = String(ack.rank);
    }
    ui.lastAck.textContent = text;
    ui.lastAck.classList.remove("flash");
    void ui.lastAck.offsetWidth; // restart the animation
    ui.lastAck.classList.add("flash");
  }

  // ------------------------------------------------------------------ rendering

  function rankClass(rank) {
    return rank >= 1 && rank <= 3 ? ` top top-${rank}` : "";
  }

  function makeRow() {
    const tr = document.createElement("tr");
    tr.dataset.testid = "row";
    const rank = document.createElement("td");
    rank.className = "col-rank";
    const badge = document.createElement("span");
    badge.className = "rank-badge";
    rank.append(badge);
    const name = document.createElement("th");
    name.scope = "row";
    name.className = "col-player";
    const nameText = document.createElement("span");
    nameText.className = "name";
    const you = document.createElement("span");
    you.className = "you-tag";
    you.textContent = "You";
    name.append(nameText, you);
    const score = document.createElement("td");
    score.className = "col-score";
    tr.append(rank, name, score);
    return tr;
  }

  function fillRow(tr, entry) {
    const mine = state.session !== null && entry.user_id === state.session.user_id;
    tr.dataset.userId = entry.user_id;
    tr.dataset.rank = String(entry.rank);
    tr.className = `row${rankClass(entry.rank)}${mine ? " me" : ""}`;
    if (mine) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
    tr.querySelector(".rank-badge").textContent = String(entry.rank);
    tr.querySelector(".name").textContent = entry.username || entry.user_id.slice(0, 8);
    tr.querySelector(".col-score").textContent = fmt(entry.score);
  }

  function flash(tr, cls) {
    tr.classList.remove("moved-up", "moved-down", "scored", "entered");
    void tr.offsetWidth;
    tr.classList.add(cls);
  }

  // Keyed by user id, so a row that moves is the same element: it slides from
  // its old place to its new one (FLIP) and flashes.
  function renderBoard() {
    const before = new Map();
    for (const tr of ui.rows.children) {
      before.set(tr.dataset.userId, {
        top: tr.getBoundingClientRect().top,
        rank: Number(tr.dataset.rank),
        score: tr.querySelector(".col-score").textContent,
      });
    }
    const existing = new Map([...ui.rows.children].map((tr) => [tr.dataset.userId, tr]));
    const rows = state.entries.slice(0, TOP).map((entry) => {
      const tr = existing.get(entry.user_id) || makeRow();
      existing.delete(entry.user_id);
      fillRow(tr, entry);
      return tr;
    });
    for (const gone of existing.values()) gone.remove();
    ui.rows.replaceChildren(...rows);

    const animate = before.size > 0;
    for (const tr of rows) {
      const was = before.get(tr.dataset.userId);
      if (!animate) continue;
      if (!was) {
        flash(tr, "entered");
        continue;
      }
      const dy = was.top - tr.getBoundingClientRect().top;
      if (dy) {
        // Start where it was, without a transition; then let it glide home.
        tr.style.transition = "none";
        tr.style.transform = `translateY(${dy}px)`;
        void tr.offsetWidth;
        tr.style.transition = "";
        tr.style.transform = "";
      }
      const rank = Number(tr.dataset.rank);
      if (rank < was.rank) flash(tr, "moved-up");
      else if (rank > was.rank) flash(tr, "moved-down");
      else if (tr.querySelector(".col-score").textContent !== was.score) flash(tr, "scored");
    }

    ui.table.dataset.seq = state.seq === null ? "" : String(state.seq);
    ui.empty.hidden = state.entries.length > 0;
    if (state.entries.length === 0 && state.seq !== null) {
      ui.empty.textContent = "No scores yet. Be the first on the board!";
    }
    renderMe();
  }

  function renderMe() {
    const session = state.session;
    const me = state.me;
    ui.meRank.textContent = me && me.rank ? `#${fmt(me.rank)}` : "—";
    ui.meScore.textContent = me && me.score !== null && me.score !== undefined ? fmt(me.score) : "—";
    // The visitor's own row below the top 10, when they are further down.
    const inTop =
      session !== null && state.entries.some((entry) => entry.user_id === session.user_id);
    if (session === null || inTop || !me || !me.rank) {
      ui.meOutside.hidden = true;
      ui.meOutside.replaceChildren();
      return;
    }
    const gap = document.createElement("tr");
    gap.className = "gap";
    gap.setAttribute("aria-hidden", "true");
    const cell = document.createElement("td");
    cell.colSpan = 3;
    cell.textContent = "⋯";
    gap.append(cell);
    const entry = {
      user_id: session.user_id,
      username: session.username,
      rank: me.rank,
      score: me.score,
    };
    const tr = makeRow();
    fillRow(tr, entry);
    tr.dataset.testid = "me-row";
    ui.meOutside.replaceChildren(gap, tr);
    ui.meOutside.hidden = false;
  }

  function renderPlayer() {
    const session = state.session;
    ui.join.hidden = session !== null;
    ui.playing.hidden = session === null;
    if (session) {
      ui.meName.textContent = session.username;
      ui.playing.dataset.userId = session.user_id;
    }
    ui.score.hidden = state.devMode === false;
    ui.score.disabled = !(state.authed && state.devMode !== false);
    ui.score.title = state.authed ? "" : "Waiting for the live connection…";
  }

  function applyEntries(entries, seq) {
    state.entries = Array.isArray(entries) ? entries : [];
    state.seq = seq;
    const meRow = state.session && state.entries.find((e) => e.user_id === state.session.user_id);
    if (meRow) state.me = { rank: meRow.rank, score: meRow.score };
    renderBoard();
  }

  function updateMeta() {
    ui.boardMeta.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }

  // ------------------------------------------------------------------ HTTP

  async function http(method, path, body, token) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token) headers.Authorization = `Bearer ${token}`;
    const reply = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await reply.json();
    } catch (_) {
      data = null;
    }
    return { status: reply.status, ok: reply.ok, data };
  }

  function errorText(reply) {
    const error = reply.data && reply.data.error;
    return error ? `${error.message} (${error.code})` : `HTTP ${reply.status}`;
  }

  function deviceId() {
    let id = localStorage.getItem(DEVICE_KEY);
    if (!id || !/^[A-Za-z0-9_.:-]{8,128}$/.test(id)) {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      id = "web-" + [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem(DEVICE_KEY, id);
    }
    return id;
  }

  async function signIn(username) {
    const body = { device_id: deviceId() };
    if (username) body.username = username;
    const reply = await http("POST", "/v1/auth/device", body);
    if (!reply.ok) throw new Error(errorText(reply));
    state.session = reply.data;
    if (username) localStorage.setItem(USERNAME_KEY, username);
    return reply.data;
  }

  // Before the first snapshot, fill the table from the HTTP API so the page is
  // never blank; the socket's snapshot (with its seq) replaces it.
  async function prefillFromHttp() {
    try {
      const reply = await http("GET", `/v1/leaderboards/${board}/top?limit=${TOP}`);
      if (state.seq !== null) return;
      if (reply.ok) {
        state.entries = reply.data.entries || [];
        renderBoard();
        if (state.entries.length === 0) ui.empty.textContent = "No scores yet. Be the first on the board!";
      } else if (reply.status === 404) {
        ui.empty.textContent = `There is no leaderboard "${board}".`;
      }
    } catch (_) {
      // The socket will fill it in.
    }
  }

  // ------------------------------------------------------------------ socket

  function send(message) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function subscribe() {
    send({ type: "subscribe", leaderboard: board, top: TOP });
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    setStatus("connecting", state.attempt ? "Reconnecting…" : "Connecting…");
    let socket;
    try {
      socket = new WebSocket(wsUrl);
    } catch (_) {
      scheduleReconnect("cannot open the connection");
      return;
    }
    state.ws = socket;
    state.welcomed = false;
    state.authed = false;
    socket.addEventListener("message", (event) => {
      if (socket !== state.ws) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      beat();
      handle(message);
    });
    socket.addEventListener("close", (event) => {
      if (socket !== state.ws) return;
      state.ws = null;
      closed(event.code, event.reason);
    });
  }

  // Drop the current socket ourselves and reconnect (its close event is ignored).
  function dropAndReconnect(why) {
    const socket = state.ws;
    state.ws = null;
    if (socket) socket.close();
    lostConnection();
    scheduleReconnect(why);
  }

  function lostConnection() {
    stopHeartbeat();
    state.welcomed = false;
    state.authed = false;
    for (const [id, submit] of state.pending) {
      showAck("error", `Score +${submit.delta} (${id}): no answer before the connection dropped.`);
    }
    state.pending.clear();
    renderPlayer();
  }

  function closed(code, reason) {
    lostConnection();
    if (code === 4001 && state.session && !state.reauthTried) {
      // Most likely an expired access token: sign in again once, then reconnect.
      state.reauthTried = true;
      setStatus("connecting", "Session expired; signing in again…");
      signIn(undefined).then(connect, (error) => {
        setStatus("closed", `Signed out: ${error.message}`);
      });
      return;
    }
    if (code >= 4000 && code <= 4099) {
      const text = reason ? `${reason} (${code})` : `code ${code}`;
      setStatus("closed", `Disconnected: ${text}. Reload the page to try again.`);
      return;
    }
    scheduleReconnect(code >= 4500 && code <= 4599 ? reason || `code ${code}` : "connection lost");
  }

  function scheduleReconnect(why) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** state.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    state.attempt += 1;
    setStatus("reconnecting", `Offline (${why}); retrying in ${Math.ceil(delay / 1000)} s…`);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  // Application-level pings: a socket that stays silent for two heartbeats is
  // dead even if the browser has not noticed yet.
  function startHeartbeat() {
    stopHeartbeat();
    let n = 0;
    state.heartbeat = {
      interval: setInterval(() => send({ type: "ping", id: `hb-${++n}` }), state.heartbeatMs),
      deadline: null,
    };
    beat();
  }

  function beat() {
    const hb = state.heartbeat;
    if (!hb) return;
    clearTimeout(hb.deadline);
    hb.deadline = setTimeout(() => dropAndReconnect("no heartbeat"), state.heartbeatMs * 2 + 1000);
  }

  function stopHeartbeat() {
    if (!state.heartbeat) return;
    clearInterval(state.heartbeat.interval);
    clearTimeout(state.heartbeat.deadline);
    state.heartbeat = null;
  }

  function authenticate() {
    if (state.session && state.welcomed && !state.authed) {
      send({ type: "auth", token: state.session.access_token });
    }
  }

  function handle(message) {
    switch (message.type) {
      case "welcome":
        state.welcomed = true;
        state.attempt = 0;
        if (typeof message.heartbeat_s === "number" && message.heartbeat_s > 0) {
          state.heartbeatMs = message.heartbeat_s * 1000;
        }
        startHeartbeat();
        setStatus("live", `Live · node ${message.node_id}`);
        // Signed in: authenticate first so the snapshot carries our rank.
        if (state.session) authenticate();
        else subscribe();
        break;
      case "authed":
        state.authed = true;
        state.reauthTried = false;
        if (state.session) state.session.user_id = message.user_id;
        renderPlayer();
        subscribe(); // (again, if spectating): a fresh snapshot with "me"
        break;
      case "snapshot":
        if (message.leaderboard !== board) break;
        if (message.me !== undefined) state.me = message.me;
        applyEntries(message.entries, message.seq);
        updateMeta();
        break;
      case "update":
        if (message.leaderboard !== board) break;
        if (state.seq !== null && !(message.seq > state.seq)) break;
        applyEntries(message.entries, message.seq);
        updateMeta();
        break;
      case "me":
        if (message.leaderboard !== board) break;
        state.me = { rank: message.rank, score: message.score };
        renderMe();
        break;
      case "ack": {
        const submit = state.pending.get(message.id);
        state.pending.delete(message.id);
        const delta = submit ? `+${fmt(submit.delta)}: ` : "";
        const rank = message.rank ? ` · rank #${fmt(message.rank)}` : "";
        showAck("ok", `${delta}${fmt(message.old_score)} → ${fmt(message.new_score)}${rank}`, message);
        if (message.leaderboard === board) {
          state.me = { rank: message.rank, score: message.new_score };
          renderMe();
        }
        break;
      }
      case "error": {
        const text = `${message.message} (${message.code})`;
        if (message.id !== undefined && state.pending.has(message.id)) {
          const submit = state.pending.get(message.id);
          state.pending.delete(message.id);
          showAck("error", `Score +${fmt(submit.delta)} refused: ${text}`, message);
        } else if (message.code === "auth_required" && !state.session) {
          ui.empty.textContent = "This server does not allow spectators: play to see the board.";
          ui.empty.hidden = false;
        } else if (message.code === "unauthorized") {
          setError(`Sign-in refused: ${text}`);
        } else {
          setError(text);
        }
        break;
      }
      default:
        break; // pong, unsubscribed, and anything newer than this page
    }
  }

  // ------------------------------------------------------------------ actions

  async function play(event) {
    event.preventDefault();
    setError("");
    const username = ui.username.value.trim();
    if (username && !USERNAME_RE.test(username)) {
      setError("Usernames are 3–32 letters, digits, _ . or -.");
      ui.username.focus();
      return;
    }
    ui.play.disabled = true;
    ui.play.textContent = "Joining…";
    try {
      await signIn(username || undefined);
    } catch (error) {
      setError(`Could not sign in: ${error.message}`);
      return;
    } finally {
      ui.play.disabled = false;
      ui.play.textContent = "Play as guest";
    }
    renderPlayer();
    renderBoard();
    authenticate(); // or on the next welcome; the snapshot that follows carries "me"
  }

  async function mint(delta) {
    const body = { leaderboard: board, delta };
    let reply = await http("POST", "/v1/dev/actions", body, state.session.access_token);
    if (reply.status === 401) {
      await signIn(undefined); // the access token expired: same device, same player
      reply = await http("POST", "/v1/dev/actions", body, state.session.access_token);
    }
    return reply;
  }

  async function score() {
    if (!state.session || !state.authed) return;
    setError("");
    const delta = 10 + Math.floor(Math.random() * 491);
    ui.score.disabled = true;
    try {
      const reply = await mint(delta);
      if (reply.status === 404 && reply.data?.error?.code === "not_found") {
        state.devMode = false;
        ui.devNote.textContent =
          "Scoring from this page needs a development server (podium dev). " +
          "In production, scores come from your game server.";
        ui.devNote.hidden = false;
        return;
      }
      if (!reply.ok) {
        showAck("error", `Could not get an action token: ${errorText(reply)}`);
        return;
      }
      state.devMode = true;
      const id = `s${state.nextSubmit++}`;
      state.pending.set(id, { delta });
      if (!send({ type: "submit", id, action_token: reply.data.action_token })) {
        state.pending.delete(id);
        showAck("error", "Not connected; try again in a moment.");
        return;
      }
      showAck("pending", `+${fmt(delta)}: submitting…`, { id });
    } catch (error) {
      showAck("error", `Could not score: ${error.message}`);
    } finally {
      renderPlayer();
    }
  }

  // ------------------------------------------------------------------ start

  ui.boardId.textContent = board;
  document.title = `Podium · ${board} · Live leaderboard`;
  ui.username.value = localStorage.getItem(USERNAME_KEY) || "";
  ui.join.addEventListener("submit", play);
  ui.score.addEventListener("click", score);
  window.addEventListener("online", () => {
    if (!state.ws && state.reconnectTimer) connect();
  });
  renderPlayer();
  prefillFromHttp();
  connect();
})();
