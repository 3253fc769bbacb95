// Rooms (group conversations), a new room, and searching messages.

import * as api from "./api.js";
import {
  actionButton, avatar, displayName, emptyState, h, notice, pageHead, replace,
} from "./dom.js";
import { chatPane } from "./conversation.js";

function nameOf(ctx, address) {
  if (ctx.store.status && address === ctx.store.status.address) return "You";
  const contact = ctx.store.contacts.find((c) => c.address === address);
  return contact ? displayName(contact) : `${address.slice(0, 10)}…`;
}

export function renderRoom(main, ctx, id) {
  const head = h("div");
  const members = h("section", { class: "card stack", "aria-labelledby": "members-h" });
  const result = h("div", { "aria-live": "polite" });
  const convo = h("section", { class: "convo", "aria-label": "Conversation" });
  let chat = null;

  const act = (action, body, done) => async () => {
    try {
      await api.post(`/v1/chat/rooms/${id}/${action}`, body);
      replace(result, notice("ok", done));
      await ctx.refresh("rooms");
      if (action === "leave") ctx.go("#/contacts");
    } catch (exc) {
      replace(result, notice("error", exc.message, exc.detail));
    }
  };

  function update() {
    const room = ctx.store.rooms.find((r) => r.id === id);
    if (!room) {
      replace(head, emptyState({ art: "chat", title: "No such room",
        text: "You may have left it, or been removed from it." }));
      convo.hidden = true;
      members.hidden = true;
      return;
    }
    convo.hidden = false;
    members.hidden = false;
    replace(head, h("div", { class: "convo-head" },
      avatar(room.name, room.id, { size: "large" }),
      h("div", { class: "who" }, h("h1", {}, room.name),
        h("p", { class: "muted" }, `${room.members.length} members`
          + (room.status && room.status !== "active" ? ` · ${room.status}` : "")))));
    if (!chat) {
      chat = chatPane(ctx, { who: id, title: room.name, room: true });
      replace(convo, chat.nodes);
    }
    const others = ctx.store.contacts.filter((c) => !c.blocked && !room.members.includes(c.address));
    const pick = h("select", { id: "add-member", "aria-label": "Contact to add" },
      others.map((c) => h("option", { value: c.address }, displayName(c))));
    replace(members,
      h("h2", { id: "members-h" }, "Members"),
      h("ul", { class: "list" }, room.members.map((address) => h("li", { class: "row" },
        avatar(address === ctx.store.status.address ? ctx.store.status.name : nameOf(ctx, address),
          address, { size: "small" }),
        h("span", {}, nameOf(ctx, address)),
        room.admins.includes(address) ? h("span", { class: "badge" }, "Admin") : null,
        h("span", { class: "spacer" }),
        room.admin && address !== ctx.store.status.address
          ? actionButton("Remove", act("remove", { members: [address] }, `${nameOf(ctx, address)} was removed.`),
            { kind: "quiet", busy: "Removing…" })
          : null))),
      room.admin && others.length
        ? h("div", { class: "row" }, pick,
          actionButton("Add to room", async () => {
            const address = pick.value;
            await act("add", { members: [address] }, `${nameOf(ctx, address)} was added.`)();
          }, { busy: "Adding…" }))
        : null,
      h("div", {}, actionButton("Leave room", act("leave", {}, `You left ${room.name}.`),
        { kind: "danger", busy: "Leaving…" })));
  }

  main.append(head, result, convo, members);
  update();
  return {
    update: (keys) => { if (keys.includes("rooms") || keys.includes("contacts")) update(); },
    event: (ev) => { if (chat) chat.event(ev); },
  };
}

export function renderNewRoom(main, ctx) {
  const name = h("input", { type: "text", id: "room-name", maxlength: "64", required: true,
    placeholder: "Project Falcon" });
  const people = h("fieldset", { class: "stack tight picks" });
  const result = h("div", { "aria-live": "polite" });
  const create = h("button", { type: "submit", class: "primary" }, "Create room");
  const form = h("form", { class: "card stack" },
    h("div", {}, h("label", { class: "title", for: "room-name" }, "Room name")),
    name, people, create, result);

  function update() {
    const contacts = ctx.store.contacts.filter((c) => !c.blocked);
    if (contacts.length === 0) {
      replace(people, h("p", { class: "muted" }, "You can add members once you have contacts."));
      return;
    }
    const checked = new Set(Array.from(people.querySelectorAll("input:checked")).map((i) => i.value));
    replace(people, h("legend", {}, "Who is in it"), contacts.map((c) => h("label", { class: "pick" },
      h("input", { type: "checkbox", value: c.address, checked: checked.has(c.address) }),
      " ", displayName(c))));
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    create.disabled = true;
    try {
      const members = Array.from(people.querySelectorAll("input:checked")).map((i) => i.value);
      const room = await api.post("/v1/chat/rooms", { name: name.value.trim(), members });
      await ctx.refresh("rooms");
      ctx.go(`#/room/${room.id}`);
    } catch (exc) {
      replace(result, notice("error", exc.message, exc.detail));
    } finally {
      create.disabled = false;
    }
  });
  main.append(pageHead("New room", "A conversation with several colleagues at once."), form);
  update();
  return { update: (keys) => { if (keys.includes("contacts")) update(); } };
}

export function renderSearch(main, ctx, query = "") {
  const input = h("input", { type: "search", id: "search-input", value: decodeURIComponent(query),
    placeholder: "Words to look for", "aria-label": "Search messages" });
  const results = h("div", { id: "search-results", "aria-live": "polite" });
  const form = h("form", { class: "field-row", role: "search" }, input,
    h("button", { type: "submit", class: "primary" }, "Search"));

  async function run() {
    const q = input.value.trim();
    if (!q) { replace(results); return; }
    try {
      const data = await api.get(`/v1/chat/search?q=${encodeURIComponent(q)}&limit=50`);
      if (data.messages.length === 0) {
        replace(results, emptyState({ art: "chat", title: "Nothing found",
          text: "No message contains those words." }));
        return;
      }
      replace(results, h("ul", { class: "list" }, data.messages.map((m) => h("li", {},
        h("a", { class: "person", href: m.kind === "room" ? `#/room/${m.conversation}` : `#/contact/${m.peer}` },
          h("div", { class: "who" },
            h("div", { class: "sub" }, `${m.mine ? "You" : m.sender_name} · ${m.room || nameOf(ctx, m.peer)} · `
              + new Date(m.order_at || m.sent_at).toLocaleString()),
            h("div", {}, m.text)))))));
    } catch (exc) {
      replace(results, notice("error", exc.message, exc.detail));
    }
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState(null, "", `#/search/${encodeURIComponent(input.value.trim())}`);
    run();
  });
  main.append(pageHead("Search messages", "Find a message in any conversation."),
    h("div", { class: "card" }, form), results);
  run();
  return {};
}
