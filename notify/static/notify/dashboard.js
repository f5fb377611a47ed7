// The dashboard page (notify/dashboard.html): shows one NotifyClient at work.
//
// Everything that comes from an event or from the server is put in the page with
// textContent, never as HTML: the page displays what anyone with publish rights sent.

import { NotifyClient } from "./notify.js";

const MAX_LINES = 500;
const CHART_SECONDS = 60;
const MAX_DATA_CHARS = 400;
const STATUS_TEXT = {
  connecting: "connecting",
  open: "open",
  "catching-up": "catching up",
  reconnecting: "reconnecting",
  closed: "closed",
};
const TRANSPORTS = ["fetch", "eventsource", "websocket"];
const RESET_REASONS = {
  "history-gone": "events after the cursor were deleted by retention",
  "invalid-cursor": "the stored cursor was not a valid id",
  "unknown-cursor": "the stored cursor is beyond the newest event",
};

const config = JSON.parse(document.getElementById("notify-dashboard-config").textContent);
const byId = (id) => document.getElementById(id);

const ui = {
  status: byId("notify-status"),
  statusText: byId("notify-status-text"),
  live: byId("notify-live-count"),
  replayed: byId("notify-replayed-count"),
  resets: byId("notify-reset-count"),
  uptime: byId("notify-uptime"),
  lastId: byId("notify-last-id"),
  log: byId("notify-log"),
  chart: byId("notify-rate-chart"),
  rateSummary: byId("notify-rate-summary"),
  connect: byId("notify-connect"),
  disconnect: byId("notify-disconnect"),
  reconnect: byId("notify-reconnect"),
  clearHistory: byId("notify-clear-history"),
  clearLog: byId("notify-clear-log"),
  transport: byId("notify-transport"),
  publishForm: byId("notify-publish-form"),
};

const counts = { live: 0, replayed: 0, resets: 0 };
let openedAt = null;

// --- the log --------------------------------------------------------------------------

function clock(date) {
  return date.toLocaleTimeString(undefined, { hour12: false });
}

function span(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function addLine(kind, badge, ...parts) {
  const line = document.createElement("li");
  line.className = `notify-line notify-line-${kind}`;
  const now = new Date();
  const time = document.createElement("time");
  time.dateTime = now.toISOString();
  time.textContent = clock(now);
  line.append(time, span(`notify-badge notify-badge-${kind}`, badge));
  // Spaces between the parts, so that the line reads (and copies) as words.
  for (const part of parts) {
    line.append(" ", part);
  }
  // Newest first: the latest line is visible without scrolling.
  ui.log.prepend(line);
  while (ui.log.childElementCount > MAX_LINES) {
    ui.log.lastElementChild.remove();
  }
  ui.clearLog.disabled = false;
  return line;
}

function addSystemLine(text, name) {
  return addLine("system", "system", span("notify-control", name), span("notify-text", text));
}

function describeData(data) {
  const text = data === undefined ? "" : JSON.stringify(data);
  return text.length > MAX_DATA_CHARS ? `${text.slice(0, MAX_DATA_CHARS)}…` : text;
}

function addEventLine(received, replayed) {
  // notify.js hands over data that is not JSON as the text itself; the server never sends it.
  const envelope = received !== null && typeof received === "object" ? received : { data: received };
  const line = addLine(
    replayed ? "replayed" : "live",
    replayed ? "replayed" : "live",
    span("notify-id", `#${envelope.id ?? "?"}`),
    span("notify-channel", envelope.channel),
    span("notify-type", envelope.event),
    span("notify-data", describeData(envelope.data)),
  );
  if (envelope.id !== undefined) {
    line.dataset.id = String(envelope.id);
  }
  if (envelope.created) {
    line.title = `created ${envelope.created}`;
  }
}

function describeControl(name, data, id) {
  const info = data ?? {};
  switch (name) {
    case "notify.open":
      return `connected; newest id ${info.last_id}`;
    case "notify.catchup-start":
      return `catching up on events after #${info.after}`;
    case "notify.catchup-end":
      return `caught up: ${info.count} replayed, through #${info.last_id}`;
    case "notify.reset": {
      const why = RESET_REASONS[info.reason] ?? info.reason;
      return `reset (${info.reason}): ${why}; oldest kept #${info.oldest_id}, resuming after #${id}`;
    }
    default:
      return JSON.stringify(data);
  }
}

// --- counters, status, buttons ----------------------------------------------------------

function showCounts() {
  ui.live.textContent = String(counts.live);
  ui.replayed.textContent = String(counts.replayed);
  ui.resets.textContent = String(counts.resets);
}

function showLastId() {
  const id = client?.lastEventId;
  ui.lastId.textContent = id === null || id === undefined || id === "" ? "–" : String(id);
}

function duration(ms) {
  const total = Math.floor(ms / 1000);
  const hours = Math.floor(total / 3600);
  const minutes = String(Math.floor((total % 3600) / 60)).padStart(2, "0");
  const seconds = String(total % 60).padStart(2, "0");
  return hours ? `${hours}:${minutes}:${seconds}` : `${minutes}:${seconds}`;
}

function showUptime() {
  ui.uptime.textContent = openedAt === null ? "–" : duration(Date.now() - openedAt);
}

function showButtons(state) {
  const closed = state === "closed";
  const focused = document.activeElement;
  ui.connect.disabled = !closed;
  ui.disconnect.disabled = closed;
  ui.reconnect.disabled = false;
  ui.clearHistory.disabled = false;
  // A button that disables itself would drop keyboard focus on the page body.
  if (focused instanceof HTMLButtonElement && focused.disabled) {
    const next = [ui.connect, ui.disconnect, ui.reconnect].find((button) => !button.disabled);
    next?.focus();
  }
}

function showStatus(state, info) {
  ui.status.dataset.state = state;
  let text = STATUS_TEXT[state] ?? state;
  if (state === "reconnecting" && info?.delay !== undefined) {
    text += ` in ${(info.delay / 1000).toFixed(1)} s`;
  }
  if (state === "reconnecting" && info?.reason) {
    text += ` (${info.reason})`;
  }
  ui.statusText.textContent = text;
  if (state === "open" || state === "catching-up") {
    openedAt ??= Date.now();
  } else {
    openedAt = null;
  }
  showUptime();
  showButtons(state);
}

// --- who is listening ------------------------------------------------------------------

function showListening(counts) {
  for (const element of document.querySelectorAll(".notify-presence")) {
    const count = counts[element.dataset.channel];
    // null is the server's "cannot tell": never shown as 0.
    element.textContent = Number.isInteger(count) ? `${count} listening` : "unknown";
  }
}

async function refreshListening() {
  const url = new URL(config.presence_url, window.location.href);
  for (const channel of config.channels) {
    url.searchParams.append("channel", channel);
  }
  let counts = {};
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    if (response.ok) {
      counts = await response.json();
    }
  } catch {
    // The server cannot be reached: the counts are unknown until it answers again.
  }
  showListening(counts);
}

