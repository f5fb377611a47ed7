/**
 * notify.js — the browser client of notify's stream, over Server-Sent Events or a WebSocket.
 *
 * One ES module, no build step, no dependencies:
 *
 *     import { NotifyClient } from "/static/notify/notify.js";
 *     const client = new NotifyClient("/notify/stream/", {
 *       channels: ["broadcast", "user:1"],
 *       onEvent(envelope, { replayed, type, id }) { ... },
 *     });
 *     client.on("order.paid", (envelope, meta) => { ... });
 *
 * Three transports share the same hooks and the same behaviour:
 *
 * - "eventsource" (default): the browser's EventSource. It reconnects by itself after a
 *   dropped connection and then sends Last-Event-ID on its own. It gives up for good on any
 *   HTTP status other than 200 (a 502/503 from a proxy included) without saying which; the
 *   client then reads the status with a fetch probe (see `probeStatus`) and either stops
 *   (204, 401, 403) or reconnects with jittered exponential backoff.
 *   EventSource delivers a named event only to a listener for that exact name, so this
 *   transport hears "message", notify's control events, the types given in `events` and the
 *   types that have a handler (`client.on(type, ...)`), and no others.
 * - "fetch": fetch + ReadableStream + `SSEParser`, for pages that must send headers (such
 *   as Authorization). It hears every event.
 * - "websocket": the same stream as JSON text messages over a WebSocket, at `websocketUrl`
 *   (default: "/notify/ws/" on the stream URL's host, ws: or wss: as that URL is http: or
 *   https:). It hears every event. A browser's WebSocket sends no headers, only the cookies
 *   of the WebSocket's host; the server closes with a code that says whether to reconnect,
 *   when, and from where (the table in notify/websocket.py; `WS_CLOSE_ACTIONS` below).
 *
 * The cursor (the last event id seen) is kept in `storage`, keyed by the stream URL with its
 * channels whatever the transport (ids are the same on every transport, so a page that
 * switches transports keeps its place), and sent on every connection the client makes
 * itself, so a reloaded page resumes where it left off: the server replays what was missed
 * between `notify.catchup-start` and `notify.catchup-end`.
 *
 * Everything that comes from an event is handed to the hooks as data; nothing here puts it
 * into the page.
 */

const CONTROL_PREFIX = "notify.";
const CONTROL_EVENTS = [
  "notify.open",
  "notify.catchup-start",
  "notify.catchup-end",
  "notify.reset",
];
/** Statuses after which reconnecting cannot help: 204 is the SSE way to say "stop". */
const FINAL_STATUSES = new Set([204, 401, 403]);
const TRANSPORTS = ["eventsource", "fetch", "websocket"];
/** Where `routing.websocket_urlpatterns` puts the WebSocket stream, on the stream URL's host. */
const DEFAULT_WEBSOCKET_PATH = "/notify/ws/";
/** The WebSocket messages that are not events (events have no "type"). */
const WS_RETRY = "notify.retry";
const WS_ERROR = "notify.error";
/**
 * What the client does when the server closes a WebSocket with a code (notify/websocket.py):
 * "stop" for good (like an SSE 403), "resume" from the cursor after the retry delay the
 * server sent (like a dropped SSE stream: the stream ended, the user's streams were revoked,
 * the client read too slowly, the server is shutting down), and every other code backs off
 * as a failed connection does (4503 unavailable, 4500 the server failed, 4429 too many
 * streams, a network error). A refused stream (a `notify.error` came) waits at least the
 * retry delay its connection began with: the server's Retry-After (30 s for too many
 * streams, 5 s when it cannot read its database).
 */
const WS_CLOSE_ACTIONS = new Map([
  [4400, "stop"],
  [4403, "stop"],
  [4000, "resume"],
  [4001, "resume"],
  [4408, "resume"],
  [4012, "resume"],
]);
/** RFC 6455's "abnormal closure": no close frame, a network error or a refused handshake. */
const WS_ABNORMAL_CLOSURE = 1006;
const STORAGE_PREFIX = "notify:last-event-id:";
/** What the server sends first anyway; used by the fetch transport until it does. */
const DEFAULT_RETRY_MS = 3000;
/** How much of an error response's body is kept as the message of a "closed" status. */
const MESSAGE_LIMIT = 500;

