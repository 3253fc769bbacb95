// The app: what the node told us (the store), the sidebar, the router, live updates.

import * as api from "./api.js";
import { avatar, displayName, h, replace } from "./dom.js";
import * as me from "./me.js";
import * as people from "./people.js";
import * as invite from "./invite.js";
import * as conversation from "./conversation.js";
import * as transfers from "./transfers.js";
import * as rooms from "./rooms.js";

// Every kind of event the node sends that the UI shows.
const EVENT_KINDS = [
  "identity.changed", "session.opened", "session.closed",
  "contact.added", "contact.changed", "request.received",
  "nearby.joined", "nearby.updated", "nearby.left",
  "invite.created", "invite.accepted", "invite.failed",
  ...conversation.EVENT_KINDS, ...transfers.EVENT_KINDS,
];

// Which parts of the store an event makes stale.
const STALE = {
  "identity.changed": ["status"],
  "session.opened": ["contacts", "status"],
  "session.closed": ["contacts", "status"],
  "contact.added": ["contacts", "requests", "nearby"],
  "contact.changed": ["contacts", "nearby"],
  "request.received": ["requests"],
  "nearby.joined": ["nearby"],
  "nearby.updated": ["nearby"],
  "nearby.left": ["nearby"],
  "invite.accepted": ["contacts"],
  "chat.message": ["inbox"],
  "chat.read": ["inbox"],
  "presence.changed": ["contacts"],
  "presence.away": ["contacts"],
  "room.changed": ["rooms", "inbox"],
  "transfer.offered": ["transfers"],
  "transfer.updated": ["transfers"],
  "transfer.done": ["transfers"],
  "transfer.failed": ["transfers"],
};

const LOADERS = {
  status: () => api.get("/v1/status"),
  presence: () => api.get("/v1/presence"),
  contacts: async () => (await api.get("/v1/contacts")).contacts,
  requests: () => api.get("/v1/requests"),
  nearby: () => api.get("/v1/nearby"),
  transfers: async () => (await api.get("/v1/transfers")).transfers,
  rooms: async () => (await api.get("/v1/chat/rooms")).rooms,
  inbox: async () => {
    const data = await api.get("/v1/chat/inbox");
    return Object.fromEntries(data.unread.map((u) => [u.kind === "direct" ? u.address : u.id, u.unread]));
  },
};

export const store = {
  status: null,
  contacts: [],
  requests: { incoming: [], outgoing: [] },
  nearby: { discovery: false, nearby: [] },
  inbox: {},
  rooms: [],
  transfers: [],
  presence: { me: { state: "available" } },
  live: "connecting",
};

const ROUTES = {
  me: me.render,
  contacts: people.renderContacts,
  nearby: people.renderNearby,
  requests: people.renderRequests,
  invite: invite.render,
  contact: conversation.render,
  transfers: transfers.render,
  room: rooms.renderRoom,
  "new-room": rooms.renderNewRoom,
  search: rooms.renderSearch,
};

let screen = null;
let routed = false;
let screenKey = "";
const main = document.getElementById("main");

const ctx = {
  store,
  toast,
  refresh,
  go(hash) { window.location.hash = hash; },
};

// ------------------------------------------------------------------ toasts

