// Podium's admin page: review fraud cases, ban or shadow-ban their players.
// Plain script, no build step. It talks to /v1/admin/... (docs/api.md, "Admin")
// with the admin token, which it keeps in sessionStorage: this tab only.
"use strict";

(() => {
  const TOKEN_KEY = "podium.admin_token";
  const PAGE_SIZE = 20;
  const AUDIT_SIZE = 12;
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

  const LABELS = {
    open: "Open",
    confirmed: "Confirmed",
    false_positive: "False positive",
    active: "Active",
    banned: "Banned",
    shadow_banned: "Shadow-banned",
    flag: "Flag",
    block: "Block",
    shadow_ban: "Shadow ban",
  };
  const USER_ACTIONS = {
    ban: { status: "banned", verb: "banned" },
    "shadow-ban": { status: "shadow_banned", verb: "shadow-banned" },
    unban: { status: "active", verb: "active again" },
  };
  // Which metadata the case card lists, and how.
  const FACTS = [
    ["leaderboard", "Leaderboard"],
    ["action_type", "Action"],
    ["delta", "Delta"],
    ["ip", "IP"],
    ["device", "Device"],
    ["nonce", "Nonce"],
  ];

  const $ = (testid, root = document) => root.querySelector(`[data-testid="${testid}"]`);
  const ui = {
    session: $("session"),
    signOut: $("sign-out"),
    signin: $("signin"),
    signinForm: $("signin-form"),
    signinButton: $("sign-in"),
    token: document.getElementById("token"),
    signinError: $("signin-error"),
    workspace: $("workspace"),
    count: $("count"),
    filters: $("filters"),
    status: $("filter-status"),
    event: $("filter-event"),
    user: $("filter-user"),
    clear: $("clear"),
    listError: $("list-error"),
    cases: $("cases"),
    empty: $("cases-empty"),
    more: $("more"),
    audit: $("audit"),
    auditEmpty: $("audit-empty"),
    template: document.getElementById("case-template"),
  };

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    filters: { status: "open", event_type: "", user_id: "" },
    cursor: null, // the next page's cursor, or null
    shown: new Map(), // case id -> its card
    loading: 0, // bumps with every new list, so a stale reply is ignored
  };

  const numberFormat = new Intl.NumberFormat();
  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  const when = (iso) => (iso ? timeFormat.format(new Date(iso)) : "");
  const label = (value) => LABELS[value] || value;
  const level = (risk) => (risk >= 0.8 ? "high" : risk >= 0.5 ? "medium" : "low");

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${state.token}` };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let reply;
    try {
      reply = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, "network", "The server cannot be reached; check the connection.");
    }
    let data = null;
    try {
      data = await reply.json();
    } catch (error) {
      // Not JSON: a proxy's error page, say. The status still tells.
    }
    if (!reply.ok) {
      const err = data && data.error ? data.error : {};
      const message = err.message || `The server answered ${reply.status}.`;
      if (reply.status === 401) signOut(`The admin token was refused (${err.code || 401}).`);
      throw new ApiError(reply.status, err.code || "http_error", message);
    }
    return data;
  }

  // ------------------------------------------------------------------ session

  function signOut(why) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    ui.workspace.hidden = true;
    ui.session.hidden = true;
    ui.signin.hidden = false;
    ui.signinError.textContent = why || "";
    ui.token.value = "";
    ui.token.focus();
  }

  // The first list of cases doubles as the token check: a 401 signs out again
  // and says why; anything else shows the workspace (with the error, if any).
  async function signIn() {
    ui.signinError.textContent = "";
    ui.signinButton.disabled = true;
    ui.signinButton.textContent = "Checking…";
    await loadCases();
    ui.signinButton.disabled = false;
    ui.signinButton.textContent = "Sign in";
    if (!state.token) return;
    ui.signin.hidden = true;
    ui.session.hidden = false;
    ui.workspace.hidden = false;
    loadAudit();
  }

  ui.signinForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.token.value.trim();
    if (!token) {
      ui.signinError.textContent = "Enter the admin token.";
      return;
    }
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    signIn();
  });

  ui.signOut.addEventListener("click", () => signOut(""));

  // ------------------------------------------------------------------ the list

  function readFilters() {
    const userId = ui.user.value.trim().toLowerCase();
    if (userId && !UUID_RE.test(userId)) {
      ui.listError.textContent = "A user id is a UUID, like 7d3c9a52-1f0e-4b6a-9c2d-5e8f01a2b3c4.";
      return false;
    }
    ui.user.value = userId;
    state.filters = { status: ui.status.value, event_type: ui.event.value, user_id: userId };
    return true;
  }

  function query(cursor) {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [name, value] of Object.entries(state.filters)) {
      if (value) params.set(name, value);
    }
    if (cursor) params.set("cursor", cursor);
    return `/v1/admin/fraud/cases?${params}`;
  }

  async function loadCases({ more = false } = {}) {
    const ticket = more ? state.loading : ++state.loading;
    ui.listError.textContent = "";
    ui.more.disabled = true;
    if (!more) {
      state.shown.clear();
      ui.cases.replaceChildren();
      ui.cases.setAttribute("aria-busy", "true");
      ui.count.textContent = "Loading…";
    }
    try {
      const page = await api("GET", query(more ? state.cursor : null));
      if (ticket !== state.loading) return; // the filters changed meanwhile
      for (const item of page.cases) {
        if (!state.shown.has(item.id)) ui.cases.append(caseCard(item));
      }
      state.cursor = page.next_cursor;
      ui.more.hidden = !state.cursor;
      ui.empty.hidden = state.shown.size > 0;
      const count = numberFormat.format(state.shown.size);
      ui.count.textContent = `${count} case${state.shown.size === 1 ? "" : "s"}${state.cursor ? " so far" : ""}`;
    } catch (error) {
      if (ticket === state.loading) {
        ui.listError.textContent = error.message;
        ui.count.textContent = "";
      }
    } finally {
      ui.cases.removeAttribute("aria-busy");
      ui.more.disabled = false;
    }
  }

  ui.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    if (readFilters()) loadCases();
  });
  for (const select of [ui.status, ui.event]) {
    select.addEventListener("change", () => {
      if (readFilters()) loadCases();
    });
  }
  ui.clear.addEventListener("click", () => {
    ui.status.value = "open";
    ui.event.value = "";
    ui.user.value = "";
    if (readFilters()) loadCases();
  });
  ui.more.addEventListener("click", () => loadCases({ more: true }));

  // ------------------------------------------------------------------ a case

  function caseCard(item) {
    const card = ui.template.content.firstElementChild.cloneNode(true);
    card.dataset.caseId = String(item.id);
    card.dataset.userId = item.user_id || "";
    const risk = $("risk", card);
    risk.classList.add(`risk-${level(item.risk_score)}`);
    risk.querySelector(".risk-value").textContent = item.risk_score.toFixed(2);
    risk.title = `Risk ${item.risk_score.toFixed(4)} of 1`;

    $("username", card).textContent = item.username || "Unknown player";
    const userButton = $("user-id", card);
    if (item.user_id) {
      userButton.textContent = item.user_id;
      userButton.addEventListener("click", () => {
        ui.user.value = item.user_id;
        if (readFilters()) loadCases();
      });
    } else {
      userButton.hidden = true;
    }
    const event = $("event-type", card);
    event.textContent = label(item.event_type);
    event.dataset.value = item.event_type;
    const created = $("created-at", card);
    created.textContent = when(item.created_at);
    created.title = item.created_at;
    $("case-id", card).textContent = `#${item.id}`;

    const factors = Object.entries(item.factors).sort((a, b) => b[1] - a[1]);
    const list = $("factors", card);
    for (const [name, score] of factors) list.append(factorRow(name, score));
    $("no-factors", card).hidden = factors.length > 0;

    const reasons = $("reasons", card);
    for (const reason of item.reasons) {
      const li = document.createElement("li");
      li.textContent = reason;
      reasons.append(li);
    }
    $("no-reasons", card).hidden = item.reasons.length > 0;

    const facts = $("facts", card);
    for (const [key, name] of FACTS) {
      const value = item.metadata[key];
      if (value === undefined || value === null || typeof value === "object") continue;
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = name;
      dd.textContent = typeof value === "number" ? numberFormat.format(value) : String(value);
      div.append(dt, dd);
      facts.append(div);
    }

    for (const button of card.querySelectorAll("[data-review]")) {
      button.addEventListener("click", () => review(card, item.id, button.dataset.review));
    }
    for (const button of card.querySelectorAll("[data-user-action]")) {
      button.addEventListener("click", () => changeUser(card, item, button.dataset.userAction));
    }
    showReview(card, item);
    showUserStatus(card, item.user_id ? item.user_status : null);
    state.shown.set(item.id, card);
    return card;
  }

  function factorRow(name, score) {
    const li = document.createElement("li");
    li.className = "factor";
    li.dataset.testid = "factor";
    li.dataset.factor = name;
    const title = document.createElement("span");
    title.className = "factor-name";
    title.textContent = name.replaceAll("_", " ");
    const bar = document.createElement("span");
    bar.className = `bar bar-${level(score)}`;
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-valuenow", String(score));
    bar.setAttribute("aria-label", name);
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.dataset.testid = "factor-bar";
    fill.style.width = `${Math.round(Math.min(1, Math.max(0, score)) * 100)}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "factor-value";
    value.textContent = score.toFixed(2);
    li.append(title, bar, value);
    return li;
  }

  function showReview(card, item) {
    card.dataset.status = item.review_status;
    const chip = $("review-status", card);
    chip.textContent = label(item.review_status);
    chip.dataset.value = item.review_status;
    for (const button of card.querySelectorAll("[data-review]")) {
      button.hidden = button.dataset.review === "open" && item.review_status === "open";
      button.disabled = button.dataset.review === item.review_status;
    }
    const reviewed = $("reviewed", card);
    reviewed.hidden = !item.reviewed_by;
    if (item.reviewed_by) {
      const note = item.review_note ? ` — “${item.review_note}”` : "";
      reviewed.textContent = `${label(item.review_status)} by ${item.reviewed_by}, ${when(item.reviewed_at)}${note}`;
    }
  }

  function showUserStatus(card, status) {
    const chip = $("user-status", card);
    chip.hidden = !status;
    chip.textContent = status ? label(status) : "";
    chip.dataset.value = status || "";
    card.dataset.userStatus = status || "";
    for (const button of card.querySelectorAll("[data-user-action]")) {
      const target = USER_ACTIONS[button.dataset.userAction].status;
      button.disabled = !status || status === target;
    }
  }

  function result(card, kind, text) {
    const line = $("result", card);
    line.dataset.kind = kind;
    line.textContent = text;
  }

  // Run one action of a card: its buttons wait meanwhile, and the outcome shows
  // on the card. On success ``work`` has set the action buttons' new states.
  async function busy(card, work) {
    const buttons = [...card.querySelectorAll("button")];
    const was = buttons.map((b) => b.disabled);
    buttons.forEach((b) => (b.disabled = true));
    result(card, "pending", "Working…");
    try {
      await work();
    } catch (error) {
      buttons.forEach((b, i) => (b.disabled = was[i]));
      result(card, "error", error.message);
      return;
    }
    buttons.forEach((b, i) => {
      if (!("review" in b.dataset) && !("userAction" in b.dataset)) b.disabled = was[i];
    });
    loadAudit();
  }

  function review(card, caseId, status) {
    return busy(card, async () => {
      const note = $("note", card).value.trim();
      const body = note ? { status, note } : { status };
      const updated = await api("POST", `/v1/admin/fraud/cases/${caseId}/review`, body);
      showReview(card, updated);
      showUserStatus(card, updated.user_id ? updated.user_status : null);
      $("note", card).value = "";
      const filtered = state.filters.status && state.filters.status !== updated.review_status;
      card.classList.toggle("moved", Boolean(filtered));
      result(
        card,
        "ok",
        `Marked ${label(updated.review_status).toLowerCase()}.${filtered ? " It has left this list." : ""}`,
      );
    });
  }

  function changeUser(card, item, action) {
    return busy(card, async () => {
      const note = $("note", card).value.trim();
      const body = note ? { reason: note } : {};
      const changed = await api("POST", `/v1/admin/users/${item.user_id}/${action}`, body);
      // Every card of this player shows the new status.
      for (const other of state.shown.values()) {
        if (other.dataset.userId === changed.user_id) {
          showUserStatus(other, changed.status);
        }
      }
      const who = item.username || changed.user_id;
      result(card, "ok", `${who} is ${USER_ACTIONS[action].verb}.`);
    });
  }

  // ------------------------------------------------------------------ audit

  function auditTarget(entry) {
    if (!entry.target) return "";
    if (entry.action.startsWith("fraud_case.")) return `case #${entry.target}`;
    if (entry.action.startsWith("score.")) return `score #${entry.target}`;
    return entry.target;
  }

  async function loadAudit() {
    try {
      const page = await api("GET", `/v1/admin/audit?limit=${AUDIT_SIZE}`);
      const items = page.entries.map((entry) => {
        const li = document.createElement("li");
        li.dataset.testid = "audit-entry";
        li.dataset.action = entry.action;
        const what = document.createElement("span");
        what.className = "audit-action";
        what.textContent = entry.action;
        const target = document.createElement("span");
        target.className = "audit-target";
        target.textContent = auditTarget(entry);
        target.title = entry.target || "";
        const meta = document.createElement("span");
        meta.className = "audit-meta";
        meta.textContent = `${entry.actor} · ${when(entry.created_at)}`;
        li.append(what, target, meta);
        return li;
      });
      ui.audit.replaceChildren(...items);
      ui.auditEmpty.hidden = items.length > 0;
    } catch (error) {
      // The list above shows errors; the audit panel just keeps what it had.
    }
  }

  // ------------------------------------------------------------------ start

  if (state.token) {
    ui.signin.hidden = true; // back in this tab: no form to flash while checking
    signIn();
  } else {
    signOut("");
  }
})();