/**
 * A parser of the `text/event-stream` format that follows the WHATWG HTML rules
 * ("Interpreting an event stream"): UTF-8 decoded in streaming mode, one leading BOM
 * stripped, CR, LF and CRLF line endings (also a CRLF split across two chunks), comments,
 * fields with or without a value, `data` lines joined with "\n", `id` ignored when it holds
 * NUL, `retry` only when all ASCII digits, dispatch on a blank line only, nothing dispatched
 * for an empty data buffer, and the last event id kept from event to event.
 *
 *     const parser = new SSEParser({
 *       onEvent({ type, data, lastEventId }) {},
 *       onRetry(milliseconds) {},
 *     });
 *     parser.feed(uint8ArrayOrString); ... parser.end();
 */
export class SSEParser {
  constructor({ onEvent = () => {}, onRetry = () => {}, lastEventId = "" } = {}) {
    this.onEvent = onEvent;
    this.onRetry = onRetry;
    /** The last event ID buffer: set by `id:`, kept across events. */
    this.lastEventId = lastEventId;
    // TextDecoder strips one BOM at the start of the stream, even split across chunks.
    this._decoder = new TextDecoder("utf-8");
    this._line = "";
    this._afterCR = false;
    this._data = "";
    this._type = "";
  }

  /** Parse the next chunk: bytes (a Uint8Array or ArrayBuffer) or already decoded text. */
  feed(chunk) {
    const text =
      typeof chunk === "string" ? chunk : this._decoder.decode(chunk, { stream: true });
    if (text === "") {
      return;
    }
    let start = 0;
    if (this._afterCR) {
      // The CR that ended the previous chunk and this LF make one line ending.
      this._afterCR = false;
      if (text[0] === "\n") {
        start = 1;
      }
    }
    const buffer = this._line + text.slice(start);
    const lineEnd = /\r\n|\r|\n/g;
    let position = 0;
    let match;
    while ((match = lineEnd.exec(buffer)) !== null) {
      this._processLine(buffer.slice(position, match.index));
      position = lineEnd.lastIndex;
      if (match[0] === "\r" && position === buffer.length) {
        this._afterCR = true;
      }
    }
    this._line = buffer.slice(position);
  }

  /** The stream ended: an event not yet ended by a blank line is discarded. */
  end() {
    const rest = this._decoder.decode();
    if (rest) {
      this.feed(rest);
    }
    this._line = "";
    this._afterCR = false;
    this._data = "";
    this._type = "";
  }

  _processLine(line) {
    if (line === "") {
      this._dispatch();
      return;
    }
    if (line[0] === ":") {
      return;
    }
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon !== -1) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value[0] === " ") {
        value = value.slice(1);
      }
    }
    switch (field) {
      case "event":
        this._type = value;
        break;
      case "data":
        this._data += value + "\n";
        break;
      case "id":
        if (!value.includes("\0")) {
          this.lastEventId = value;
        }
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) {
          this.onRetry(parseInt(value, 10));
        }
        break;
      default:
        break;
    }
  }

  _dispatch() {
    if (this._data === "") {
      this._type = "";
      return;
    }
    const data = this._data.slice(0, -1);
    const type = this._type || "message";
    this._data = "";
    this._type = "";
    this.onEvent({ type, data, lastEventId: this.lastEventId });
  }
}

/** `url` with one `channel` parameter per channel, in order. */
export function streamUrl(url, channels) {
  if (!channels.length) {
    return url;
  }
  const query = new URLSearchParams(channels.map((channel) => ["channel", channel]));
  return url + (url.includes("?") ? "&" : "?") + query.toString();
}

/** Jittered exponential backoff: a delay in [base/2, base], base = initial·2^attempt ≤ max. */
export function backoffDelay(attempt, { initial = 1000, max = 30000 } = {}) {
  const base = Math.min(max, initial * 2 ** attempt);
  return Math.round(base / 2 + Math.random() * (base / 2));
}