function pollListening() {
  // The processes report every presence_seconds: asking sooner would tell nothing new.
  // Chained rather than on an interval, so that a slow answer never overlaps the next.
  const again = () => setTimeout(pollListening, config.presence_seconds * 1000);
  if (document.hidden) {
    again();
  } else {
    refreshListening().finally(again);
  }
}

// --- events per second ------------------------------------------------------------------

// One bucket per second, the newest last; `chartSecond` is the second of the newest.
const buckets = Array.from({ length: CHART_SECONDS }, () => ({ live: 0, replayed: 0 }));
let chartSecond = Math.floor(Date.now() / 1000);
let chartPending = false;

function advanceChart() {
  const second = Math.floor(Date.now() / 1000);
  const steps = Math.min(second - chartSecond, CHART_SECONDS);
  for (let step = 0; step < steps; step++) {
    buckets.shift();
    buckets.push({ live: 0, replayed: 0 });
  }
  chartSecond = Math.max(chartSecond, second);
}

function countInChart(replayed) {
  advanceChart();
  buckets[CHART_SECONDS - 1][replayed ? "replayed" : "live"] += 1;
  // A catch-up can bring thousands of events at once: draw once per frame, not per event.
  if (!chartPending) {
    chartPending = true;
    requestAnimationFrame(() => {
      chartPending = false;
      drawChart();
    });
  }
}

const SVG = "http://www.w3.org/2000/svg";

function bar(className, x, y, height) {
  const rect = document.createElementNS(SVG, "rect");
  rect.setAttribute("class", className);
  rect.setAttribute("x", String(x + 1));
  rect.setAttribute("y", String(y));
  rect.setAttribute("width", "8");
  rect.setAttribute("height", String(height));
  return rect;
}

function drawChart() {
  const totals = buckets.map((bucket) => bucket.live + bucket.replayed);
  const peak = Math.max(...totals);
  // At least 5/s of headroom, so that a single event is not a full-height bar.
  const scale = 110 / Math.max(peak, 5);
  const bars = [];
  buckets.forEach((bucket, index) => {
    const x = index * 10;
    const liveHeight = bucket.live * scale;
    const replayedHeight = bucket.replayed * scale;
    if (liveHeight) {
      bars.push(bar("notify-bar-live", x, 120 - liveHeight, liveHeight));
    }
    if (replayedHeight) {
      bars.push(bar("notify-bar-replayed", x, 120 - liveHeight - replayedHeight, replayedHeight));
    }
  });
  ui.chart.replaceChildren(...bars);
  const total = totals.reduce((sum, count) => sum + count, 0);
  ui.rateSummary.textContent = `peak ${peak}/s, ${total} in the last minute`;
  ui.chart.setAttribute(
    "aria-label",
    total ? `${total} events in the last minute, at most ${peak} in one second` : "No events in the last minute",
  );
}

// --- the client -------------------------------------------------------------------------

