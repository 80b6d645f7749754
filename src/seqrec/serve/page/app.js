// The seqrec page: pick a user, see their history and live recommendations, record an event by clicking an
// item, and browse similar items. Plain DOM, no framework; every text from the API goes in as textContent.
// The API key lives in this tab's sessionStorage and travels only in the X-API-Key header, never in a URL.
"use strict";

const KEY_STORE = "seqrec.apiKey";
const KEY_HEADER = "X-API-Key";
const USERS_PAGE = 20;
const HISTORY_SHOWN = 50;
const K = 10;

const $ = (id) => document.getElementById(id);
const state = { user: null, usersOffset: 0 };

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

// A request to this server (paths are relative, so a proxy prefix keeps working); JSON in, JSON out.
async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json" };
  const key = apiKey();
  if (key) headers[KEY_HEADER] = key; // reads ignore it unless the server keys them
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = data && typeof data.message === "string" ? data.message : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

const enc = encodeURIComponent;

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function label(item) {
  return item.title != null && item.title !== "" ? item.title : String(item.item_id);
}

function button(text, title, onClick, className = "small") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.title = title;
  b.addEventListener("click", onClick);
  return b;
}

// One list row: the item's title (or id), its id and score, and its actions.
function itemRow(item, { record = false } = {}) {
  const li = document.createElement("li");
  li.dataset.itemId = String(item.item_id);
  const row = document.createElement("div");
  row.className = "row";
  const name = button(label(item), "items similar to this one", () => showSimilar(item), "link title");
  row.append(name);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = item.score === undefined ? `#${item.item_id}` : `#${item.item_id} · ${item.score.toFixed(3)}`;
  row.append(meta);
  if (record && state.user !== null) {
    row.append(button("Record", `record an event: user ${state.user} interacted with this item`,
                      () => recordEvent(item)));
  }
  li.append(row);
  return li;
}

function fill(list, items, options) {
  list.replaceChildren(...items.map((item) => itemRow(item, options)));
}

// ---- users ------------------------------------------------------------------------------------------------
async function loadUsers(reset) {
  const list = $("users");
  const note = $("users-note");
  if (reset) {
    state.usersOffset = 0;
    list.replaceChildren();
  }
  if (!apiKey()) {
    note.textContent = "Enter the API key above to list users, or type a user id.";
    $("more-users").hidden = true;
    return;
  }
  try {
    const page = await api(`v1/users?limit=${USERS_PAGE}&offset=${state.usersOffset}`);
    for (const user of page.users) {
      const li = document.createElement("li");
      li.append(button(String(user), "open this user", () => openUser(String(user)), "link"));
      list.append(li);
    }
    note.textContent = page.users.length || state.usersOffset ? "" : "No users in the training data.";
    state.usersOffset = page.next_offset ?? state.usersOffset;
    $("more-users").hidden = page.next_offset === null;
  } catch (err) {
    note.textContent = `Users: ${err.message}`;
    $("more-users").hidden = true;
  }
}

async function openUser(user) {
  state.user = user;
  $("user-input").value = user;
  $("user-panel").hidden = false;
  $("user-name").textContent = user;
  await refreshUser();
}

// History and recommendations of the open user, side by side.
async function refreshUser() {
  const user = state.user;
  const panel = $("user-panel");
  panel.setAttribute("aria-busy", "true");
  const path = `v1/users/${enc(user)}`;
  const history = apiKey()
    ? api(`${path}/history?limit=${HISTORY_SHOWN}`)
    : Promise.reject(new ApiError(401, "enter the API key above to see the history"));
  const [hist, recs] = await Promise.allSettled([history, api(`${path}/recommendations?k=${K}`)]);
  if (user !== state.user) return; // another user was opened meanwhile
  if (hist.status === "fulfilled") {
    const h = hist.value;
    const list = $("history");
    fill(list, h.items);
    list.start = Math.max(1, h.history_length - h.items.length + 1);
    list.scrollTop = list.scrollHeight; // the newest items are at the bottom
    $("history-count").textContent = `(${h.history_length} items${h.unknown_history_items
      ? `, ${h.unknown_history_items} unknown to the model` : ""})`;
    $("history-note").textContent = h.items.length < h.history_length ? `the last ${h.items.length} shown` : "";
  } else {
    $("history").replaceChildren();
    $("history-count").textContent = "";
    $("history-note").textContent = hist.reason.message;
  }
  if (recs.status === "fulfilled") {
    fill($("recs"), recs.value.items, { record: true });
    $("recs-version").textContent = recs.value.model_version;
    $("recs-note").textContent = recs.value.items.length ? "" : "nothing left to recommend";
  } else {
    $("recs").replaceChildren();
    $("recs-version").textContent = "";
    $("recs-note").textContent = recs.reason.message;
  }
  panel.setAttribute("aria-busy", "false");
}

async function recordEvent(item) {
  if (!apiKey()) {
    setStatus("Recording an event needs the API key: enter it above.", true);
    return;
  }
  const user = state.user;
  try {
    await api("v1/events", { method: "POST", body: { user_id: user, item_id: item.item_id } });
    setStatus(`Recorded: user ${user} → ${label(item)}`);
  } catch (err) {
    setStatus(`Could not record the event: ${err.message}`, true);
    return;
  }
  await refreshUser();
  const last = $("history").lastElementChild;
  if (last) last.classList.add("fresh");
}

// ---- similar items ----------------------------------------------------------------------------------------
async function showSimilar(item) {
  $("item-input").value = String(item.item_id);
  $("similar-to").textContent = `Similar to ${label(item)} (#${item.item_id})`;
  try {
    const data = await api(`v1/items/${enc(String(item.item_id))}/similar?k=${K}`);
    fill($("similar"), data.items, { record: true });
  } catch (err) {
    $("similar").replaceChildren();
    $("similar-to").textContent = `Similar to #${item.item_id}: ${err.message}`;
  }
}

// ---- start --------------------------------------------------------------------------------------------------
async function showModel() {
  try {
    const h = await api("healthz");
    $("model").textContent = `${h.model_version} · ${h.n_items} items · ${h.n_users} users · ${h.store} store`;
  } catch (err) {
    $("model").textContent = `service: ${err.message}`;
  }
}

function start() {
  $("key").value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    setStatus(key ? "Key kept for this tab." : "Key forgotten.");
    loadUsers(true);
    if (state.user !== null) refreshUser();
  });
  $("key-clear").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    $("key").value = "";
    setStatus("Key forgotten.");
    loadUsers(true);
    if (state.user !== null) refreshUser();
  });
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user-input").value.trim();
    if (user) openUser(user);
  });
  $("item-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("item-input").value.trim();
    if (id) showSimilar({ item_id: id, title: null });
  });
  $("more-users").addEventListener("click", () => loadUsers(false));
  showModel();
  loadUsers(true);
}

document.addEventListener("DOMContentLoaded", start);
