// hookrelay inspector: a live view of one channel's history.
//
// Every value that comes from a webhook (path, headers, body, event type,
// errors that quote them) is written with textContent or a DOM property,
// never parsed as HTML, and no URL from an event becomes a link. The page's
// Content-Security-Policy also enforces Trusted Types, so an innerHTML
// assignment would throw instead of creating elements.
//
// The channel token comes from the URL fragment (#token=…), which browsers
// do not send to servers, and lives in sessionStorage for this tab only.
"use strict";

(() => {
  const PAGE_SIZE = 50;
  const MAX_ROWS = 1000; // the largest page the history API returns
  const LONG_POLL_SECONDS = 25; // below the relay's 30 s ceiling
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 15000;
  const FILTER_DELAY_MS = 300;
  const HEX_LIMIT = 64 * 1024;
  const TEXT_LIMIT = 1024 * 1024;
  const STATES = ["pending", "delivered", "failed", "skipped"];
  // Headers that describe one hop, which curl writes itself.
  const HOP_BY_HOP = new Set([
    "host", "content-length", "transfer-encoding", "connection", "keep-alive",
    "te", "trailer", "upgrade", "proxy-connection",
  ]);
  // Headers curl adds by itself. The command turns off those the sender did not send.
  const CURL_DEFAULTS = { "user-agent": "User-Agent", "accept": "Accept", "content-type": "Content-Type", "expect": "Expect" };

  const channel = decodeURIComponent(location.pathname.split("/").pop());
  const root = location.pathname.slice(0, location.pathname.lastIndexOf("/inspect/"));
  const apiBase = `${root}/api/channels/${encodeURIComponent(channel)}`;
  const storageKey = `hookrelay.token.${channel}`;

  const state = {
    token: null,
    version: null,
    rows: [],
    newestSeq: null,
    rowLimit: PAGE_SIZE,
    selected: null,
    detail: null,
    view: null,
    ingestUrl: "",
    poll: null,
    generation: 0,
  };

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // --- DOM helpers: the only way this script puts text on the page ---

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.append(cell instanceof Node ? cell : element("td", cell));
    return tr;
  }

  function setMessage(id, text) {
    $(id).textContent = text;
  }

  // --- token ---

  function takeToken() {
    const fragment = new URLSearchParams(location.hash.slice(1));
    const fromUrl = fragment.get("token");
    if (fromUrl) {
      sessionStorage.setItem(storageKey, fromUrl);
      // Keep the token out of the address bar, bookmarks and screenshots.
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem(storageKey);
  }

  function askForToken(message) {
    state.generation += 1;
    state.token = null;
    sessionStorage.removeItem(storageKey);
    setConnection("locked", "token needed");
    $("app").hidden = true;
    $("token-form").hidden = false;
    setMessage("token-message", message);
    $("token-input").focus();
  }

  function onTokenSubmit(event) {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    $("token-input").value = "";
    sessionStorage.setItem(storageKey, token);
    state.token = token;
    openChannel();
  }

  // --- API ---

  async function api(method, path, options = {}) {
    const response = await fetch(apiBase + path, {
      method,
      signal: options.signal,
      cache: "no-store",
      credentials: "omit",
      headers: { Authorization: `Bearer ${state.token}` },
    });
    if (response.status === 401) throw new ApiError(401, "the relay did not accept this channel token");
    if (response.status === 204) return null;
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, (body && body.message) || `HTTP ${response.status}`);
    return body;
  }

  function group() {
    return $("filter-group").value.trim() || "default";
  }

  function filterQuery(extra) {
    const params = new URLSearchParams();
    const fields = [["state", "filter-state"], ["method", "filter-method"], ["type", "filter-type"], ["q", "filter-text"]];
    for (const [key, id] of fields) {
      const value = $(id).value.trim();
      if (value) params.set(key, value);
    }
    params.set("group", group());
    for (const [key, value] of Object.entries(extra)) {
      if (value !== null && value !== undefined) params.set(key, String(value));
    }
    return params;
  }

  // --- live list ---

  function setConnection(kind, text) {
    const badge = $("connection");
    badge.dataset.state = kind;
    badge.textContent = text;
  }

  async function openChannel() {
    const generation = ++state.generation;
    $("token-form").hidden = true;
    $("app").hidden = false;
    setConnection("idle", "connecting");
    try {
      const info = await api("GET", "");
      state.ingestUrl = info.url;
      $("ingest-url").textContent = info.url;
    } catch (error) {
      if (error.status === 401) return askForToken(error.message);
      setConnection("offline", `relay unreachable: ${error.message}`);
    }
    liveLoop(generation);
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  // Long-poll the history: the relay keeps the request open until the
  // channel's version differs from the one we saw, so new events appear at once.
  async function liveLoop(generation) {
    let delay = RETRY_MIN_MS;
    while (generation === state.generation) {
      const controller = new AbortController();
      state.poll = controller;
      const wait = state.version === null ? 0 : LONG_POLL_SECONDS;
      const params = filterQuery({ limit: Math.min(state.rowLimit, MAX_ROWS), wait, version: state.version });
      try {
        const page = await api("GET", `/events?${params}`, { signal: controller.signal });
        if (generation !== state.generation) return;
        setConnection("live", "live");
        delay = RETRY_MIN_MS;
        if (page.version !== state.version) {
          state.version = page.version;
          showRows(page);
        }
      } catch (error) {
        if (error.name === "AbortError") continue;
        if (error.status === 401) return askForToken(error.message);
        setConnection("offline", `reconnecting in ${Math.round(delay / 1000)} s: ${error.message}`);
        await sleep(delay);
        delay = Math.min(delay * 2, RETRY_MAX_MS);
      }
    }
  }

  // Start the list over, for example after a filter changed.
  function refresh() {
    state.version = null;
    if (state.poll) state.poll.abort();
  }

  function showRows(page) {
    const previous = new Map(state.rows.map((item) => [item.id, item]));
    const newest = state.newestSeq;
    state.rows = page.events;
    const body = $("event-rows");
    body.replaceChildren(...page.events.map((item) => eventRow(item, newest !== null && item.seq > newest)));
    for (const item of page.events) state.newestSeq = Math.max(state.newestSeq ?? 0, item.seq);
    $("list-empty").hidden = page.events.length > 0;
    $("older").hidden = page.next_before === null || state.rowLimit >= MAX_ROWS;

    const selected = page.events.find((item) => item.id === state.selected);
    const before = previous.get(state.selected);
    if (selected && before && changed(before, selected)) loadDetail(state.selected);
  }

  function changed(before, after) {
    return before.state !== after.state || before.status !== after.status || before.attempts !== after.attempts;
  }

  function eventRow(item, fresh) {
    const tr = row([
      timeCell(item.received_at),
      element("td", item.method, "method"),
      element("td", item.path, "path"),
      element("td", item.event_type || "", "type"),
      stateCell(item.state),
      element("td", item.status === null ? "" : item.status),
      element("td", formatSize(item.size), "size"),
    ]);
    tr.dataset.id = item.id;
    tr.tabIndex = 0;
    if (fresh) tr.classList.add("fresh");
    if (item.id === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => selectEvent(item.id));
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter") selectEvent(item.id);
    });
    return tr;
  }

  function timeCell(seconds) {
    const date = new Date(seconds * 1000);
    const cell = element("td", date.toLocaleTimeString(), "time");
    cell.title = date.toISOString();
    return cell;
  }

  function stateCell(value) {
    const cell = document.createElement("td");
    const kind = STATES.includes(value) ? value : "unknown";
    cell.append(element("span", value, `badge state-${kind}`));
    return cell;
  }

  function formatSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  }

  // --- detail ---

  function selectEvent(id) {
    state.selected = id;
    state.view = null;
    for (const tr of $("event-rows").children) tr.classList.toggle("selected", tr.dataset.id === id);
    setMessage("action-message", "");
    loadDetail(id);
  }

  async function loadDetail(id) {
    try {
      const detail = await api("GET", `/events/${encodeURIComponent(id)}?group=${encodeURIComponent(group())}`);
      if (state.selected !== id) return;
      state.detail = detail;
      showDetail(detail);
    } catch (error) {
      if (error.status === 401) return askForToken(error.message);
      setMessage("action-message", `could not load event ${id}: ${error.message}`);
    }
  }

  function showDetail(detail) {
    $("detail").hidden = false;
    $("detail-title").textContent = `${detail.method} ${detail.path}`;
    showFacts(detail);
    $("detail-headers").replaceChildren(...detail.headers.map(([name, value]) => row([element("th", name), value])));
    showBody(detail);
    showTable("detail-outcomes", detail.outcomes.map(outcomeRow), 7, "No delivery has finished yet.");
    showTable("detail-attempts", detail.attempts.map(attemptRow), 6, "No attempt recorded yet.");
    showAnswer(detail.answer);
    $("curl-text").value = curlCommand(detail);
  }

  function showFacts(detail) {
    const facts = [
      ["Event id", detail.id],
      ["Received", new Date(detail.received_at * 1000).toISOString()],
      ["From", detail.remote],
      ["Type", detail.event_type || "none detected"],
      ["Size", `${detail.size} bytes`],
      [`State (${group()})`, detail.state],
    ];
    const nodes = [];
    for (const [term, value] of facts) nodes.push(element("dt", term), element("dd", value));
    $("detail-facts").replaceChildren(...nodes);
  }

  function showTable(id, rows, columns, emptyText) {
    if (rows.length) {
      $(id).replaceChildren(...rows);
      return;
    }
    const cell = element("td", emptyText, "muted");
    cell.colSpan = columns;
    $(id).replaceChildren(row([cell]));
  }

  function outcomeRow(outcome) {
    return row([
      outcome.group, outcome.outcome, outcome.status ?? "", outcome.attempts,
      `${Math.round(outcome.duration_ms)} ms`, outcome.error || "", new Date(outcome.finished_at * 1000).toLocaleTimeString(),
    ]);
  }

  function attemptRow(attempt) {
    return row([
      attempt.group, attempt.attempt, attempt.status ?? "", `${Math.round(attempt.duration_ms)} ms`,
      attempt.error || "", new Date(attempt.at * 1000).toLocaleTimeString(),
    ]);
  }

  function showAnswer(answer) {
    const box = $("detail-answer");
    if (!answer) {
      box.replaceChildren(element("p", "None recorded: a channel in async mode answers every sender 202 with the event id.", "muted"));
      return;
    }
    const bytes = decodeBase64(answer.body_b64);
    const headers = element("table", null, "pairs");
    headers.append(...answer.headers.map(([name, value]) => row([element("th", name), value])));
    box.replaceChildren(
      element("p", `HTTP ${answer.status}, from the ${answer.source}, at ${new Date(answer.at * 1000).toISOString()}`),
      headers,
      element("pre", utf8(bytes) ?? hexDump(bytes), "code"),
    );
  }

  // --- body views ---

  function decodeBase64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function utf8(bytes) {
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      return null;
    }
  }

  function headerValue(detail, name) {
    const found = detail.headers.find(([key]) => key.toLowerCase() === name);
    return found ? found[1] : "";
  }

  function prettyView(detail) {
    const text = detail.body_text;
    if (!text) return null;
    const contentType = headerValue(detail, "content-type").toLowerCase();
    if (contentType.includes("application/x-www-form-urlencoded")) return formTable(text);
    if (contentType.includes("json") || /^\s*[[{]/.test(text)) {
      try {
        // NOTE: JSON.parse rounds integers beyond 2^53 and keeps the last of duplicate keys; the Raw view is exact.
        const pretty = JSON.stringify(JSON.parse(text), null, 2);
        return element("pre", pretty, "code");
      } catch {
        return null;
      }
    }
    return null;
  }

  function formTable(text) {
    const table = element("table", null, "pairs");
    for (const [name, value] of new URLSearchParams(text)) table.append(row([element("th", name), value]));
    return table;
  }

  function rawView(detail) {
    if (detail.body_text === null) return null;
    if (detail.body_text.length > TEXT_LIMIT) {
      return element("pre", `${detail.body_text.slice(0, TEXT_LIMIT)}\n… (${detail.size} bytes in all)`, "code");
    }
    return element("pre", detail.body_text, "code");
  }

  function hexView(detail) {
    const bytes = decodeBase64(detail.raw.body_b64);
    const dump = hexDump(bytes);
    const note = bytes.length > HEX_LIMIT ? `\n… first ${HEX_LIMIT} of ${bytes.length} bytes` : "";
    return element("pre", dump + note, "code hex");
  }

  function hexDump(bytes) {
    const lines = [];
    const end = Math.min(bytes.length, HEX_LIMIT);
    for (let offset = 0; offset < end; offset += 16) {
      const chunk = Array.from(bytes.subarray(offset, Math.min(offset + 16, end)));
      const hex = chunk.map((byte) => byte.toString(16).padStart(2, "0"));
      if (hex.length > 8) hex.splice(8, 0, "");
      const ascii = chunk.map((byte) => (byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : ".")).join("");
      lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.join(" ").padEnd(48)}  ${ascii}`);
    }
    return lines.join("\n");
  }

  function showBody(detail) {
    const views = { pretty: prettyView(detail), raw: rawView(detail), hex: hexView(detail) };
    if (!views[state.view]) state.view = ["pretty", "raw", "hex"].find((name) => views[name]);
    for (const tab of document.querySelectorAll(".tabs [data-view]")) {
      tab.disabled = !views[tab.dataset.view];
      tab.setAttribute("aria-selected", String(tab.dataset.view === state.view));
    }
    const box = $("body-view");
    if (detail.size === 0) {
      box.replaceChildren(element("p", "Empty body (0 bytes).", "muted"));
      return;
    }
    box.replaceChildren(views[state.view]);
  }

  function onTab(event) {
    const view = event.target.dataset && event.target.dataset.view;
    if (!view || !state.detail) return;
    state.view = view;
    showBody(state.detail);
  }

  // --- copy as curl ---

  function isPlainText(bytes, allowNewlines) {
    const text = utf8(bytes);
    if (text === null) return false;
    for (const char of text) {
      const code = char.codePointAt(0);
      const allowed = allowNewlines && (char === "\n" || char === "\t");
      if (!allowed && (code < 0x20 || code === 0x7f || (code >= 0x80 && code < 0xa0))) return false;
    }
    return true;
  }

  // Quote bytes as one shell word: bare when only safe characters, '…' for
  // plain text, $'…' with \xHH escapes otherwise.
  function shellWord(bytes) {
    const text = utf8(bytes);
    if (text !== null && /^[A-Za-z0-9_.:\/=,+-]+$/.test(text)) return text;
    if (isPlainText(bytes, false)) return `'${text.replaceAll("'", "'\\''")}'`;
    let out = "";
    for (const byte of bytes) {
      if (byte === 0x5c) out += "\\\\";
      else if (byte === 0x27) out += "\\'";
      else if (byte >= 0x20 && byte < 0x7f) out += String.fromCharCode(byte);
      else out += `\\x${byte.toString(16).padStart(2, "0")}`;
    }
    return `$'${out}'`;
  }

  // A printf format that prints exactly these bytes, NUL included.
  function printfFormat(bytes) {
    let out = "";
    for (const byte of bytes) {
      if (byte === 0x5c) out += "\\\\";
      else if (byte === 0x25) out += "%%";
      else if (byte === 0x27) out += "'\\''";
      else if (byte >= 0x20 && byte < 0x7f) out += String.fromCharCode(byte);
      else out += `\\${byte.toString(8).padStart(3, "0")}`;
    }
    return `'${out}'`;
  }

  function concat(...parts) {
    const total = parts.reduce((sum, part) => sum + part.length, 0);
    const out = new Uint8Array(total);
    let offset = 0;
    for (const part of parts) {
      out.set(part, offset);
      offset += part.length;
    }
    return out;
  }

  // Build a curl command that sends the stored request to the channel again:
  // same method, raw path and query, headers and body bytes. curl's own
  // User-Agent, Accept, Content-Type and Expect are switched off unless the
  // sender sent them.
  function curlCommand(detail) {
    const encoder = new TextEncoder();
    const url = concat(encoder.encode(state.ingestUrl), decodeBase64(detail.raw.target_b64));
    const body = decodeBase64(detail.raw.body_b64);
    const method = shellWord(encoder.encode(detail.method));
    const parts = [`curl --globoff --path-as-is -X ${method} ${shellWord(url)}`];
    const sent = new Set();
    for (const [nameB64, valueB64] of detail.raw.headers_b64) {
      const name = decodeBase64(nameB64);
      const lowered = (utf8(name) || "").toLowerCase();
      sent.add(lowered);
      if (HOP_BY_HOP.has(lowered)) continue;
      const value = decodeBase64(valueB64);
      const separator = value.length ? ": " : ";";
      parts.push(`-H ${shellWord(concat(name, encoder.encode(separator), value))}`);
    }
    const hasBody = body.length > 0 || sent.has("content-length");
    for (const [lowered, name] of Object.entries(CURL_DEFAULTS)) {
      const added = hasBody || lowered === "user-agent" || lowered === "accept";
      if (added && !sent.has(lowered)) parts.push(`-H '${name}:'`);
    }
    if (!hasBody) return parts.join(" \\\n  ");
    if (isPlainText(body, true) && body[0] !== 0x40) {
      parts.push(`--data-binary '${utf8(body).replaceAll("'", "'\\''")}'`);
      return parts.join(" \\\n  ");
    }
    parts.push("--data-binary @-");
    return `printf ${printfFormat(body)} | ${parts.join(" \\\n  ")}`;
  }

  async function onCopyCurl() {
    const text = $("curl-text").value;
    try {
      await navigator.clipboard.writeText(text);
      setMessage("action-message", "curl command copied to the clipboard");
    } catch {
      $("curl-text").select();
      setMessage("action-message", "the browser blocked the clipboard: the command is selected below, copy it from there");
    }
  }

  // --- replay ---

  async function onReplay() {
    const id = state.selected;
    if (!id) return;
    const target = group();
    $("replay").disabled = true;
    try {
      await api("POST", `/events/${encodeURIComponent(id)}/replay?group=${encodeURIComponent(target)}`);
      setMessage("action-message", `${id} queued again for group ${target}`);
    } catch (error) {
      if (error.status === 401) return askForToken(error.message);
      setMessage("action-message", `replay failed: ${error.message}`);
    } finally {
      $("replay").disabled = false;
    }
  }

  // --- wiring ---

  function wire() {
    $("token-form").addEventListener("submit", onTokenSubmit);
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    for (const id of ["filter-state", "filter-method"]) $(id).addEventListener("change", refresh);
    let timer = null;
    for (const id of ["filter-type", "filter-text", "filter-group"]) {
      $(id).addEventListener("input", () => {
        clearTimeout(timer);
        timer = setTimeout(refresh, FILTER_DELAY_MS);
      });
    }
    $("filter-group").addEventListener("change", () => state.selected && loadDetail(state.selected));
    $("older").addEventListener("click", () => {
      state.rowLimit = Math.min(state.rowLimit + PAGE_SIZE, MAX_ROWS);
      refresh();
    });
    document.querySelector(".tabs").addEventListener("click", onTab);
    $("replay").addEventListener("click", onReplay);
    $("copy-curl").addEventListener("click", onCopyCurl);
  }

  function start() {
    $("channel-id").textContent = channel;
    wire();
    state.token = takeToken();
    if (!state.token) {
      askForToken("Paste the channel token, or open the inspector link that 'hookrelay channel create' printed.");
      return;
    }
    openChannel();
  }

  start();
})();
