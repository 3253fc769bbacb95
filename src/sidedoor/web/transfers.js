// Transfers: files and folders on their way, in either direction.
// The node's files routes are not in this version yet: the screen says so plainly, and
// the conversation pane offers no drop target until they are.

import { emptyState, h, pageHead } from "./dom.js";

export const EVENT_KINDS = ["transfer.offered", "transfer.updated", "transfer.progress",
  "transfer.done", "transfer.failed"];

export function fileBar(ctx, contact) {
  return { node: null, accepts: false, drop() {} };
}

export function render(main, ctx) {
  main.append(
    pageHead("Transfers", "Files and folders you send and receive."),
    h("div", { id: "transfers" }, emptyState({
      art: "box",
      title: "File transfers are not available yet",
      text: "This version of sidedoor cannot send files yet. When it can, files you send and "
        + "receive show here with their progress, speed and time left.",
    })));
  return {};
}