/**
 * The HTTP status (and, for an error, the start of its body) of a GET of `url`, read with
 * fetch. The request is aborted as soon as a 200 has shown its headers, so probing a
 * working stream costs one short-lived subscription. Resolves to {status: 0} on a network
 * error.
 *
 * Why a probe: EventSource reports a failed connection as a bare "error" event with
 * readyState CLOSED, whatever the cause (503 from a proxy, 403, 204, a wrong Content-Type).
 * Resource Timing's `responseStatus` would tell the status without a request, but not in
 * every browser, not once the page's resource timing buffer is full, and never the reason
 * the server gives in the body; the probe does all of that in every browser.
 */
export async function probeStatus(url, { credentials = "same-origin", headers = {} } = {}) {
  const controller = new AbortController();
  try {
    const response = await fetch(url, {
      headers: { Accept: "text/event-stream", ...headers },
      credentials,
      cache: "no-store",
      signal: controller.signal,
    });
    const result = {
      status: response.status,
      contentType: response.headers.get("Content-Type") || "",
      message: "",
    };
    if (response.status === 200) {
      controller.abort();
    } else {
      result.message = await readMessage(response);
    }
    return result;
  } catch {
    return { status: 0, contentType: "", message: "" };
  }
}

async function readMessage(response) {
  try {
    return (await response.text()).slice(0, MESSAGE_LIMIT).trim();
  } catch {
    return "";
  }
}

function isEventStream(contentType) {
  return contentType.split(";")[0].trim().toLowerCase() === "text/event-stream";
}

function readStorage(storage, key) {
  try {
    return storage ? storage.getItem(key) : null;
  } catch {
    // Storage can throw (disabled cookies, sandboxed frames): then there is none.
    return null;
  }
}

function writeStorage(storage, key, value) {
  try {
    if (!storage) {
      return;
    }
    if (value === null) {
      storage.removeItem(key);
    } else {
      storage.setItem(key, value);
    }
  } catch {
    // As above; a full storage must not stop the stream either.
  }
}

/** A WebSocket message's `id` as the SSE transports give ids: a string, or null. */
function idString(id) {
  return id === undefined || id === null ? null : String(id);
}

function parseJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Run a hook supplied by the page; its exception is reported, never breaks the stream. */
function callHook(hook, ...args) {
  if (typeof hook !== "function") {
    return;
  }
  try {
    hook(...args);
  } catch (error) {
    (globalThis.reportError || console.error)(error);
  }
}

/**
 * The ws: or wss: URL of the WebSocket stream. `websocketUrl` is resolved against the page;
 * without one, "/notify/ws/" on the host of the (resolved) `streamUrl`. http: becomes ws:
 * and https: wss:, so that the same relative URL serves a page on either.
 */
function resolveWebSocketUrl(websocketUrl, streamUrl) {
  const page = globalThis.location?.href;
  const resolved =
    websocketUrl === undefined || websocketUrl === null
      ? new URL(DEFAULT_WEBSOCKET_PATH, new URL(streamUrl, page))
      : new URL(websocketUrl, page);
  resolved.protocol = { "http:": "ws:", "https:": "wss:" }[resolved.protocol] ?? resolved.protocol;
  if (resolved.protocol !== "ws:" && resolved.protocol !== "wss:") {
    throw new TypeError(`websocketUrl "${resolved.href}" is not a ws:, wss:, http: or https: URL`);
  }
  return resolved.href;
}

function defaultStorage() {
  try {
    return globalThis.localStorage ?? null;
  } catch {
    // Reading localStorage throws where the page may not use it (sandboxed frames).
    return null;
  }
}

