// "Me": my name (editable), address, safety fingerprint, and how colleagues reach me.

import * as api from "./api.js";
import { actionButton, avatar, copyButton, h, notice, pageHead, replace } from "./dom.js";

// What the broker saw of this computer's router, for people who do not know what NAT means.
const NAT_WORDS = {
  none: "contacts can connect to you directly",
  "port-preserving": "contacts connect to you directly, through your router",
  "port-changing": "contacts behind a router reach you through the broker's relay (slower)",
  unknown: "still finding out how your router behaves",
};

function reachLines(status) {
  const lines = [];
  const lan = [];
  const local = [];
  for (const addr of status.listening || []) {
    (addr.startsWith("127.") || addr.startsWith("[::1]") ? local : lan).push(addr);
  }
  if (lan.length) {
    lines.push(h("li", {}, h("strong", {}, "Directly on your network"), " at ",
      h("span", { class: "mono" }, lan.join(", "))));
  } else {
    lines.push(h("li", {}, h("strong", {}, "Only from this computer"),
      " (no network address found)", local.length ? ": " : "",
      local.length ? h("span", { class: "mono" }, local.join(", ")) : null));
  }
  lines.push(h("li", {}, status.discovery
    ? [h("strong", {}, "Colleagues nearby see you"), " on the same network, without an invite"]
    : [h("strong", {}, "Hidden from colleagues nearby"), ": finding people on the network is switched off"]));
  const brokers = status.brokers || [];
  if (brokers.length === 0) {
    lines.push(h("li", { class: "muted" },
      "Colleagues elsewhere (another office, at home): no broker is set up on this computer yet"));
  }
  for (const b of brokers) {
    lines.push(h("li", {}, b.state === "registered"
      ? [h("strong", {}, "From anywhere"), ` through the broker ${b.host}: `, NAT_WORDS[b.nat] || NAT_WORDS.unknown]
      : [h("strong", {}, `Broker ${b.host}`), `: ${b.state}${b.error ? ` (${b.error})` : ""}`]));
  }
  return lines;
}

export function render(main, ctx) {
  const form = h("form", { class: "stack", "aria-labelledby": "name-label" });
  const input = h("input", { type: "text", id: "name-input", maxlength: "64", required: true,
    autocomplete: "name", value: ctx.store.status ? ctx.store.status.name : "" });
  const result = h("div", { "aria-live": "polite" });
  const save = h("button", { type: "submit", class: "primary" }, "Save name");
  form.append(
    h("div", {}, h("label", { class: "title", for: "name-input", id: "name-label" }, "Your name"),
      h("p", { class: "muted" }, "Colleagues see this name next to your messages and files.")),
    h("div", { class: "field-row" }, input, save),
    result);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    save.disabled = true;
    try {
      const answer = await api.post("/v1/name", { name: input.value });
      input.value = answer.name;
      replace(result, notice("ok", `Saved. Colleagues now see you as ${answer.name}.`));
      ctx.refresh("status");
    } catch (exc) {
      replace(result, notice("error", exc.message, exc.detail));
    } finally {
      save.disabled = false;
    }
  });

  // Away or at the desk: contacts see it next to your name (messages arrive either way).
  const presenceBox = h("div", { class: "stack", id: "my-presence" });
  const presenceResult = h("div", { "aria-live": "polite" });
  function updatePresence() {
    const away = ctx.store.presence.me.state === "away";
    replace(presenceBox,
      h("p", {}, away ? "Your contacts see you as away." : "Your contacts see you as online."),
      h("div", { class: "row" }, actionButton(away ? "I'm back" : "Set me as away", async () => {
        try {
          ctx.store.presence.me = await api.post("/v1/presence", { away: !away });
          replace(presenceResult);
          await ctx.refresh("presence");
        } catch (exc) {
          replace(presenceResult, notice("error", exc.message, exc.detail));
        }
      }, { busy: "Telling your contacts…" })),
      presenceResult);
  }

  const head = h("div");
  const facts = h("div");
  const reach = h("ul", { class: "stack", id: "reach" });

  function update() {
    const status = ctx.store.status;
    if (!status) return;
    replace(head, pageHead("Me", "How colleagues know you and reach you.",
      avatar(status.name, status.address, { size: "large" })));
    if (document.activeElement !== input && !input.value) input.value = status.name;
    replace(facts, h("dl", { class: "facts" },
      h("dt", {}, "Address"),
      h("dd", {}, h("div", { class: "row" },
        h("span", { class: "mono", id: "my-address" }, status.address),
        copyButton(() => status.address, "Copy address"))),
      h("dt", {}, "Safety fingerprint"),
      h("dd", {}, h("span", { class: "words", id: "my-fingerprint" }, status.fingerprint),
        h("p", { class: "muted small" },
          "Read these words to a colleague who adds you: if theirs match, they have the real you.")),
    ));
    replace(reach, reachLines(status));
  }

  main.append(
    head,
    h("section", { class: "card" }, form),
    h("section", { class: "card", "aria-labelledby": "presence-h" },
      h("h2", { id: "presence-h" }, "Your status"),
      presenceBox),
    h("section", { class: "card", "aria-labelledby": "id-h" },
      h("h2", { id: "id-h" }, "Your identity"),
      h("p", { class: "hint" }, "Your address is your public key: it stays the same on any network."),
      facts),
    h("section", { class: "card", "aria-labelledby": "reach-h" },
      h("h2", { id: "reach-h" }, "How colleagues reach you"),
      reach),
    h("section", { class: "card" },
      h("h2", {}, "Sign out"),
      h("p", { class: "hint" }, "Ends this browser's session. Run sidedoor again to come back."),
      actionButton("Sign out of this browser", async () => {
        await api.post("/v1/web/logout");
        window.location.reload();
      })),
  );
  update();
  updatePresence();
  return {
    update: (keys) => {
      if (keys.includes("status")) update();
      if (keys.includes("presence")) updatePresence();
    },
  };
}
