// Corral's chat page: talks to the server's own Ollama API (/api/tags, /api/show, /api/chat,
// /api/pull) from the same origin and keeps conversations in this browser's localStorage.
// The DOM is built from nodes and text only (the page's CSP enforces Trusted Types), so nothing a
// model writes is ever parsed as HTML.
import { renderMarkdown } from "./markdown.js";

const STORE_KEY = "corral.chat.v1";
const API_KEY_KEY = "corral.apiKey";
const NEW_TITLE = "New chat";

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"), scrim: $("scrim"), menu: $("menu"), list: $("conversations"), newChat: $("new-chat"),
  model: $("model"), modelInfo: $("model-info"), settingsToggle: $("settings-toggle"), settings: $("settings"),
  system: $("system"), think: $("think"), thinkLabel: $("think-label"),
  messages: $("messages"), empty: $("empty"), composer: $("composer"), message: $("message"), send: $("send"), stop: $("stop"),
  pullForm: $("pull-form"), pullName: $("pull-name"), pullInsecure: $("pull-insecure"), pullButton: $("pull"), pullProgress: $("pull-progress"), pullStatus: $("pull-status"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("api-key"), keyReason: $("key-reason"), keyCancel: $("key-cancel"),
  forgetKey: $("forget-key"),
};
const NUMBER_OPTIONS = { temperature: parseFloat, num_ctx: parseInt, seed: parseInt, num_predict: parseInt };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

// ---- stored state ----------------------------------------------------------------------------

function loadState() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY));
    if (saved && Array.isArray(saved.conversations)) return saved;
  } catch {
    // A damaged entry is replaced rather than breaking the page.
  }
  return { conversations: [], current: null, lastModel: "" };
}

const state = loadState();
let saveTimer = null;

function save() {
  clearTimeout(saveTimer);
  saveTimer = null;
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(state));
  } catch (err) {
    console.warn("could not keep the conversations in localStorage:", err);
  }
}

function saveSoon() {
  if (saveTimer === null) saveTimer = setTimeout(save, 500);
}

function current() {
  let conv = state.conversations.find((c) => c.id === state.current);
  if (!conv) {
    conv = { id: newId(), title: NEW_TITLE, model: state.lastModel || "", system: "", options: {}, think: true, messages: [], updated: Date.now() };
    state.conversations.push(conv);
    state.current = conv.id;
  }
  return conv;
}

// ---- the API ---------------------------------------------------------------------------------

let apiKey = localStorage.getItem(API_KEY_KEY) || "";
let keyPrompt = null;

/** fetch() on our own API; a 401 asks for a key (once for all waiting calls) and tries again. */
async function api(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    if (init.body) headers.set("Content-Type", "application/json");
    if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
    const sentKey = apiKey;
    const res = await fetch(path, { ...init, headers });
    if (res.status !== 401) return res;
    if (apiKey === sentKey) {
      const key = await askKey(sentKey ? "That key was refused; try another." : "This server asks for an API key. It is kept in this browser only.");
      if (!key) throw new Error("this server needs an API key");
      setKey(key);
    }
  }
}

function setKey(key) {
  apiKey = key;
  if (key) localStorage.setItem(API_KEY_KEY, key);
  else localStorage.removeItem(API_KEY_KEY);
  ui.forgetKey.hidden = !key;
}

function askKey(reason) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve) => {
    ui.keyReason.textContent = reason;
    ui.keyInput.value = "";
    const finish = (key) => {
      ui.keyForm.removeEventListener("submit", onSubmit);
      ui.keyCancel.removeEventListener("click", onCancel);
      ui.keyDialog.removeEventListener("cancel", onCancel);
      if (ui.keyDialog.open) ui.keyDialog.close();
      keyPrompt = null;
      resolve(key);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      finish(ui.keyInput.value.trim() || null);
    };
    const onCancel = (event) => {
      event.preventDefault();
      finish(null);
    };
    ui.keyForm.addEventListener("submit", onSubmit);
    ui.keyCancel.addEventListener("click", onCancel);
    ui.keyDialog.addEventListener("cancel", onCancel);
    ui.keyDialog.showModal();
  });
  return keyPrompt;
}