/**
 * A connection to notify's stream for one set of channels.
 *
 * Options:
 * - `channels`: names of channels, one connection for all; [] is the server's default.
 * - `transport`: "eventsource" (default), "fetch" or "websocket".
 * - `headers`: request headers, with the fetch transport only (EventSource and WebSocket
 *   cannot send any).
 * - `withCredentials`: send cookies cross-origin (CORS); same-origin requests always do.
 *   (A WebSocket sends its host's cookies whatever this says.)
 * - `websocketUrl`: the WebSocket stream, for the websocket transport (see above).
 * - `storage`: a Storage (default localStorage) keeping the cursor; null keeps it nowhere.
 * - `lastEventId`: a cursor to start from, instead of the stored one.
 * - `backoff`: {initial, max} in ms, for reconnections after failed connections.
 * - `connect`: connect at once (default true), else wait for `connect()`.
 * - `events`: event types to hear besides "message" and the types given to `on()`
 *   (EventSource hears only named types it listens to; the fetch transport hears all).
 *
 * Hooks (each optional; an exception thrown by one is reported, the stream goes on):
 * - `onEvent(envelope, {replayed, type, id})`: every event that is not a control event.
 *   `envelope` is the parsed JSON of its data ({id, channel, event, created, data}),
 *   `replayed` is true between `notify.catchup-start` and `notify.catchup-end`.
 * - `onStatus(state, info)`: "connecting" (until the stream's first control event),
 *   "open" (live: whatever is published from now on arrives), "catching-up" (replaying
 *   what was missed), "reconnecting" (info:
 *   {by: "browser"} while EventSource retries by itself, {by: "client", delay, reason,
 *   status?, message?} when the client retries after `delay` ms; over a WebSocket `code`
 *   instead of `status`, and `reason` "ws-<code>", "dropped" or "network-error") and
 *   "closed" (info: {reason: "disconnect"} or, stopped for good, {reason: "http-403",
 *   status, message}, over a WebSocket {reason: "ws-4403", code, message}).
 * - `onCatchup("start", {after})` and `onCatchup("end", {count, last_id})`.
 * - `onReset({reason, oldest_id, id})`: the server could not resume from the cursor.
 * - `onControl(name, data, id)`: every `notify.*` event, with the id (a string) the client
 *   has everything through from then on; null if the server sent none.
 */
export class NotifyClient {
  /**
   * @param {string} url the URL of notify's SSE stream, e.g. "/notify/stream/" (with the
   *   websocket transport too: the stored cursor is keyed by it).
   * @param {object} options see above.
   */
  constructor(url, options = {}) {
    const {
      channels = [],
      transport = "eventsource",
      headers = {},
      withCredentials = false,
      websocketUrl = undefined,
      storage = defaultStorage(),
      lastEventId = undefined,
      backoff = {},
      connect = true,
      events = [],
      onEvent,
      onStatus,
      onCatchup,
      onReset,
      onControl,
    } = options;
    if (!TRANSPORTS.includes(transport)) {
      throw new TypeError(
        `transport "${transport}" is unknown; use "eventsource", "fetch" or "websocket"`,
      );
    }
    if (transport === "eventsource" && Object.keys(headers).length) {
      throw new TypeError('EventSource cannot send headers; use transport: "fetch"');
    }
    if (transport === "websocket" && Object.keys(headers).length) {
      throw new TypeError('A WebSocket cannot send headers; use transport: "fetch"');
    }
    this._channels = [...channels];
    this._transport = transport;
    this._headers = { ...headers };
    this._withCredentials = Boolean(withCredentials);
    this._storage = storage;
    this._backoff = { initial: 1000, max: 30000, ...backoff };
    this._hooks = { onEvent, onStatus, onCatchup, onReset, onControl };
    this._url = streamUrl(url, this._channels);
    this._websocketUrl =
      transport === "websocket"
        ? streamUrl(resolveWebSocketUrl(websocketUrl, url), this._channels)
        : null;
    this._storageKey = STORAGE_PREFIX + this._url;
    this._events = new Set(["message", ...events]);
    /** type -> Set of handlers */
    this._handlers = new Map();
    this._status = "closed";
    this._replaying = false;
    this._attempt = 0;
    this._retryMs = DEFAULT_RETRY_MS;
    this._timer = null;
    /** The current connection: {close(), ...}; a stale one's callbacks are ignored. */
    this._connection = null;
    const stored = readStorage(this._storage, this._storageKey);
    this._cursor =
      lastEventId !== undefined && lastEventId !== null ? String(lastEventId) : stored;
    if (connect) {
      this.connect();
    }
  }

  get lastEventId() {
    return this._cursor;
  }

  get status() {
    return this._status;
  }

  get channels() {
    return [...this._channels];
  }