export function toast(text, kind = "") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast ${kind}` }, text);
  box.append(el);
  setTimeout(() => el.remove(), kind === "error" ? 8000 : 4500);
}

// ------------------------------------------------------------------ store

// One load per part at a time. A refresh asked for while one runs is not folded into
// it (that load may have read the node before the change that prompted the ask): the
// part is loaded once more after it.
const pending = new Map();
const again = new Set();

async function load(key) {
  try {
    store[key] = await LOADERS[key]();
  } catch (exc) {
    if (exc instanceof api.ApiError && exc.status === 401) signedOut();
    else console.warn(`sidedoor: could not load ${key}`, exc);
    return;
  }
  changed([key]);
}

function refresh(...keys) {
  return Promise.all(keys.map((key) => {
    if (pending.has(key)) {
      again.add(key);
      return pending.get(key);
    }
    const job = (async () => {
      try {
        await load(key);
        while (again.delete(key)) await load(key);
      } finally {
        pending.delete(key);
      }
    })();
    pending.set(key, job);
    return job;
  }));
}

// Progress comes several times a second: patch the transfer in place, no reload.
function progress(event) {
  const t = store.transfers.find((x) => x.id === event.id);
  if (!t) { refresh("transfers"); return; }
  t.done_bytes = event.done_bytes;
  t.total_bytes = event.total_bytes;
  t.speed = event.speed;
  t.eta = event.speed > 0 ? Math.max(0, (event.total_bytes - event.done_bytes) / event.speed) : null;
  if (t.status === "offered" || t.status === "queued") t.status = t.direction === "out" ? "sending" : "receiving";
  changed(["transfers"]);
}

function changed(keys) {
  renderSidebar();
  if (screen && screen.update) screen.update(keys);
}

// ---------------------------------------------------------------- sidebar

function renderSidebar() {
  const status = store.status;
  if (status) {
    document.getElementById("me-name").textContent = status.name;
    replace(document.getElementById("me-avatar"), avatar(status.name, status.address, { size: "small" }));
  }
  const live = document.getElementById("live-state");
  const away = store.presence.me.state === "away";
  live.className = `me-sub ${store.live === "live" ? (away ? "live away" : "live") : store.live === "connecting" ? "" : "down"}`;
  live.textContent = { live: away ? "Away" : "Online", connecting: "Connecting…", down: "Reconnecting…",
    closed: "Not connected" }[store.live] || "";

  const requests = store.requests.incoming.length;
  const countReq = document.getElementById("count-requests");
  countReq.hidden = requests === 0;
  countReq.textContent = String(requests);
  countReq.setAttribute("aria-label", `${requests} waiting`);
  const nearby = store.nearby.nearby.filter((p) => p.standing === "stranger").length;
  const countNear = document.getElementById("count-nearby");
  countNear.hidden = nearby === 0;
  countNear.textContent = String(nearby);
  countNear.setAttribute("aria-label", `${nearby} not yet contacts`);

  const offers = store.transfers.filter((t) => t.direction === "in" && t.status === "offered").length;
  const countTransfers = document.getElementById("count-transfers");
  countTransfers.hidden = offers === 0;
  countTransfers.textContent = String(offers);
  countTransfers.setAttribute("aria-label", `${offers} waiting for you`);

  const list = document.getElementById("people-nav");
  const contacts = store.contacts.filter((c) => !c.blocked);
  const unread = (key, label) => (store.inbox[key]
    ? h("span", { class: "count alert", "aria-label": `${store.inbox[key]} unread` }, String(store.inbox[key]))
    : null);
  const items = contacts.map((c) => h("li", {},
    h("a", { href: `#/contact/${c.address}`, dataset: { route: `contact/${c.address}` },
      "aria-label": `${displayName(c)}, ${c.online ? "online" : "offline"}${store.inbox[c.address] ? `, ${store.inbox[c.address]} unread` : ""}` },
    avatar(displayName(c), c.address, { online: c.online, size: "small" }),
    h("span", { class: "label" }, displayName(c)), unread(c.address))));
  for (const room of store.rooms) {
    items.push(h("li", {}, h("a", { href: `#/room/${room.id}`, dataset: { route: `room/${room.id}` } },
      avatar(room.name, room.id, { size: "small" }), h("span", { class: "label" }, `# ${room.name}`),
      unread(room.id))));
  }
  if (items.length === 0) items.push(h("li", { class: "empty-nav" }, "Nobody yet"));
  items.push(h("li", {}, h("a", { href: "#/new-room", dataset: { route: "new-room" }, class: "quiet-link" }, "+ New room")));
  items.push(h("li", {}, h("a", { href: "#/search", dataset: { route: "search" }, class: "quiet-link" }, "Search messages")));
  replace(list, items);
  markCurrent();
}

function markCurrent() {
  const current = window.location.hash.replace(/^#\//, "") || "contacts";
  for (const link of document.querySelectorAll("[data-route]")) {
    if (link.dataset.route === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

// ----------------------------------------------------------------- router

function route() {
  const path = window.location.hash.replace(/^#\//, "") || "contacts";
  const [name, ...rest] = path.split("/");
  const render = ROUTES[name] || ROUTES.contacts;
  const key = `${name}/${rest.join("/")}`;
  markCurrent();
  if (key === screenKey) return;
  screenKey = key;
  if (screen && screen.leave) screen.leave();
  main.replaceChildren();
  screen = render(main, ctx, ...rest) || null;
  // After a navigation, keyboard and screen-reader users land on the new content
  // (on the first page, they start at the top: the skip link).
  if (routed) main.focus({ preventScroll: true });
  routed = true;
  window.scrollTo(0, 0);
}

function signedOut() {
  if (store.live === "closed") return;
  store.live = "closed";
  if (source) source.close();
  screenKey = "";
  screen = null;
  replace(main, h("div", { class: "empty" },
    h("h2", {}, "You are signed out"),
    h("p", {}, "Run sidedoor again on this computer: it opens this page for you, signed in."),
  ));
  renderSidebar();
}

// ------------------------------------------------------------------- boot

let source = null;

async function boot() {
  try {
    await api.startSession();
  } catch (exc) {
    if (exc instanceof api.ApiError && exc.status === 401) { signedOut(); return; }
    replace(main, h("div", { class: "notice error", role: "alert" }, exc.message));
    return;
  }
  source = api.listen(EVENT_KINDS, (event) => {
    const stale = STALE[event.type];
    if (stale) refresh(...stale);
    if (event.type === "transfer.progress") progress(event);
    if (screen && screen.event) screen.event(event);
  }, (state) => {
    const was = store.live;
    store.live = state;
    renderSidebar();
    // After a gap, events may have been missed: load everything again.
    if (state === "live" && was !== "live" && was !== "connecting") refresh(...Object.keys(LOADERS));
  });
  window.addEventListener("hashchange", route);
  // Messages that came while the tab was in the background are marked read only
  // once they can be seen: tell the open screen when that is.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && screen && screen.event) screen.event({ type: "page.visible" });
  });
  await refresh(...Object.keys(LOADERS));
  route();
  document.body.dataset.ready = "true";
}

boot();
