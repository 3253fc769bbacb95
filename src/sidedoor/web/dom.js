// Building the page from data. Text from the node (names, messages, a peer's words)
// only ever goes in as text nodes: nothing here parses HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ------------------------------------------------------------------ people

const AVATAR_COLORS = ["#3b6fd8", "#8a4fd1", "#c2410c", "#0f8a6a", "#b8336a", "#4b7a0f", "#7a5a12", "#1e7fa8"];

export function initials(name) {
  const words = String(name || "?").trim().split(/\s+/).filter(Boolean);
  const letters = words.length > 1 ? [words[0], words[words.length - 1]] : words;
  return letters.map((w) => Array.from(w)[0] || "").join("").toUpperCase() || "?";
}

export function avatar(name, key, { online = null, size = "" } = {}) {
  let hash = 0;
  for (const ch of String(key || name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const el = h("span", { class: `avatar ${size}`, "aria-hidden": "true" }, initials(name));
  el.style.setProperty("--avatar", AVATAR_COLORS[hash % AVATAR_COLORS.length]);
  if (online !== null) el.append(h("span", { class: online ? "dot on" : "dot" }));
  return el;
}

// ----------------------------------------------------------------- words

export function ago(seconds) {
  if (!seconds) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 90) return "just now";
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} hours ago`;
  return `${Math.round(s / 86400)} days ago`;
}

// How a contact is connected, in words for people who do not know what NAT means.
export const PATH_WORDS = {
  lan: "on your local network",
  direct: "directly over the internet",
  punched: "directly, through both firewalls",
  relayed: "through a relay (slower)",
};

export function presence(contact) {
  if (contact.blocked) return "Blocked";
  if (contact.online && contact.path === "broker") {
    return `${contact.away ? "Away" : "Online"} · reachable through the broker`;
  }
  if (contact.online) {
    return `${contact.away ? "Away" : "Online"} · connected ${PATH_WORDS[contact.path] || "directly"}`;
  }
  if (contact.last_seen) return `Offline · last seen ${ago(contact.last_seen)}`;
  return "Offline · not seen yet";
}

export function displayName(contact) {
  return contact.petname || contact.name || "Unnamed colleague";
}

export function size(bytes) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let n = Number(bytes) || 0;
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

// ---------------------------------------------------------------- pieces

// Line drawings for empty states, 24x24, drawn with the current text colour.
const ICONS = {
  people: ["M9 11a3.5 3.5 0 1 0 0-7 3.5 3.5 0 0 0 0 7z", "M2.5 20c.6-3.6 3.2-5.5 6.5-5.5s5.9 1.9 6.5 5.5",
    "M16 4.3a3.5 3.5 0 0 1 0 6.4", "M18 14.8c2 .7 3.2 2.4 3.5 5.2"],
  nearby: ["M12 13.5a1.5 1.5 0 1 0 0-3 1.5 1.5 0 0 0 0 3z", "M8.5 15.5a5 5 0 0 1 0-7", "M15.5 8.5a5 5 0 0 1 0 7",
    "M5.6 18.4a9 9 0 0 1 0-12.8", "M18.4 5.6a9 9 0 0 1 0 12.8"],
  inbox: ["M3 13l2.5-8h13L21 13v6H3z", "M3 13h5l1.5 2.5h5L16 13h5"],
  box: ["M3.5 7.5L12 3l8.5 4.5v9L12 21l-8.5-4.5z", "M3.5 7.5L12 12l8.5-4.5", "M12 12v9"],
  chat: ["M4 5h16v11H9l-5 4z", "M8 9.5h8", "M8 12.5h5"],
};

export function icon(name) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "icon");
  for (const d of ICONS[name] || []) {
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

export function emptyState({ art = "", title, text, action = null }) {
  return h("div", { class: "empty" },
    art ? h("div", { class: "art" }, icon(art)) : null,
    h("h2", {}, title),
    text ? h("p", {}, text) : null,
    action);
}

export function pageHead(title, text, ...extra) {
  return h("div", { class: "page-head" },
    h("div", {}, h("h1", {}, title), text ? h("p", {}, text) : null),
    h("div", { class: "row" }, ...extra));
}

export function notice(kind, text, detail = "") {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    text, detail ? h("span", { class: "detail" }, detail) : null);
}

// A button that runs an async action, disabled (and saying so) while it runs.
export function actionButton(label, run, { kind = "", busy = "Working…", title = undefined } = {}) {
  const button = h("button", { type: "button", class: kind, title });
  button.textContent = label;
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = busy;
    try {
      await run(button);
    } finally {
      if (button.isConnected) {
        button.disabled = false;
        button.textContent = label;
      }
    }
  });
  return button;
}

export function copyButton(getText, label = "Copy") {
  return actionButton(label, async (button) => {
    await navigator.clipboard.writeText(getText());
    button.textContent = "Copied";
  }, { busy: "Copying…" });
}
