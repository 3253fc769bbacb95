// Transfers: files and folders on their way, in either direction, and sending from the browser.
// Uses the node's /v1/transfers routes when it has them; without them the screen says so.

import * as api from "./api.js";
import { actionButton, emptyState, h, notice, pageHead, replace, size } from "./dom.js";

export const EVENT_KINDS = ["transfer.offered", "transfer.updated", "transfer.progress",
  "transfer.done", "transfer.failed"];

const ACTIVE = new Set(["queued", "offered", "sending", "receiving"]);

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.max(1, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function what(t) {
  const names = t.names || [];
  const first = names[0] || "files";
  if (names.length > 1) return `${first} and ${names.length - 1} more`;
  return t.files > 1 && names.length === 1 ? `${first} (${t.files} files)` : first;
}

function headline(t) {
  const peer = t.peer_name || "your contact";
  const out = t.direction === "out";
  switch (t.status) {
    case "queued": return `Waiting for ${peer} to come online`;
    case "offered": return out ? `Waiting for ${peer} to accept` : `${peer} wants to send you this`;
    case "sending": return `Sending to ${peer}`;
    case "receiving": return `Receiving from ${peer}`;
    case "done": return out ? `Sent to ${peer}` : `Received from ${peer}`;
    case "declined": return out ? `${peer} declined it` : "You declined it";
    case "cancelled": return "Cancelled";
    case "failed": return "Stopped: it did not get through";
    default: return t.status;
  }
}

export function transferCard(ctx, t, result) {
  const act = (action, done, body = undefined) => async () => {
    try {
      await api.post(`/v1/transfers/${t.id}/${action}`, body);
      if (result) replace(result, notice("ok", done));
      ctx.refresh("transfers");
    } catch (exc) {
      if (result) replace(result, notice("error", exc.message, exc.detail));
      else ctx.toast(exc.message, "error");
    }
  };
  const total = t.total_bytes || 0;
  const done = t.done_bytes || 0;
  const pct = total ? Math.min(100, Math.floor((done / total) * 100)) : (t.status === "done" ? 100 : 0);
  const moving = t.status === "sending" || t.status === "receiving";
  const bar = h("div", { class: "progress", role: "progressbar", "aria-valuemin": "0",
    "aria-valuemax": "100", "aria-valuenow": String(pct), "aria-label": `${what(t)}: ${pct}%` },
  h("span", {}));
  bar.firstChild.style.setProperty("width", `${pct}%`);
  const facts = [`${size(done)} of ${size(total)}`];
  if (moving && t.speed) facts.push(`${size(t.speed)}/s`);
  if (moving && t.eta) facts.push(`${duration(t.eta)} left`);
  const buttons = [];
  if (t.direction === "in" && t.status === "offered") {
    buttons.push(actionButton("Accept", act("accept", "Accepted: receiving now."), { kind: "primary", busy: "Accepting…" }));
    buttons.push(actionButton("Decline", act("decline", "Declined."), { busy: "Declining…" }));
  } else if (ACTIVE.has(t.status)) {
    buttons.push(actionButton("Cancel", act("cancel", "Cancelled."), { busy: "Cancelling…" }));
  }
  if (t.status === "failed" || t.status === "cancelled") {
    buttons.push(actionButton("Retry", act("retry", "Trying again."), { busy: "Retrying…" }));
  }
  if (t.direction === "in" && t.status === "done") {
    buttons.push(actionButton("Open folder", async () => {
      try {
        await api.post("/v1/web/reveal", { id: t.id });
      } catch (exc) {
        ctx.toast(exc.message, "error");
      }
    }, { busy: "Opening…" }));
  }
  return h("li", {}, h("article", { class: "card transfer", dataset: { transfer: t.id, status: t.status },
    "aria-label": `${t.direction === "out" ? "Sending" : "Receiving"} ${what(t)}` },
  h("div", { class: "row" },
    h("span", { class: `dir ${t.direction}`, "aria-hidden": "true" }, t.direction === "out" ? "↑" : "↓"),
    h("div", { class: "who" },
      h("div", { class: "name" }, what(t)),
      h("div", { class: "sub status-line" }, headline(t),
        t.activity && ACTIVE.has(t.status) ? ` · ${t.activity}` : "")),
    h("div", { class: "actions" }, buttons)),
  t.note ? h("blockquote", { class: "note" }, t.note) : null,
  t.status !== "declined" ? bar : null,
  t.status === "declined" ? null : h("div", { class: "row muted small" }, h("span", { class: "facts-line" }, facts.join(" · ")),
    t.direction === "in" && t.status === "done" && t.dest ? h("span", { class: "mono" }, t.dest) : null),
  t.error && !ACTIVE.has(t.status) ? h("p", { class: "small error-text" }, t.error) : null));
}

// ----------------------------------------------------------------- sending

async function entriesFromDrop(dataTransfer) {
  const found = [];
  const walk = async (entry) => {
    if (entry.isFile) {
      const file = await new Promise((ok, fail) => entry.file(ok, fail));
      found.push({ file, path: entry.fullPath.replace(/^\//, "") });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      // readEntries hands out a directory's entries a batch at a time, until an empty one.
      for (let i = 0; i < 10000; i += 1) {
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (batch.length === 0) break;
        for (const child of batch) await walk(child);
      }
    }
  };
  const entries = Array.from(dataTransfer.items || [])
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null)).filter(Boolean);
  if (entries.length) {
    for (const entry of entries) await walk(entry);
  } else {
    for (const file of dataTransfer.files || []) found.push({ file, path: file.name });
  }
  return found;
}

export async function sendFiles(ctx, contact, items, status) {
  if (items.length === 0) return;
  const total = items.reduce((n, it) => n + it.file.size, 0);
  let batch = "";
  const tops = new Set();
  let done = 0;
  for (const { file, path } of items) {
    replace(status, notice("ok", `Preparing ${items.length === 1 ? path : `${items.length} files`}… `
      + `${total ? Math.floor((done / total) * 100) : 0}%`));
    const answer = await api.upload(path, file, batch);
    batch = answer.batch;
    tops.add(answer.path);
    done += file.size;
  }
  const sent = await api.post("/v1/transfers", { paths: Array.from(tops), to: contact.address });
  const name = contact.petname || contact.name;
  replace(status, notice("ok", sent.status === "queued" && !contact.online
    ? `Queued: it goes as soon as ${name} is online.`
    : `Offered to ${name}: it starts when they accept.`));
  ctx.refresh("transfers");
}

// The strip under a conversation: send buttons, and the transfers with this contact.
export function fileBar(ctx, contact) {
  const status = h("div", { "aria-live": "polite" });
  const list = h("ul", { class: "list", "aria-label": "Files with this contact" });
  const pickFiles = h("input", { type: "file", multiple: true, id: "file-input", class: "visually-hidden" });
  const pickFolder = h("input", { type: "file", id: "folder-input", class: "visually-hidden", webkitdirectory: true });
  const run = async (items) => {
    try {
      await sendFiles(ctx, contact, items, status);
    } catch (exc) {
      replace(status, notice("error", exc.message, exc.detail));
    }
  };
  pickFiles.addEventListener("change", () => {
    run(Array.from(pickFiles.files).map((file) => ({ file, path: file.name })));
    pickFiles.value = "";
  });
  pickFolder.addEventListener("change", () => {
    run(Array.from(pickFolder.files).map((file) => ({ file, path: file.webkitRelativePath || file.name })));
    pickFolder.value = "";
  });
  const node = h("div", { class: "filebar" },
    h("div", { class: "row" },
      h("label", { class: "button", for: "file-input" }, "Send files"), pickFiles,
      h("label", { class: "button", for: "folder-input" }, "Send a folder"), pickFolder,
      h("span", { class: "muted small" }, "or drop files and folders here")),
    status, list);
  function update() {
    const mine = (ctx.store.transfers || []).filter((t) => t.peer === contact.address).slice(0, 5);
    replace(list, mine.map((t) => transferCard(ctx, t, status)));
  }
  update();
  return {
    node,
    accepts: true,
    async drop(dataTransfer) {
      run(await entriesFromDrop(dataTransfer));
    },
    update,
  };
}

// ------------------------------------------------------------------ screen

export function render(main, ctx) {
  const list = h("div", { id: "transfers" });
  const result = h("div", { "aria-live": "polite" });
  function update() {
    const transfers = ctx.store.transfers || [];
    if (transfers.length === 0) {
      replace(list, emptyState({
        art: "box",
        title: "No transfers yet",
        text: "Open a contact and drop files or folders on the conversation, or use “Send files”. "
          + "What you send and receive shows here.",
        action: h("a", { class: "button primary", href: "#/contacts" }, "Choose a contact"),
      }));
      return;
    }
    replace(list, h("ul", { class: "list", "aria-label": "Transfers" },
      transfers.map((t) => transferCard(ctx, t, result))));
  }
  main.append(pageHead("Transfers", "Files and folders you send and receive."), result, list);
  update();
  return { update: (keys) => { if (keys.includes("transfers")) update(); } };
}
