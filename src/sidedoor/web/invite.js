// Invite a colleague (a link with its QR code, or a short code for someone nearby) and join.

import * as api from "./api.js";
import { actionButton, copyButton, h, notice, pageHead, replace } from "./dom.js";

function linkCard(ctx) {
  const out = h("div", { class: "stack", "aria-live": "polite" });
  const card = h("section", { class: "card", "aria-labelledby": "link-h" },
    h("h2", { id: "link-h" }, "Invite with a link"),
    h("p", { class: "hint" }, "Send the link by e-mail or chat, or let them scan the code. "
      + "It works once, for the first colleague who uses it."),
    out);
  const make = actionButton("Create invite link", async () => {
    try {
      const { link } = await api.post("/v1/links");
      const field = h("input", { type: "text", readonly: true, value: link, id: "invite-link",
        "aria-label": "Invite link" });
      field.addEventListener("focus", () => field.select());
      replace(out,
        h("div", { class: "field-row" }, field, copyButton(() => link, "Copy link")),
        h("img", { class: "qr", id: "invite-qr", alt: "QR code of the invite link",
          src: `/v1/qr?format=svg&text=${encodeURIComponent(link)}` }),
        h("div", { class: "row" }, make, h("span", { class: "muted small" },
          "Your colleague opens sidedoor and pastes it under “Join an invite”.")));
    } catch (exc) {
      replace(out, notice("error", exc.message, exc.detail), make);
    }
  }, { kind: "primary", busy: "Creating…" });
  out.append(make);
  return card;
}

function codeCard(ctx) {
  const out = h("div", { class: "stack", "aria-live": "polite" });
  let timer = null;
  const make = actionButton("Create invite code", async () => {
    try {
      const { code, expires_at: expires } = await api.post("/v1/invites");
      const left = h("span", { class: "muted small" });
      const tick = () => {
        const s = Math.max(0, Math.round(expires - Date.now() / 1000));
        left.textContent = s > 0 ? `Works once, for ${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")} more.`
          : "This code has expired: create a new one.";
        if (s <= 0) clearInterval(timer);
      };
      clearInterval(timer);
      timer = setInterval(tick, 1000);
      tick();
      replace(out, h("div", { class: "code-big mono", id: "invite-code" }, code), left,
        h("div", { class: "row" }, copyButton(() => code, "Copy code"), make));
    } catch (exc) {
      replace(out, notice("warn", exc.message, exc.detail), make);
    }
  }, { busy: "Creating…" });
  out.append(make);
  return {
    card: h("section", { class: "card", "aria-labelledby": "code-h" },
      h("h2", { id: "code-h" }, "Invite someone next to you"),
      h("p", { class: "hint" }, "A short code to read out to a colleague on the same network."),
      out),
    leave: () => clearInterval(timer),
  };
}

function joinCard(ctx) {
  const input = h("input", { type: "text", id: "join-input", autocomplete: "off", spellcheck: "false",
    placeholder: "sidedoor://… or 7-guitar-orbit" });
  const result = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit", class: "primary" }, "Join");
  const form = h("form", { class: "stack" },
    h("label", { for: "join-input" }, "Paste the link or type the code you were given"),
    h("div", { class: "field-row" }, input, submit), result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) {
      replace(result, notice("error", "Paste the invite link or type the code first."));
      input.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Joining…";
    replace(result, notice("ok", "Contacting your colleague…"));
    try {
      const answer = await api.post("/v1/join", { text });
      const who = answer.name || "Your colleague";
      replace(result, answer.status === "accepted"
        ? notice("ok", `${who} is now a contact.`)
        : notice("ok", `Request sent. ${who} needs to accept it on their computer.`));
      input.value = "";
      ctx.refresh("contacts", "requests");
    } catch (exc) {
      replace(result, notice("error", exc.message, exc.detail));
    } finally {
      submit.disabled = false;
      submit.textContent = "Join";
    }
  });
  return h("section", { class: "card", "aria-labelledby": "join-h" },
    h("h2", { id: "join-h" }, "Join an invite"),
    h("p", { class: "hint" }, "Got a link or a code from a colleague? Use it here."),
    form);
}

export function render(main, ctx) {
  const code = codeCard(ctx);
  main.append(
    pageHead("Invite or join", "Add a colleague: they become a contact as soon as they use your invite."),
    h("div", { class: "grid2" }, linkCard(ctx), code.card),
    h("div", { class: "spacer-v" }),
    joinCard(ctx));
  return { leave: code.leave };
}
