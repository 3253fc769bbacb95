// One contact: who they are, how they are connected, and the conversation with them.
// Chat uses the node's /v1/chat routes; files, /v1/transfers.

import * as api from "./api.js";
import {
  actionButton, avatar, displayName, emptyState, h, notice, presence, replace,
} from "./dom.js";
import * as files from "./transfers.js";

export const EVENT_KINDS = ["chat.message", "chat.delivered", "chat.read", "chat.failed",
  "chat.typing", "presence.changed", "presence.away", "room.changed"];

// The node passes a typing signal on at most every 3 s; show it a little longer.
const TYPING_EVERY_MS = 3000;
const TYPING_SHOWN_MS = 6000;

const STATE_WORDS = {
  pending: "Sending…", delivered: "Delivered", read: "Read", failed: "Not delivered",
};

function clock(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === today.toDateString() ? time
    : `${d.toLocaleDateString([], { day: "numeric", month: "short" })} ${time}`;
}

function bubble(m, room = false) {
  const mark = m.mine ? STATE_WORDS[m.state] || m.state : "";
  return h("div", { class: m.mine ? "bubble mine" : "bubble", dataset: { id: m.id, state: m.state } },
    room && !m.mine ? h("span", { class: "sender" }, m.sender_name) : null,
    m.text,
    h("span", { class: "meta" }, clock(m.order_at || m.sent_at), mark ? ` · ${mark}` : "",
      m.state === "failed" && m.error ? ` (${m.error})` : ""));
}

// ------------------------------------------------------------------- chat

// A conversation pane: `who` is a contact's address or a room's id (hex).
export function chatPane(ctx, { who, title, room = false }) {
  const path = `/v1/chat/conversations/${encodeURIComponent(who)}`;
  const messages = h("div", { class: "messages", id: "messages", role: "log", "aria-live": "polite",
    "aria-label": `Messages ${room ? "in" : "with"} ${title}` });
  const text = h("textarea", { id: "composer", rows: "1", maxlength: "16000",
    placeholder: `Message ${title}`, "aria-label": `Message ${title}` });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const problem = h("div", { "aria-live": "assertive" });
  const composer = h("form", { class: "composer" }, text, send);
  const typing = h("div", { class: "typing", id: "typing", "aria-live": "polite" });
  const typists = new Map(); // address -> [name, timer]
  let typingSentAt = 0;
  function showTypists() {
    const names = [...typists.values()].map(([name]) => name);
    typing.textContent = names.length === 0 ? ""
      : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
  }
  function typist(address, name) {
    const known = typists.get(address);
    if (known) clearTimeout(known[1]);
    if (name === null) typists.delete(address);
    else typists.set(address, [name, setTimeout(() => typist(address, null), TYPING_SHOWN_MS)]);
    showTypists();
  }
  text.addEventListener("input", () => {
    const now = Date.now();
    if (!text.value.trim() || now - typingSentAt < TYPING_EVERY_MS) return;
    typingSentAt = now;
    // Best effort: a lost typing signal matters to nobody.
    api.post(`${path}/typing`).catch(() => {});
  });
  let conversationId = room ? who : null;
  let loading = null;

  async function load() {
    try {
      const data = await api.get(`${path}/messages?limit=200`);
      conversationId = data.conversation.id;
      if (data.messages.length === 0) {
        replace(messages, h("div", { class: "placeholder" },
          h("p", {}, room ? `No messages in ${title} yet. Start the conversation.`
            : `No messages yet. Say hello to ${title}.`)));
      } else {
        replace(messages, data.messages.map((m) => bubble(m, room)));
        messages.scrollTop = messages.scrollHeight;
      }
      replace(problem);
      if (data.messages.some((m) => !m.mine && m.state === "unread") && document.visibilityState === "visible") {
        await api.post(`${path}/read`);
        ctx.refresh("inbox");
      }
    } catch (exc) {
      replace(problem, notice("error", exc.message, exc.detail));
    }
  }
  // Events come in bursts (a message, then its receipt): one reload at a time, then one more.
  function reload() {
    if (loading) { loading.again = true; return; }
    loading = { again: false };
    load().finally(() => {
      const again = loading.again;
      loading = null;
      if (again) reload();
    });
  }

  async function submit(event) {
    event.preventDefault();
    const body = text.value.trim();
    if (!body) return;
    send.disabled = true;
    try {
      await api.post(`${path}/messages`, { text: body });
      text.value = "";
      reload();
    } catch (exc) {
      replace(problem, notice("error", exc.message, exc.detail));
    } finally {
      send.disabled = false;
      text.focus();
    }
  }
  composer.addEventListener("submit", submit);
  text.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter makes a new line: what chat apps do.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submit(event);
  });

  reload();
  return {
    nodes: [messages, typing, problem, composer],
    event(ev) {
      const m = ev.message;
      const ours = (m && (m.conversation === conversationId || (!room && m.peer === who)))
        || (conversationId && ev.conversation === conversationId);
      if (ev.type === "chat.typing") {
        if (conversationId && ev.conversation === conversationId) typist(ev.address, ev.name);
        return;
      }
      if (m && ours && !m.mine) typist(m.sender, null); // the message they were typing came
      if (ours || ev.type === "page.visible") reload();
    },
  };
}