  get transport() {
    return this._transport;
  }

  /** The URL of the stream with its channels (the key of the stored cursor, less a prefix). */
  get url() {
    return this._url;
  }

  /** The ws: or wss: URL with its channels, with the websocket transport; else null. */
  get websocketUrl() {
    return this._websocketUrl;
  }

  /** Call `handler(envelope, meta)` for every event of `type` ("message" included), as
   * `onEvent` is called; control events go to `onControl` only. */
  on(type, handler) {
    let handlers = this._handlers.get(type);
    if (!handlers) {
      handlers = new Set();
      this._handlers.set(type, handlers);
    }
    handlers.add(handler);
    if (!this._events.has(type)) {
      this._events.add(type);
      this._connection?.listen?.(type);
    }
    return this;
  }

  off(type, handler) {
    this._handlers.get(type)?.delete(handler);
    return this;
  }

  /** Open the stream, from the cursor when there is one; nothing if already connected. */
  connect() {
    if (this._connection || this._timer !== null) {
      return;
    }
    this._attempt = 0;
    this._open("connecting");
  }

  /** Close the stream for good (until `connect()` or `reconnect()`). */
  disconnect() {
    this._stop({ reason: "disconnect" });
  }

  /** Close the stream and open it again at once, from the cursor. */
  reconnect() {
    this._teardown();
    this._attempt = 0;
    this._open("connecting");
  }

  /** Forget the cursor, stored and current: the next connection the client makes starts
   * from now. (An open EventSource still sends its own Last-Event-ID if the browser
   * reconnects it; call `reconnect()` to start afresh at once.) */
  clearHistory() {
    this._cursor = null;
    writeStorage(this._storage, this._storageKey, null);
  }

  // --- connections ------------------------------------------------------------------------

  _open(state, info = {}) {
    this._setStatus(state, info);
    this._replaying = false;
    const open = {
      eventsource: () => this._openEventSource(),
      fetch: () => this._openFetch(),
      websocket: () => this._openWebSocket(),
    }[this._transport];
    this._connection = open();
  }

  /** `url` with the cursor as `lastEventId`, for the transports that cannot send a header. */
  _withCursor(url) {
    if (this._cursor === null) {
      return url;
    }
    const query = new URLSearchParams({ lastEventId: this._cursor });
    return url + (url.includes("?") ? "&" : "?") + query.toString();
  }

  _openEventSource() {
    const source = new EventSource(this._withCursor(this._url), {
      withCredentials: this._withCredentials,
    });
    const connection = {
      close: () => source.close(),
      listen: (type) => source.addEventListener(type, onMessage),
    };
    const onMessage = (event) => {
      if (this._connection === connection) {
        this._receive(event.type, event.data, event.lastEventId);
      }
    };
    for (const type of [...CONTROL_EVENTS, ...this._events]) {
      source.addEventListener(type, onMessage);
    }
    source.addEventListener("open", () => {
      if (this._connection === connection) {
        this._opened();
      }
    });
    source.addEventListener("error", () => {
      if (this._connection !== connection) {
        return;
      }
      if (source.readyState === EventSource.CONNECTING) {
        // The browser reconnects by itself, after the server's retry: delay.
        this._replaying = false;
        this._setStatus("reconnecting", { by: "browser" });
      } else {
        source.close();
        this._eventSourceFailed(connection, source.url);
      }
    });
    return connection;
  }

  async _eventSourceFailed(connection, url) {
    const credentials = this._withCredentials ? "include" : "same-origin";
    const probe = await probeStatus(url, { credentials });
    if (this._connection !== connection) {
      return;
    }
    this._failed(probe.status, probe.message, probe.contentType);
  }

  _openFetch() {
    const controller = new AbortController();
    const connection = { close: () => controller.abort() };
    this._runFetch(connection, controller.signal);
    return connection;
  }