async function errorOf(res) {
  try {
    const body = await res.json();
    return body.error?.message ?? body.error ?? `${res.status} ${res.statusText}`;
  } catch {
    return `${res.status} ${res.statusText}`;
  }
}

/** The JSON objects of an NDJSON response, as they arrive. */
async function* ndjson(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 1);
      if (line) yield JSON.parse(line);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

// ---- models ----------------------------------------------------------------------------------

let models = [];

function formatSize(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

async function capabilitiesOf(name) {
  try {
    const res = await api("/api/show", { method: "POST", body: JSON.stringify({ model: name }) });
    return res.ok ? (await res.json()).capabilities || [] : [];
  } catch {
    return [];
  }
}

async function refreshModels() {
  const res = await api("/api/tags");
  if (!res.ok) throw new Error(await errorOf(res));
  const listed = (await res.json()).models || [];
  const capabilities = await Promise.all(listed.map((m) => capabilitiesOf(m.name)));
  models = listed.map((m, i) => ({ ...m, capabilities: capabilities[i] }));
  renderModelPicker();
}

function modelOf(name) {
  return models.find((m) => m.name === name);
}

function renderModelPicker() {
  const conv = current();
  if (!conv.model || (!modelOf(conv.model) && conv.messages.length === 0)) {
    conv.model = modelOf(state.lastModel) ? state.lastModel : models[0]?.name || "";
  }
  const options = models.map((m) => {
    const option = el("option", "", `${m.name} — ${formatSize(m.size)}${m.capabilities.length ? " · " + m.capabilities.join(", ") : ""}`);
    option.value = m.name;
    return option;
  });
  if (conv.model && !modelOf(conv.model)) {
    const missing = el("option", "", `${conv.model} (not installed)`);
    missing.value = conv.model;
    options.push(missing);
  }
  if (options.length === 0) {
    const none = el("option", "", "No models yet: pull one");
    none.value = "";
    options.push(none);
  }
  ui.model.replaceChildren(...options);
  ui.model.value = conv.model;
  showModelInfo();
}

function showModelInfo() {
  const m = modelOf(ui.model.value);
  const details = m?.details || {};
  ui.modelInfo.textContent = m
    ? [formatSize(m.size), details.parameter_size, details.quantization_level, m.capabilities.join(", ")].filter(Boolean).join(" · ")
    : "";
  ui.thinkLabel.hidden = !m?.capabilities.includes("thinking");
}

// ---- drawing the conversation ----------------------------------------------------------------

function statsLine(msg) {
  const s = msg.stats || {};
  const parts = [];
  if (msg.stopped) parts.push("Stopped");
  if (s.eval_count && s.eval_duration) parts.push(`${(s.eval_count / (s.eval_duration / 1e9)).toFixed(1)} tokens/s`);
  if (s.eval_count) parts.push(`${s.eval_count} tokens`);
  if (s.ttft_ms != null) parts.push(`first token ${(s.ttft_ms / 1000).toFixed(2)} s`);
  if (s.done_reason === "length") parts.push("cut at the token limit");
  return parts.join(" · ");
}

function paintAssistant(article, msg, streaming) {
  const body = article.querySelector(".body");
  const nodes = [];
  if (msg.thinking) {
    const details = el("details", "thinking");
    details.open = Boolean(article.querySelector("details.thinking")?.open);
    const summary = el("summary", "", streaming && !msg.content ? "Thinking…" : "Thinking");
    const thought = el("div", "md");
    thought.append(...renderMarkdown(msg.thinking));
    details.append(summary, thought);
    nodes.push(details);
  }
  const content = el("div", "content md");
  content.append(...renderMarkdown(msg.content));
  if (streaming) content.classList.add("cursor");
  nodes.push(content);
  if (msg.error) {
    const error = el("p", "error", msg.error);
    error.setAttribute("role", "alert");
    nodes.push(error);
  }
  const stats = statsLine(msg);
  if (stats) nodes.push(el("p", "stats", stats));
  body.replaceChildren(...nodes);
}

function messageElement(msg, streaming = false) {
  const article = el("article", "msg");
  article.dataset.role = msg.role;
  article.dataset.id = msg.id;
  article.append(el("span", "who", msg.role === "user" ? "You" : msg.model || "Model"));
  const body = el("div", "body");
  article.append(body);
  if (msg.role === "user") body.textContent = msg.content;
  else paintAssistant(article, msg, streaming);
  return article;
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function renderConversation() {
  const conv = current();
  const streamingId = running?.reply.id;
  ui.messages.replaceChildren(ui.empty, ...conv.messages.map((msg) => messageElement(msg, msg.id === streamingId)));
  ui.empty.hidden = conv.messages.length > 0;
  ui.messages.scrollTop = ui.messages.scrollHeight;
  ui.system.value = conv.system || "";
  for (const name of Object.keys(NUMBER_OPTIONS)) $(name).value = conv.options?.[name] ?? "";
  ui.think.checked = conv.think !== false;
  if (models.length) renderModelPicker();
  renderList();
}

let paintQueued = new Set();

function paintSoon(msg) {
  // One repaint per frame however fast the tokens come.
  if (paintQueued.size === 0) requestAnimationFrame(flushPaint);
  paintQueued.add(msg);
}

function flushPaint() {
  const stick = nearBottom();
  for (const msg of paintQueued) {
    const article = ui.messages.querySelector(`article[data-id="${msg.id}"]`);
    if (article) paintAssistant(article, msg, running?.reply === msg);
  }
  paintQueued = new Set();
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ---- the conversation list -------------------------------------------------------------------

function renderList() {
  // A conversation is listed once it has a message: "New chat" alone is not worth an entry.
  const sorted = state.conversations.filter((c) => c.messages.length > 0).sort((a, b) => b.updated - a.updated);
  ui.list.replaceChildren(...sorted.map(listItem));
}

function listItem(conv) {
  const li = el("li");
  if (conv.id === state.current) li.setAttribute("aria-current", "true");
  const open = el("button", "open", conv.title);
  open.type = "button";
  open.title = conv.title;
  open.addEventListener("click", () => selectConversation(conv.id));
  const rename = el("button", "act", "\u270E");
  rename.type = "button";
  rename.setAttribute("aria-label", `Rename ${conv.title}`);
  rename.title = "Rename";
  rename.addEventListener("click", () => startRename(li, conv));
  const remove = el("button", "act", "\u2715");
  remove.type = "button";
  remove.setAttribute("aria-label", `Delete ${conv.title}`);
  remove.title = "Delete";
  remove.addEventListener("click", () => {
    // Two clicks: the first one arms the button, so a slip does not lose a conversation.
    if (remove.dataset.armed) return deleteConversation(conv.id);
    remove.dataset.armed = "1";
    remove.textContent = "Delete?";
    remove.setAttribute("aria-label", `Confirm delete ${conv.title}`);
  });
  remove.addEventListener("blur", () => {
    delete remove.dataset.armed;
    remove.textContent = "\u2715";
    remove.setAttribute("aria-label", `Delete ${conv.title}`);
  });
  li.append(open, rename, remove);
  return li;
}

function startRename(li, conv) {
  const input = el("input");
  input.type = "text";
  input.value = conv.title;
  input.setAttribute("aria-label", "Conversation name");
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (keep && title) {
      conv.title = title;
      save();
    }
    renderList();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

function selectConversation(id) {
  state.current = id;
  save();
  renderConversation();
  closeDrawer();
}

function deleteConversation(id) {
  if (running?.conv.id === id) running.controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.current === id) state.current = [...state.conversations].sort((a, b) => b.updated - a.updated)[0]?.id ?? null;
  save();
  renderConversation();
}

function newConversation() {
  const conv = current();
  if (conv.messages.length > 0) {
    state.current = null;
    const fresh = current();
    fresh.model = conv.model;
  }
  save();
  renderConversation();
  closeDrawer();
  ui.message.focus();
}

// ---- sending and streaming -------------------------------------------------------------------

let running = null;

function setRunning(value) {
  running = value;
  ui.send.disabled = Boolean(value);
  ui.stop.disabled = !value;
}

function optionsOf(conv) {
  const options = {};
  for (const [name, value] of Object.entries(conv.options || {})) {
    if (value !== "" && value != null && !Number.isNaN(value)) options[name] = value;
  }
  return options;
}

function historyOf(conv, reply) {
  const messages = conv.system ? [{ role: "system", content: conv.system }] : [];
  for (const msg of conv.messages) {
    if (msg === reply) break;
    if (msg.role === "assistant" && !msg.content) continue; // an answer that failed or was stopped at once
    messages.push({ role: msg.role, content: msg.content });
  }
  return messages;
}

async function send() {
  const text = ui.message.value;
  if (!text.trim() || running) return;
  const conv = current();
  if (!ui.model.value) {
    ui.modelInfo.textContent = "Pick a model first (or pull one).";
    return;
  }
  conv.model = ui.model.value;
  state.lastModel = conv.model;
  if (conv.title === NEW_TITLE) conv.title = text.trim().replace(/\s+/g, " ").slice(0, 48);
  const reply = { id: newId(), role: "assistant", content: "", thinking: "", model: conv.model };
  conv.messages.push({ id: newId(), role: "user", content: text }, reply);
  conv.updated = Date.now();
  ui.message.value = "";
  fitComposer();
  setRunning({ controller: new AbortController(), conv, reply });
  save();
  renderConversation();
  await streamReply(conv, reply);
}

async function streamReply(conv, reply) {
  const { controller } = running;
  const request = { model: conv.model, messages: historyOf(conv, reply), stream: true, options: optionsOf(conv) };
  if (modelOf(conv.model)?.capabilities.includes("thinking")) request.think = conv.think !== false;
  const started = performance.now();
  let ttft = null;
  try {
    const res = await api("/api/chat", { method: "POST", body: JSON.stringify(request), signal: controller.signal });
    if (!res.ok) throw new Error(await errorOf(res));
    for await (const chunk of ndjson(res)) {
      if (chunk.error) throw new Error(chunk.error);
      const m = chunk.message || {};
      if (ttft === null && (m.content || m.thinking)) ttft = performance.now() - started;
      reply.content += m.content || "";
      reply.thinking += m.thinking || "";
      if (chunk.done) {
        const { eval_count, eval_duration, prompt_eval_count, prompt_eval_duration, done_reason } = chunk;
        reply.stats = { eval_count, eval_duration, prompt_eval_count, prompt_eval_duration, done_reason, ttft_ms: ttft };
      }
      paintSoon(reply);
      saveSoon();
    }
  } catch (err) {
    if (controller.signal.aborted) {
      reply.stopped = true;
      reply.stats = { ttft_ms: ttft };
    } else {
      reply.error = String(err.message || err);
    }
  } finally {
    conv.updated = Date.now();
    setRunning(null);
    save();
    paintSoon(reply);
  }
}

function stop() {
  running?.controller.abort();
}

// ---- pulling a model -------------------------------------------------------------------------

async function pull(name) {
  ui.pullButton.disabled = true;
  ui.pullStatus.classList.remove("error");
  ui.pullStatus.textContent = `Pulling ${name}…`;
  ui.pullProgress.hidden = false;
  ui.pullProgress.removeAttribute("value");
  const layers = new Map();
  try {
    const res = await api("/api/pull", { method: "POST", body: JSON.stringify({ model: name, stream: true, insecure: ui.pullInsecure.checked }) });
    if (!res.ok) throw new Error(await errorOf(res));
    let succeeded = false;
    let total = 0;
    for await (const p of ndjson(res)) {
      if (p.error) throw new Error(p.error);
      if (p.digest && p.total) layers.set(p.digest, { total: p.total, completed: p.completed || 0 });
      total = [...layers.values()].reduce((sum, l) => sum + l.total, 0);
      const completed = [...layers.values()].reduce((sum, l) => sum + l.completed, 0);
      if (total > 0) {
        ui.pullProgress.max = total;
        ui.pullProgress.value = completed;
        ui.pullStatus.textContent = `${p.status}: ${formatSize(completed)} of ${formatSize(total)} (${Math.floor((100 * completed) / total)}%)`;
      } else {
        ui.pullStatus.textContent = p.status;
      }
      if (p.status === "success") succeeded = true;
    }
    if (!succeeded) throw new Error("the pull ended before it succeeded");
    if (total === 0) {
      // Nothing was downloaded (a bundled model, or every layer was here already).
      ui.pullProgress.max = 1;
      ui.pullProgress.value = 1;
    }
    ui.pullStatus.textContent = `Pulled ${name}`;
    ui.pullName.value = "";
    await refreshModels();
    const pulled = modelOf(name) || modelOf(`${name}:latest`);
    const conv = current();
    if (pulled && conv.messages.length === 0) {
      conv.model = pulled.name;
      state.lastModel = pulled.name;
      save();
      renderModelPicker();
    }
  } catch (err) {
    ui.pullProgress.hidden = true;
    ui.pullStatus.classList.add("error");
    ui.pullStatus.textContent = `Pull failed: ${err.message || err}`;
  } finally {
    ui.pullButton.disabled = false;
  }
}

// ---- small helpers ---------------------------------------------------------------------------

function fitComposer() {
  ui.message.style.height = "auto";
  ui.message.style.height = `${Math.min(ui.message.scrollHeight + 2, 192)}px`;
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  // Plain http on another host is not a secure context: fall back to a selection.
  const area = el("textarea");
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

function openDrawer() {
  ui.sidebar.classList.add("open");
  ui.scrim.hidden = false;
  ui.menu.setAttribute("aria-expanded", "true");
}

function closeDrawer() {
  ui.sidebar.classList.remove("open");
  ui.scrim.hidden = true;
  ui.menu.setAttribute("aria-expanded", "false");
}

// ---- wiring ----------------------------------------------------------------------------------

function bind() {
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  ui.message.addEventListener("input", fitComposer);
  ui.stop.addEventListener("click", stop);
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || ui.keyDialog.open) return;
    if (running) stop();
    closeDrawer();
  });
  ui.newChat.addEventListener("click", newConversation);
  ui.model.addEventListener("change", () => {
    const conv = current();
    conv.model = ui.model.value;
    state.lastModel = conv.model;
    save();
    showModelInfo();
  });
  ui.settingsToggle.addEventListener("click", () => {
    ui.settings.hidden = !ui.settings.hidden;
    ui.settingsToggle.setAttribute("aria-expanded", String(!ui.settings.hidden));
  });
  ui.system.addEventListener("input", () => {
    current().system = ui.system.value;
    saveSoon();
  });
  for (const [name, parse] of Object.entries(NUMBER_OPTIONS)) {
    $(name).addEventListener("input", (event) => {
      const conv = current();
      conv.options = conv.options || {};
      const value = parse(event.target.value);
      if (Number.isNaN(value)) delete conv.options[name];
      else conv.options[name] = value;
      saveSoon();
    });
  }
  ui.think.addEventListener("change", () => {
    current().think = ui.think.checked;
    saveSoon();
  });
  ui.messages.addEventListener("click", async (event) => {
    const button = event.target.closest("button.copy");
    if (!button) return;
    try {
      await copyText(button.closest(".code-block").querySelector("code").textContent);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });
  ui.pullForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = ui.pullName.value.trim();
    if (name) pull(name);
  });
  ui.forgetKey.addEventListener("click", () => setKey(""));
  ui.menu.addEventListener("click", () => (ui.sidebar.classList.contains("open") ? closeDrawer() : openDrawer()));
  ui.scrim.addEventListener("click", closeDrawer);
  window.addEventListener("storage", (event) => {
    // Another tab changed the conversations: show them unless this tab is streaming.
    if (event.key === STORE_KEY && !running) {
      Object.assign(state, loadState());
      renderConversation();
    }
  });
}

async function start() {
  bind();
  // At phone width the keyboard hint would not fit in the box.
  if (window.matchMedia("(max-width: 720px)").matches) ui.message.placeholder = "Message";
  ui.forgetKey.hidden = !apiKey;
  current();
  renderConversation();
  try {
    await refreshModels();
  } catch (err) {
    ui.modelInfo.textContent = `Could not list the models: ${err.message || err}`;
  }
  document.body.dataset.ready = "true";
}

start();