function localStorageOrNull() {
  // Reading localStorage throws where the user blocked site data.
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

let client = null;
// Event types EventSource must be told to listen to: it hears no others.
const knownTypes = new Set();

function chosenTransport() {
  const asked = new URLSearchParams(window.location.search).get("transport");
  return TRANSPORTS.includes(asked) ? asked : TRANSPORTS[0];
}

function startClient(transport, { lastEventId, connect = true } = {}) {
  client = new NotifyClient(config.stream_url, {
    channels: config.channels,
    transport,
    storage: localStorageOrNull() ?? undefined,
    lastEventId,
    backoff: { initial: 1000, max: 30000 },
    events: [...knownTypes],
    connect: false,
    onEvent(envelope, { replayed }) {
      counts[replayed ? "replayed" : "live"] += 1;
      showCounts();
      showLastId();
      addEventLine(envelope, replayed);
      countInChart(replayed);
    },
    onStatus(state, info) {
      showStatus(state, info);
      // A disconnect asked for with the button has its own line.
      if (state === "closed" && info?.reason && info.reason !== "disconnect") {
        addSystemLine(`closed for good: ${info.message || info.reason}`, "closed");
      }
    },
    onReset() {
      counts.resets += 1;
      showCounts();
      showLastId();
    },
    onControl(name, data, id) {
      addSystemLine(describeControl(name, data, id), name);
      showLastId();
    },
  });
  showLastId();
  if (connect) {
    client.connect();
  }
}

function listenTo(type) {
  if (!knownTypes.has(type)) {
    knownTypes.add(type);
    // A handler is what makes the EventSource transport listen to a type.
    client?.on(type, () => {});
  }
}

function switchTransport(transport) {
  const url = new URL(window.location.href);
  url.searchParams.set("transport", transport);
  window.history.replaceState(null, "", url);
  const { lastEventId, status } = client;
  client.disconnect();
  addSystemLine(`now over ${transport}, from the same cursor`, "transport");
  // The cursor is handed over: storage may be unavailable.
  startClient(transport, { lastEventId, connect: status !== "closed" });
}

function wireButtons() {
  ui.connect.addEventListener("click", () => {
    client.connect();
  });
  ui.disconnect.addEventListener("click", () => {
    client.disconnect();
    addSystemLine("disconnected; the cursor is kept", "disconnect");
  });
  ui.reconnect.addEventListener("click", () => {
    addSystemLine(`reconnecting from #${client.lastEventId ?? "–"}`, "reconnect");
    client.reconnect();
  });
  ui.clearHistory.addEventListener("click", () => {
    client.clearHistory();
    showLastId();
    addSystemLine("stored cursor forgotten: the next connection starts from now", "clear");
  });
  ui.transport.addEventListener("change", () => switchTransport(ui.transport.value));
  ui.clearLog.addEventListener("click", () => {
    ui.log.replaceChildren();
    ui.clearLog.disabled = true;
    ui.log.focus();
  });
}

// --- publishing -------------------------------------------------------------------------

function wirePublishForm(form) {
  const result = byId("notify-publish-result");
  const dataBox = form.elements.data;
  const submit = byId("notify-publish-submit");
  const token = form.elements.csrfmiddlewaretoken.value;

  const show = (ok, text) => {
    result.dataset.outcome = ok ? "ok" : "error";
    result.textContent = text;
  };

  dataBox.addEventListener("input", () => dataBox.removeAttribute("aria-invalid"));

  form.addEventListener("submit", async (submitEvent) => {
    submitEvent.preventDefault();
    const raw = dataBox.value.trim();
    let data = null;
    if (raw) {
      try {
        data = JSON.parse(raw);
      } catch (error) {
        dataBox.setAttribute("aria-invalid", "true");
        show(false, `Data is not valid JSON: ${error.message}`);
        dataBox.focus();
        return;
      }
    }
    const body = {
      channel: form.elements.channel.value.trim(),
      event: form.elements.event.value.trim() || "message",
      data,
    };
    listenTo(body.event);
    submit.disabled = true;
    show(true, "Publishing…");
    try {
      const response = await fetch(config.publish_url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": token },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => null);
      if (response.ok) {
        show(true, `Published #${answer.id} on ${answer.channel}`);
      } else {
        show(false, `${response.status}: ${answer?.error ?? response.statusText}`);
      }
    } catch (error) {
      show(false, `The publish API could not be reached: ${error.message}`);
    } finally {
      submit.disabled = false;
    }
  });
}

// --- start ------------------------------------------------------------------------------

wireButtons();
if (ui.publishForm) {
  wirePublishForm(ui.publishForm);
}
drawChart();
setInterval(() => {
  showUptime();
  advanceChart();
  drawChart();
}, 1000);
if (config.channels.length) {
  ui.transport.value = chosenTransport();
  startClient(ui.transport.value);
  // The page came with the counts: the first refresh is due one interval later.
  setTimeout(pollListening, config.presence_seconds * 1000);
} else {
  showStatus("closed");
  for (const control of [ui.connect, ui.disconnect, ui.reconnect, ui.clearHistory, ui.transport]) {
    control.disabled = true;
  }
  addSystemLine("no channel to subscribe to", "none");
}
