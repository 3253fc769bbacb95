// Contacts, colleagues nearby, and contact requests.

import * as api from "./api.js";
import {
  actionButton, avatar, displayName, emptyState, h, notice, pageHead, presence, replace,
} from "./dom.js";

function inviteAction() {
  return h("a", { class: "button primary", href: "#/invite" }, "Invite a colleague");
}

// ---------------------------------------------------------------- contacts

export function renderContacts(main, ctx) {
  const list = h("div", { id: "contacts" });
  function update() {
    const contacts = ctx.store.contacts;
    if (contacts.length === 0) {
      replace(list, emptyState({
        art: "people",
        title: "No contacts yet: invite a colleague",
        text: "Send a colleague an invite link, or add someone who shows up under Nearby. "
          + "Once they are a contact you can talk and pass files, PC to PC.",
        action: h("div", { class: "row" }, inviteAction(),
          h("a", { class: "button", href: "#/nearby" }, "See who is nearby")),
      }));
      return;
    }
    const online = contacts.filter((c) => c.online).length;
    replace(list,
      h("p", { class: "muted small", id: "contacts-summary" },
        `${contacts.length} ${contacts.length === 1 ? "contact" : "contacts"}, ${online} online`),
      h("ul", { class: "list", "aria-label": "Contacts" }, contacts.map((c) => h("li", {},
        h("a", { class: "person", href: `#/contact/${c.address}`, dataset: { address: c.address } },
          avatar(displayName(c), c.address, { online: c.online }),
          h("div", { class: "who" },
            h("div", { class: "name" }, displayName(c), " ",
              c.verified ? h("span", { class: "badge ok" }, "Verified") : null,
              c.blocked ? h("span", { class: "badge warn" }, "Blocked") : null),
            h("div", { class: "sub presence" }, presence(c))))))));
  }
  main.append(pageHead("Contacts", "The colleagues you can talk to and pass files to.",
    inviteAction()), list);
  update();
  return { update: (keys) => { if (keys.includes("contacts")) update(); } };
}

// ------------------------------------------------------------------ nearby

export function renderNearby(main, ctx) {
  const list = h("div", { id: "nearby" });
  const result = h("div", { "aria-live": "polite" });

  async function add(peer) {
    try {
      const answer = await api.post("/v1/add", { address: peer.address });
      replace(result, notice("ok", answer.status === "accepted"
        ? `${answer.name || peer.name} is now a contact.`
        : `Request sent. ${answer.name || peer.name} needs to accept it on their computer.`));
      ctx.refresh("contacts", "requests", "nearby");
    } catch (exc) {
      replace(result, notice("error", exc.message, exc.detail));
    }
  }

  function update() {
    const { discovery, nearby } = ctx.store.nearby;
    if (!discovery) {
      replace(list, emptyState({
        art: "nearby",
        title: "Finding colleagues nearby is off",
        text: "This computer does not look for colleagues on the network (it may be switched "
          + "off in the settings, or sidedoor only listens on this computer). You can still "
          + "invite anyone with a link.",
        action: inviteAction(),
      }));
      return;
    }
    if (nearby.length === 0) {
      replace(list, emptyState({
        art: "nearby",
        title: "Nobody nearby right now",
        text: "Colleagues who run sidedoor on the same network appear here by themselves. "
          + "Someone elsewhere? Send them an invite link.",
        action: inviteAction(),
      }));
      return;
    }
    replace(list, h("ul", { class: "list", "aria-label": "Colleagues nearby" }, nearby.map((p) => h("li", {},
      h("div", { class: "person", dataset: { address: p.address } },
        avatar(p.name, p.address, { online: true }),
        h("div", { class: "who" },
          h("div", { class: "name" }, p.name || "Unnamed colleague"),
          h("div", { class: "sub" }, "Fingerprint ", h("span", { class: "mono" }, p.fingerprint))),
        h("div", { class: "actions" },
          p.standing === "contact" ? h("span", { class: "badge ok" }, "Contact")
            : p.standing === "blocked" ? h("span", { class: "badge warn" }, "Blocked")
              : actionButton(`Add ${p.name || "colleague"}`, () => add(p),
                { kind: "primary", busy: "Sending…" })))))));
  }

  main.append(pageHead("Nearby", "Colleagues running sidedoor on the same network as you."),
    result, list);
  update();
  return { update: (keys) => { if (keys.includes("nearby")) update(); } };
}

// ---------------------------------------------------------------- requests

const VIA = { nearby: "found you nearby", link: "used your invite link", code: "used your invite code" };

function requestCard(ctx, r, result) {
  const act = (action, done) => async () => {
    try {
      await api.post(`/v1/requests/${r.id}/${action}`);
      replace(result, notice("ok", done));
      ctx.refresh("requests", "contacts", "nearby");
    } catch (exc) {
      replace(result, notice("error", exc.message, exc.detail));
    }
  };
  const name = r.name || "Someone";
  return h("li", {}, h("article", { class: "card stack", dataset: { request: String(r.id) },
    "aria-label": `Request from ${name}` },
  h("div", { class: "row" }, avatar(name, r.address),
    h("div", { class: "who" }, h("h2", {}, name),
      h("p", { class: "muted small" }, `Wants to be your contact${VIA[r.via] ? ` · ${VIA[r.via]}` : ""}`))),
  r.message ? h("blockquote", { class: "note" }, r.message) : null,
  h("div", { class: "stack tight" },
    h("p", { class: "small" }, `Before you accept, ask ${name} (in person or on the phone) `
      + "to read you the safety words on their screen. They must be these:"),
    h("p", {}, h("span", { class: "words safety" }, r.safety_words))),
  h("div", { class: "row" },
    actionButton("Accept", act("accept", `${name} is now a contact.`), { kind: "primary", busy: "Accepting…" }),
    actionButton("Decline", act("decline", `Declined ${name}'s request.`), { busy: "Declining…" }),
    h("span", { class: "spacer" }),
    actionButton("Block", act("block", `Blocked ${name}: they cannot ask again.`),
      { kind: "danger", busy: "Blocking…", title: "Decline and refuse anything more from them" }))));
}

export function renderRequests(main, ctx) {
  const list = h("div", { id: "requests" });
  const result = h("div", { "aria-live": "polite" });
  function update() {
    const { incoming, outgoing } = ctx.store.requests;
    const parts = [];
    if (incoming.length === 0 && outgoing.length === 0) {
      parts.push(emptyState({
        art: "inbox", title: "No contact requests",
        text: "When a colleague asks to add you, you will see it here and decide.",
      }));
    }
    if (incoming.length) {
      parts.push(h("ul", { class: "list", "aria-label": "Waiting for you" },
        incoming.map((r) => requestCard(ctx, r, result))));
    }
    if (outgoing.length) {
      parts.push(h("section", { class: "card stack" }, h("h2", {}, "Waiting for them"),
        h("ul", { class: "list" }, outgoing.map((r) => h("li", { class: "row" },
          avatar(r.name, r.address, { size: "small" }),
          h("span", {}, `${r.name || "Someone"} has not accepted yet`))))));
    }
    replace(list, parts);
  }
  main.append(pageHead("Requests", "People who asked to become your contact."), result, list);
  update();
  return { update: (keys) => { if (keys.includes("requests")) update(); } };
}