// ---------------------------------------------------------------- details

function contactActions(ctx, contact, result) {
  const act = (path, done, body = undefined) => async () => {
    try {
      await api.post(`/v1/contacts/${encodeURIComponent(contact.address)}/${path}`, body);
      replace(result, notice("ok", done));
      ctx.refresh("contacts", "nearby");
    } catch (exc) {
      replace(result, notice("error", exc.message, exc.detail));
    }
  };
  const name = displayName(contact);
  const rename = h("details", { class: "rename" },
    h("summary", { class: "button" }, "Rename"),
    (() => {
      const input = h("input", { type: "text", value: name, maxlength: "64", "aria-label": `New name for ${name}` });
      const form = h("form", { class: "field-row" }, input, h("button", { type: "submit" }, "Save"));
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        await act("rename", `Renamed to ${input.value.trim()}.`, { petname: input.value.trim() })();
      });
      return form;
    })());
  return h("div", { class: "row" },
    contact.verified ? null : actionButton("Mark as verified", act("verify", `${name} is marked as verified.`),
      { busy: "Saving…", title: "Do this after you compared the safety words" }),
    rename,
    contact.blocked
      ? actionButton("Unblock", act("unblock", `${name} is unblocked.`), { busy: "Unblocking…" })
      : actionButton("Block", act("block", `${name} is blocked.`), { kind: "danger", busy: "Blocking…" }),
    actionButton("Remove", async () => {
      if (!window.confirm(`Remove ${name} from your contacts? You can invite them again later.`)) return;
      await act("remove", `${name} is no longer a contact.`)();
      ctx.go("#/contacts");
    }, { kind: "danger", busy: "Removing…" }));
}

export function render(main, ctx, address) {
  const head = h("div");
  const about = h("div");
  const result = h("div", { "aria-live": "polite" });
  const convo = h("section", { class: "convo", "aria-label": "Conversation" });
  let chat = null;
  let shown = null;
  let dropZone = null;

  function find() {
    return ctx.store.contacts.find((c) => c.address === address) || null;
  }

  function update() {
    const contact = find();
    if (!contact) {
      replace(head, emptyState({
        title: "Not one of your contacts",
        text: "This person is not (or no longer) in your contacts.",
        action: h("a", { class: "button primary", href: "#/contacts" }, "Back to contacts"),
      }));
      replace(about);
      replace(convo);
      convo.hidden = true;
      return;
    }
    convo.hidden = false;
    const name = displayName(contact);
    replace(head, h("div", { class: "convo-head" },
      avatar(name, contact.address, { online: contact.online, size: "large" }),
      h("div", { class: "who" },
        h("h1", {}, name, " ", contact.verified ? h("span", { class: "badge ok" }, "Verified") : null),
        h("p", { class: "muted", id: "contact-presence" }, presence(contact)),
        contact.name && contact.name !== name ? h("p", { class: "muted small" }, `Calls themselves ${contact.name}`) : null)));
    const wasOpen = Boolean(about.querySelector("details[open]"));
    replace(about, h("details", { class: "card", open: wasOpen },
      h("summary", {}, h("strong", {}, "Details and safety words")),
      h("div", { class: "stack" },
        h("p", { class: "small" }, `To be sure this is really ${name}, compare these words with them (in person or on the phone):`),
        h("p", {}, h("span", { class: "words" }, contact.safety_words)),
        h("dl", { class: "facts small" },
          h("dt", {}, "Address"), h("dd", { class: "mono" }, contact.address),
          h("dt", {}, "Fingerprint"), h("dd", {}, contact.fingerprint),
          h("dt", {}, "Added"), h("dd", {}, new Date(contact.added_at * 1000).toLocaleString())),
        contactActions(ctx, contact, result))));
    if (shown !== contact.address) {
      shown = contact.address;
      chat = chatPane(ctx, { who: contact.address, title: displayName(contact) });
      const fileBar = files.fileBar(ctx, contact);
      replace(convo, chat.nodes, fileBar.node);
      dropZone = fileBar;
    }
  }

  convo.addEventListener("dragover", (event) => {
    if (!dropZone || !dropZone.accepts) return;
    event.preventDefault();
    convo.classList.add("dragging");
  });
  convo.addEventListener("dragleave", () => convo.classList.remove("dragging"));
  convo.addEventListener("drop", (event) => {
    convo.classList.remove("dragging");
    if (!dropZone || !dropZone.accepts) return;
    event.preventDefault();
    dropZone.drop(event.dataTransfer);
  });

  main.append(head, result, convo, about);
  update();
  return {
    update: (keys) => {
      if (keys.includes("contacts")) update();
      if (keys.includes("transfers") && dropZone) dropZone.update();
    },
    event: (ev) => { if (chat) chat.event(ev); },
  };
}