  async _runFetch(connection, signal) {
    const headers = { Accept: "text/event-stream", ...this._headers };
    if (this._cursor !== null) {
      headers["Last-Event-ID"] = this._cursor;
    }
    const current = () => this._connection === connection && !signal.aborted;
    let response;
    try {
      response = await fetch(this._url, {
        headers,
        credentials: this._withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal,
      });
    } catch {
      if (current()) {
        this._failed(0, "", "");
      }
      return;
    }
    if (!current()) {
      return;
    }
    const contentType = response.headers.get("Content-Type") || "";
    if (response.status !== 200 || !isEventStream(contentType) || !response.body) {
      const message = response.status === 200 ? "" : await readMessage(response);
      if (current()) {
        this._failed(response.status, message, contentType);
      }
      return;
    }
    this._opened();
    const parser = new SSEParser({
      lastEventId: this._cursor ?? "",
      onEvent: ({ type, data, lastEventId }) => {
        if (current()) {
          this._receive(type, data, lastEventId);
        }
      },
      onRetry: (milliseconds) => {
        this._retryMs = milliseconds;
      },
    });
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done || !current()) {
          break;
        }
        parser.feed(value);
      }
    } catch {
      // A dropped connection, or our own abort: either way the stream is over.
    }
    parser.end();
    if (current()) {
      this._dropped(connection);
    }
  }

  _openWebSocket() {
    // `started`: the stream sent its first control event (a refusal comes after the
    // handshake, so an accepted handshake says nothing). `error`: the server's notify.error,
    // whose reason the close frame may have lost.
    const connection = { started: false, error: null, close: () => {} };
    let socket;
    try {
      socket = new WebSocket(this._withCursor(this._websocketUrl));
    } catch {
      // A port the browser blocks, a page that may not connect: as a network error, later
      // (not from inside connect()).
      setTimeout(() => {
        if (this._connection === connection) {
          this._webSocketClosed(connection, WS_ABNORMAL_CLOSURE, "");
        }
      }, 0);
      return connection;
    }
    connection.close = () => socket.close();
    socket.addEventListener("message", (event) => {
      if (this._connection === connection && typeof event.data === "string") {
        this._webSocketMessage(connection, event.data);
      }
    });
    socket.addEventListener("close", (event) => {
      if (this._connection === connection) {
        this._webSocketClosed(connection, event.code, event.reason);
      }
    });
    return connection;
  }

  /** One message: an event (its envelope, with no "type"), or one of notify's own. */
  _webSocketMessage(connection, text) {
    const message = parseJSON(text);
    if (message === null || typeof message !== "object" || Array.isArray(message)) {
      return;
    }
    const { type } = message;
    if (typeof type !== "string") {
      const id = idString(message.id);
      this._remember(id);
      this._deliver(typeof message.event === "string" ? message.event : "message", message, id);
    } else if (type === WS_RETRY) {
      if (Number.isInteger(message.retry) && message.retry >= 0) {
        this._retryMs = message.retry;
      }
    } else if (type === WS_ERROR) {
      connection.error = message;
    } else if (type.startsWith(CONTROL_PREFIX)) {
      if (!connection.started) {
        connection.started = true;
        this._opened();
      }
      // The data of a control event is what the SSE one carries on its data: line.
      const { type: name, id: cursor, ...data } = message;
      const id = idString(cursor);
      this._remember(id);
      this._control(name, data, id);
    }
  }

  /** The WebSocket closed, by the server's choice (`code`, WS_CLOSE_ACTIONS) or not. */
  _webSocketClosed(connection, code, closeReason) {
    connection.close();
    this._connection = null;
    this._replaying = false;
    const message = connection.error?.reason || closeReason || "";
    const action = WS_CLOSE_ACTIONS.get(code);
    if (action === "stop") {
      this._stop({ reason: `ws-${code}`, code, message });
      return;
    }
    const info = { code, reason: `ws-${code}` };
    if (message) {
      info.message = message;
    }
    if (action === "resume") {
      this._schedule(this._retryMs, info);
      return;
    }
    if (code === WS_ABNORMAL_CLOSURE) {
      if (connection.started) {
        // A stream cut after it started: as the fetch transport's dropped stream.
        this._schedule(this._retryMs, { code, reason: "dropped" });
        return;
      }
      info.reason = "network-error";
    }
    let delay = this._nextBackoffDelay();
    if (connection.error) {
      delay = Math.max(delay, this._retryMs);
    }
    this._schedule(delay, info);
  }

  // --- what happens on a connection -------------------------------------------------------

  /** The server accepted the connection (over a WebSocket: the stream sent its first
   * control event, as a refusal follows an accepted handshake): failures are counted from
   * zero again. The status becomes "open" only with the stream's first control event: from
   * then on, whatever is published reaches this client. */
  _opened() {
    this._attempt = 0;
  }

  /** The fetch transport's open stream ended: reconnect after the server's retry: delay,
   * as EventSource does (failures to reconnect then back off). */
  _dropped(connection) {
    connection.close();
    this._connection = null;
    this._replaying = false;
    this._schedule(this._retryMs, { reason: "dropped" });
  }

  /** A connection was refused with `status` (0: a network error). */
  _failed(status, message, contentType) {
    this._connection?.close();
    this._connection = null;
    this._replaying = false;
    if (FINAL_STATUSES.has(status)) {
      this._stop({ reason: `http-${status}`, status, message });
      return;
    }
    const info = { status };
    if (status === 0) {
      info.reason = "network-error";
    } else if (status !== 200) {
      info.reason = `http-${status}`;
    } else if (!isEventStream(contentType)) {
      info.reason = "not-an-event-stream";
    } else {
      // EventSource failed, yet the probe got a stream: the trouble has passed.
      info.reason = "connection-failed";
    }
    if (message) {
      info.message = message;
    }
    this._schedule(this._nextBackoffDelay(), info);
  }

  /** The delay before the next attempt after a failed one: longer each time, until a
   * stream opens (`_opened`). */
  _nextBackoffDelay() {
    const delay = backoffDelay(this._attempt, this._backoff);
    this._attempt += 1;
    return delay;
  }

  _schedule(delay, info) {
    this._setStatus("reconnecting", { ...info, delay, by: "client" });
    this._timer = setTimeout(() => {
      this._timer = null;
      this._open("connecting");
    }, delay);
  }

  _teardown() {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    if (this._connection) {
      const connection = this._connection;
      this._connection = null;
      connection.close();
    }
    this._replaying = false;
  }

  _stop(info) {
    this._teardown();
    this._setStatus("closed", info);
  }

  _setStatus(state, info) {
    if (state === this._status && state !== "reconnecting") {
      return;
    }
    this._status = state;
    callHook(this._hooks.onStatus, state, info);
  }

  _remember(lastEventId) {
    if (lastEventId && lastEventId !== this._cursor) {
      this._cursor = lastEventId;
      writeStorage(this._storage, this._storageKey, lastEventId);
    }
  }

  /** An SSE event, from EventSource or `SSEParser`. */
  _receive(type, rawData, lastEventId) {
    this._remember(lastEventId);
    // A MessageEvent's lastEventId is the last id seen so far, whether or not this event
    // had an id: line; every event notify sends has one.
    const id = lastEventId || null;
    if (type.startsWith(CONTROL_PREFIX)) {
      this._control(type, parseJSON(rawData), id);
      return;
    }
    this._deliver(type, parseJSON(rawData), id);
  }

  _deliver(type, envelope, id) {
    const meta = { replayed: this._replaying, type, id };
    callHook(this._hooks.onEvent, envelope, meta);
    for (const handler of [...(this._handlers.get(type) || [])]) {
      callHook(handler, envelope, meta);
    }
  }

  _control(name, data, id) {
    callHook(this._hooks.onControl, name, data, id);
    if (name === "notify.open") {
      this._setStatus("open", {});
    } else if (name === "notify.catchup-start") {
      this._replaying = true;
      this._setStatus("catching-up", {});
      callHook(this._hooks.onCatchup, "start", data);
    } else if (name === "notify.catchup-end") {
      this._replaying = false;
      this._setStatus("open", {});
      callHook(this._hooks.onCatchup, "end", data);
    } else if (name === "notify.reset") {
      // After "history-gone" the catch-up of what is left follows (or goes on, when events
      // were deleted during it); otherwise live events.
      if (data?.reason !== "history-gone") {
        this._setStatus("open", {});
      }
      callHook(this._hooks.onReset, { ...data, id });
    }
  }
}
