// Talking to the node: JSON calls with the session's CSRF header, errors in human words,
// and the live event stream.

let csrf = null;
let csrfHeader = "X-Sidedoor-CSRF";

export class ApiError extends Error {
  constructor(message, { type = "Error", status = 0, detail = "" } = {}) {
    super(message);
    this.type = type;
    this.status = status;
    this.detail = detail;
  }
}

// What went wrong, for a person: a headline, and the node's own words as the detail.
const HEADLINES = {
  ConnectError: "Couldn't reach them. They may be offline or on another network; try again later.",
  NotAllowed: "They did not let this through.",
  InviteFailed: "The invite did not work. Check the code with your colleague, or make a new one.",
  ContactError: null,
  InvalidAddress: "That does not look like a sidedoor address or link. Check it was copied whole.",
  Timeout: "They did not answer in time. Try again in a moment.",
  PeerTimeout: "They did not answer in time. Try again in a moment.",
  RemoteProtocolError: "Their sidedoor answered something unexpected. Ask them to update it.",
  ChannelClosedError: "The connection dropped halfway. Try again.",
  InternalError: "Something went wrong inside sidedoor. The node's log has the details.",
};

function humanError(type, message, status) {
  if (status === 401) {
    return new ApiError("You are signed out. Run sidedoor again on this computer to sign back in.",
      { type, status, detail: message });
  }
  const headline = HEADLINES[type];
  if (headline) return new ApiError(headline, { type, status, detail: message });
  const text = message ? message.charAt(0).toUpperCase() + message.slice(1) : `Error ${status}`;
  return new ApiError(text.endsWith(".") ? text : `${text}.`, { type, status });
}

export async function call(method, path, body = undefined) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && csrf) headers[csrfHeader] = csrf;
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (exc) {
    throw new ApiError("sidedoor is not answering. Is it still running? Run sidedoor again to start it.",
      { type: "Offline", detail: String(exc) });
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const error = data && data.error ? data.error : {};
    throw humanError(error.type || "Error", error.message || "", resp.status);
  }
  return data;
}

// One file of a drop, streamed to the node's staging folder: -> {batch, path, size}.
export async function upload(relativePath, file, batch = "") {
  const headers = {
    "Content-Type": "application/octet-stream",
    "X-Sidedoor-Name": relativePath.split("/").map(encodeURIComponent).join("/"),
  };
  if (batch) headers["X-Sidedoor-Batch"] = batch;
  if (csrf) headers[csrfHeader] = csrf;
  let resp;
  try {
    resp = await fetch("/v1/web/uploads", { method: "POST", headers, body: file, credentials: "same-origin" });
  } catch (exc) {
    throw new ApiError("sidedoor is not answering. Is it still running? Run sidedoor again to start it.",
      { type: "Offline", detail: String(exc) });
  }
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (!resp.ok) {
    const error = data && data.error ? data.error : {};
    throw humanError(error.type || "Error", error.message || "", resp.status);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);

export async function startSession() {
  const session = await get("/v1/web/session");
  csrf = session.csrf;
  csrfHeader = session.csrf_header || csrfHeader;
}

// The event stream. The node names each event ("event: contact.added"), and EventSource
// delivers named events only to listeners of that name: so the kinds are listed.
// EventSource reconnects by itself; `onState` hears "live" or "down".
export function listen(kinds, onEvent, onState) {
  const source = new EventSource("/v1/events");
  source.onopen = () => onState("live");
  source.onerror = () => onState(source.readyState === EventSource.CLOSED ? "closed" : "down");
  const forward = (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (exc) {
      console.warn("sidedoor: an event could not be read", exc);
      return;
    }
    onEvent(event);
  };
  source.onmessage = forward;
  for (const kind of kinds) source.addEventListener(kind, forward);
  return source;
}
