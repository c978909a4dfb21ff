// llmmesh web chat: plain JavaScript, talking to the REST API of this origin (Envoy
// transcodes it to gRPC). Streams (chat answers, ingestion progress) are Server-Sent
// Events read with fetch() and a ReadableStream: EventSource cannot send the
// Authorization header. Tokens live in sessionStorage (this tab only) and the access
// token is refreshed a minute before it expires.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SESSION_KEY = "llmmesh.session";
  const CONVERSATION_KEY = "llmmesh.conversation";
  const REFRESH_MARGIN_MS = 60_000;

  // gRPC code -> HTTP status, as the edge maps them (for errors inside a stream).
  const HTTP_OF_CODE = { 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401 };
  const STAGE_PERCENT = { INGEST_STAGE_RECEIVED: 5, INGEST_STAGE_PARSED: 10,
    INGEST_STAGE_CHUNKED: 15, INGEST_STAGE_STORED: 95, INGEST_STAGE_DONE: 100 };
  const STAGE_TEXT = { INGEST_STAGE_RECEIVED: "Received", INGEST_STAGE_PARSED: "Text extracted",
    INGEST_STAGE_CHUNKED: "Split into chunks", INGEST_STAGE_EMBEDDED: "Embedding",
    INGEST_STAGE_STORED: "Stored", INGEST_STAGE_DONE: "Done" };

  let session = null;        // {accessToken, accessExpires, refreshToken, username}
  let refreshTimer = 0;
  let refreshing = null;     // the refresh in flight (one at a time: tokens rotate)
  let conversation = "";     // "conversations/…" or "" for a new one
  let chatAbort = null;
  let chatTurn = "";         // the running answer's turn (conversations/…/turns/…)
  // Pauses before the tries to resume a dropped answer stream (docs/streams.md).
  const RESUME_DELAYS_MS = [300, 1000, 3000];
  const pause = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  // --- errors ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body, headers) {
      const details = (body && Array.isArray(body.details)) ? body.details : [];
      const find = (type) => details.find((d) => String(d["@type"] || "").endsWith(type));
      const info = find("google.rpc.ErrorInfo");
      const retry = find("google.rpc.RetryInfo");
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.code;
      this.reason = info ? info.reason : "";
      this.metadata = (info && info.metadata) || {};
      this.quota = find("google.rpc.QuotaFailure");
      this.badRequest = find("google.rpc.BadRequest");
      let seconds = retry ? parseFloat(String(retry.retryDelay || "").replace("s", "")) : NaN;
      const reset = headers ? parseFloat(headers.get("x-ratelimit-reset") || "") : NaN;
      if (!Number.isFinite(seconds) && Number.isFinite(reset)) seconds = reset;
      this.retryAfter = Number.isFinite(seconds) ? Math.max(seconds, 0) : null;
    }
  }

  class CutStream extends Error {}

  function statusOf(err) {
    return err instanceof ApiError ? err.status : 0;
  }

  function isQuotaExhausted(err) {
    return err instanceof ApiError && (err.reason === "TOKEN_QUOTA_EXHAUSTED" ||
      (err.status === 429 && !!err.quota));
  }

  function waitText(seconds) {
    if (seconds === null) return "in a moment";
    const s = Math.max(1, Math.ceil(seconds));
    return s < 90 ? `in ${s} s` : `in ${Math.ceil(s / 60)} min`;
  }

  // A clear sentence for every error a call can end with.
  function describe(err, action) {
    if (err instanceof CutStream) {
      return `${action}: the stream was cut before it finished (the connection or the ` +
        "service was lost). Nothing from it was kept — please try again.";
    }
    if (err && err.name === "AbortError") return `${action}: stopped. Nothing was kept.`;
    if (!(err instanceof ApiError)) {
      return `${action}: the server cannot be reached (${err && err.message ? err.message : "network error"}). ` +
        "Check your connection and try again.";
    }
    const detail = err.message ? ` (${err.message})` : "";
    const violations = err.badRequest && Array.isArray(err.badRequest.fieldViolations)
      ? err.badRequest.fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; ") : "";
    if (isQuotaExhausted(err)) {
      return `${action}: this month's token quota is used up. It renews at the start of ` +
        "next month; ask an administrator for a higher limit if you need more now.";
    }
    switch (err.status) {
      case 400: return `${action}: the request was refused${violations ? ` — ${violations}` : detail}.`;
      case 401:
        if (err.reason === "INVALID_CREDENTIALS") return `${action}: wrong username or password.`;
        return `${action}: your session has ended. Please sign in again.`;
      case 403: return `${action}: you are not allowed to do that${detail}.`;
      case 404: return `${action}: not found — it may have been deleted or have expired${detail}.`;
      case 409:
        if (err.reason === "USERNAME_TAKEN") return `${action}: that username is taken.`;
        if (err.reason === "EMAIL_TAKEN") return `${action}: that email is already registered.`;
        return `${action}: it conflicts with what is there${detail}.`;
      case 413: return `${action}: the file is too large${detail}.`;
      case 429: return `${action}: too many requests. Try again ${waitText(err.retryAfter)}.`;
      case 499: return `${action}: cancelled.`;
      case 501: return `${action}: not supported by this server${detail}.`;
      case 503: return `${action}: the service is unavailable right now. Try again ${waitText(err.retryAfter)}${detail}.`;
      case 504: return `${action}: the server took too long to answer. Try again.`;
      default:
        if (err.status >= 500) return `${action}: the server failed${detail}. Try again later.`;
        return `${action}: failed with HTTP ${err.status}${detail}.`;
    }
  }

  function notify(text, kind = "error") {
    $("notice-text").textContent = text;
    $("notice").classList.toggle("info", kind === "info");
    $("notice").setAttribute("role", kind === "info" ? "status" : "alert");
    $("notice").hidden = false;
  }

  function clearNotice() {
    $("notice").hidden = true;
    $("notice-text").textContent = "";
  }

  // Show `err`; a 429 or 503 with a retry time disables `button` until then.
  function report(err, action, button) {
    if (statusOf(err) === 401 && action !== "Sign in" && action !== "Create account") {
      signOut(describe(err, action));
      return;
    }
    notify(describe(err, action));
    if (button && err instanceof ApiError && (err.status === 429 || err.status === 503) &&
        err.retryAfter !== null && !isQuotaExhausted(err)) {
      // Not before the server said to retry (at most two minutes).
      const wait = Math.min(err.retryAfter, 120) * 1000;
      button.dataset.blockedUntil = String(Date.now() + wait);
      button.disabled = true;
      setTimeout(() => { release(button); }, wait + 50);
    }
  }

  // Enable `button` again unless a retry time still holds it.
  function release(button) {
    button.disabled = Number(button.dataset.blockedUntil || 0) > Date.now();
  }

  // --- HTTP --------------------------------------------------------------------------

  async function errorFrom(response) {
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return new ApiError(response.status, body, response.headers);
  }

  async function request(method, path, body, { auth = true, signal } = {}) {
    const send = async () => {
      const headers = {};
      if (body !== undefined) headers["content-type"] = "application/json";
      if (auth) headers.authorization = `Bearer ${await accessToken()}`;
      return fetch(path, { method, headers, signal,
        body: body === undefined ? undefined : JSON.stringify(body) });
    };
    let response = await send();
    if (response.status === 401 && auth && session) {
      // The token may have expired in between (a suspended laptop): refresh once.
      await refreshTokens();
      response = await send();
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async function call(method, path, body, options) {
    const response = await request(method, path, body, options);
    const text = await response.text();
    return text ? JSON.parse(text) : {};
  }

  // The events of a Server-Sent Events response, parsed as JSON, to `onEvent`.
  // Resolves when the stream ends; `isComplete()` says whether it ended properly.
  async function readEvents(response, onEvent) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const flush = (block) => {
      const data = block.split(/\r?\n/).filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (data) onEvent(JSON.parse(data));
    };
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (err && err.name === "AbortError") throw err;
        throw new CutStream(String(err));
      }
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        flush(block);
      }
    }
    buffer += decoder.decode();
    if (buffer.trim()) flush(buffer);
  }

  // --- session and tokens ------------------------------------------------------------

  function saveSession(tokens, username) {
    const expires = Date.parse(tokens.accessTokenExpireTime || "");
    session = {
      accessToken: tokens.accessToken, refreshToken: tokens.refreshToken,
      accessExpires: Number.isFinite(expires) ? expires : Date.now() + 5 * 60_000,
      username: username || (session && session.username) || "",
    };
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    scheduleRefresh();
  }

  function scheduleRefresh() {
    clearTimeout(refreshTimer);
    if (!session) return;
    const lifetime = session.accessExpires - Date.now();
    // A minute early, or at 80 % of a short lifetime.
    const delay = Math.max(1000, Math.min(lifetime - REFRESH_MARGIN_MS, lifetime * 0.8));
    refreshTimer = setTimeout(() => {
      refreshTokens().catch((err) => report(err, "Keeping you signed in"));
    }, delay);
  }

  function refreshTokens() {
    if (!session) return Promise.reject(new ApiError(401, { message: "not signed in" }));
    if (!refreshing) {
      refreshing = (async () => {
        try {
          const answer = await call("POST", "/v1/auth:refresh",
            { refreshToken: session.refreshToken }, { auth: false });
          saveSession(answer.tokens);
        } finally {
          refreshing = null;
        }
      })();
    }
    return refreshing;
  }

  async function accessToken() {
    if (!session) throw new ApiError(401, { message: "not signed in" });
    if (session.accessExpires - Date.now() < REFRESH_MARGIN_MS / 2) await refreshTokens();
    return session.accessToken;
  }

  function signOut(message) {
    const ending = session;
    session = null;
    clearTimeout(refreshTimer);
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(CONVERSATION_KEY);
    if (ending && !message) {
      call("POST", "/v1/auth:logout", { refreshToken: ending.refreshToken }, { auth: false })
        .catch(() => {});
    }
    if (chatAbort) chatAbort.abort();
    conversation = "";
    $("messages").replaceChildren();
    $("conversations").replaceChildren();
    $("documents").replaceChildren();
    showSignedIn(false);
    if (message) notify(message);
  }

  function showSignedIn(signedIn) {
    $("auth").hidden = signedIn;
    $("app").hidden = !signedIn;
    $("account").hidden = !signedIn;
    $("who").textContent = signedIn && session ? `Signed in as ${session.username}` : "";
  }

  async function enter() {
    showSignedIn(true);
    clearNotice();
    const remembered = sessionStorage.getItem(CONVERSATION_KEY) || "";
    await Promise.all([loadConversations(), loadDocuments(), loadUsage()]);
    if (remembered) await openConversation(remembered, { quiet: true });
    else newConversation();
    $("message").focus();
  }

  async function signIn(username, password) {
    const answer = await call("POST", "/v1/auth:login", { username, password }, { auth: false });
    saveSession(answer.tokens, (answer.user && answer.user.username) || username);
    await enter();
  }

  // --- usage, conversations, documents -----------------------------------------------

  async function loadUsage() {
    try {
      const usage = await call("GET", "/v1/users/me/usages/current");
      const used = Number(usage.tokensUsed || 0) + Number(usage.tokensReserved || 0);
      const limit = Number(usage.tokenLimit || 0);
      $("usage-text").textContent = limit
        ? `Tokens this month: ${used.toLocaleString()} of ${limit.toLocaleString()}`
        : `Tokens this month: ${used.toLocaleString()}`;
      $("usage-meter").max = Math.max(limit, 1);
      $("usage-meter").value = Math.min(used, Math.max(limit, 1));
    } catch (err) {
      report(err, "Loading your token usage");
    }
  }

  function conversationId(name) {
    return name.replace(/^conversations\//, "");
  }

  async function loadConversations() {
    try {
      const answer = await call("GET", "/v1/conversations?pageSize=50");
      const items = answer.conversations || [];
      const list = $("conversations");
      list.replaceChildren(...items.map((item) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.conversation = item.name;
        button.textContent = item.title || "Untitled conversation";
        button.title = `${item.title || "Untitled"} — ${item.messageCount || 0} messages`;
        if (item.name === conversation) button.setAttribute("aria-current", "true");
        button.addEventListener("click", () => openConversation(item.name));
        li.append(button);
        return li;
      }));
      $("conversations-empty").hidden = items.length > 0;
    } catch (err) {
      report(err, "Loading your conversations");
    }
  }

  function markCurrent() {
    for (const button of $("conversations").querySelectorAll("button")) {
      if (button.dataset.conversation === conversation) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  function newConversation() {
    if (chatAbort) chatAbort.abort();
    conversation = "";
    sessionStorage.removeItem(CONVERSATION_KEY);
    $("chat-heading").textContent = "New conversation";
    $("messages").replaceChildren();
    markCurrent();
  }

  async function openConversation(name, { quiet = false } = {}) {
    if (chatAbort) chatAbort.abort();
    try {
      const id = encodeURIComponent(conversationId(name));
      const [meta, answer] = await Promise.all([
        call("GET", `/v1/conversations/${id}`),
        call("GET", `/v1/conversations/${id}/messages?pageSize=200`),
      ]);
      conversation = name;
      sessionStorage.setItem(CONVERSATION_KEY, name);
      $("chat-heading").textContent = meta.title || "Conversation";
      $("messages").replaceChildren();
      for (const message of answer.messages || []) {
        const bubble = addMessage(message.role === "ROLE_USER" ? "user" : "assistant",
          message.content || "");
        if (message.sources && message.sources.length) showSources(bubble, message.sources);
      }
      markCurrent();
      scrollDown();
    } catch (err) {
      if (quiet && statusOf(err) === 404) { newConversation(); return; }
      report(err, "Opening the conversation");
    }
  }

  async function loadDocuments() {
    try {
      const answer = await call("GET", "/v1/documents?pageSize=50");
      $("documents").replaceChildren(...(answer.documents || []).map((doc) => {
        const li = document.createElement("li");
        li.className = "doc";
        li.textContent = `${doc.filename || doc.name} — ${doc.chunkCount || 0} chunks`;
        return li;
      }));
    } catch (err) {
      report(err, "Loading your documents");
    }
  }

  // --- upload with progress ----------------------------------------------------------

  function setProgress(percent, text) {
    const value = Math.max(0, Math.min(100, Math.round(percent)));
    $("upload-progress").value = value;
    $("upload-percent").textContent = `${value} %`;
    $("upload-label").textContent = text;
  }

  function base64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  // Uploads are imported as long-running operations (ImportDocument): the work goes on
  // on the server whatever happens to this page; the progress stream follows it.
  async function ingest(file) {
    setProgress(0, `${file.name}: sending`);
    const content = base64(new Uint8Array(await file.arrayBuffer()));
    const operation = await call("POST", "/v1/documents:import",
      { source: { filename: file.name }, content });
    const response = await request("POST", "/v1/documents:ingest",
      { operation: operation.name });
    let finished = null;
    await readEvents(response, (event) => {
      if (event.error || event.stage === "INGEST_STAGE_FAILED") {
        const status = event.error || {};
        finished = { error: new ApiError(HTTP_OF_CODE[status.code] || 500, status) };
        return;
      }
      const stage = event.stage || "";
      let percent = STAGE_PERCENT[stage];
      let text = STAGE_TEXT[stage] || stage;
      if (stage === "INGEST_STAGE_EMBEDDED" || (stage === "INGEST_STAGE_CHUNKED" && event.totalChunks)) {
        const total = event.totalChunks || 0;
        const done = event.embeddedChunks || 0;
        if (stage === "INGEST_STAGE_EMBEDDED") percent = total ? 15 + 80 * done / total : 50;
        text = `${STAGE_TEXT[stage]}: ${done} of ${total} chunks`;
      }
      if (stage === "INGEST_STAGE_DONE") {
        const doc = event.document || {};
        text = doc.deduplicated
          ? `${file.name}: already there, nothing new to add`
          : `${file.name}: ready — ${doc.chunkCount || 0} chunks`;
        finished = { document: doc };
      } else {
        text = `${file.name}: ${text}`;
      }
      if (percent !== undefined) setProgress(percent, text);
    });
    if (!finished) {
      throw new CutStream(`the progress stream broke; ${operation.name} goes on on the server`);
    }
    if (finished.error) throw finished.error;
    return finished.document;
  }

  async function upload(event) {
    event.preventDefault();
    const files = Array.from($("upload-file").files || []);
    if (!files.length) {
      notify("Choose a file to upload first.");
      $("upload-file").focus();
      return;
    }
    clearNotice();
    $("upload").disabled = true;
    try {
      for (const file of files) {
        try {
          await ingest(file);
        } catch (err) {
          setProgress(0, `${file.name}: failed`);
          report(err, `Uploading ${file.name}`, $("upload"));
          return;
        }
      }
      $("upload-file").value = "";
      await loadDocuments();
    } finally {
      release($("upload"));
    }
  }

  // --- chat --------------------------------------------------------------------------

  function addMessage(role, text) {
    const li = document.createElement("li");
    li.className = `msg ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("p");
    body.className = "text";
    body.textContent = text;
    li.append(who, body);
    $("messages").append(li);
    return li;
  }

  function showSources(bubble, sources) {
    let list = bubble.querySelector(".sources");
    if (!list) {
      const heading = document.createElement("span");
      heading.className = "who";
      heading.textContent = "Sources";
      list = document.createElement("ol");
      list.className = "sources";
      list.setAttribute("aria-label", "Sources");
      bubble.append(heading, list);
    }
    list.replaceChildren(...sources.map((source) => {
      const li = document.createElement("li");
      const title = document.createElement("strong");
      title.textContent = `${source.filename || source.document} (part ${(source.chunkIndex || 0) + 1}` +
        `${source.score !== undefined ? `, score ${Number(source.score).toFixed(2)}` : ""})`;
      li.append(title);
      if (source.snippet) {
        const snippet = document.createElement("span");
        snippet.className = "snippet";
        snippet.textContent = source.snippet;
        li.append(snippet);
      }
      return li;
    }));
  }

  function scrollDown() {
    const log = $("messages");
    log.scrollTop = log.scrollHeight;
  }

  async function send(event) {
    if (event) event.preventDefault();
    const text = $("message").value.trim();
    if (!text || chatAbort || $("send").disabled) return;
    clearNotice();
    $("message").value = "";
    addMessage("user", text);
    const bubble = addMessage("assistant", "");
    const answer = bubble.querySelector(".text");
    bubble.setAttribute("aria-busy", "true");
    scrollDown();
    const controller = new AbortController();
    chatAbort = controller;
    $("send").disabled = true;
    $("stop").hidden = false;
    const path = conversation
      ? `/v1/conversations/${encodeURIComponent(conversationId(conversation))}:streamChat`
      : "/v1/conversations:streamChat";
    let ended = null;
    let last = 0;  // the last event's sequence: a dropped stream resumes after it
    chatTurn = "";
    try {
      let response = await request("POST", path,
        { message: text, options: { useRag: $("use-rag").checked } },
        { signal: controller.signal });
      const onEvent = (item) => {
        const sequence = Number(item.sequence || 0);
        if (sequence && sequence <= last) return;  // already shown
        if (sequence) last = sequence;
        if (item.start) {
          if (chatAbort === controller) chatTurn = item.start.turn || "";
          if (item.start.conversation && item.start.conversation !== conversation) {
            conversation = item.start.conversation;
            sessionStorage.setItem(CONVERSATION_KEY, conversation);
            if ($("chat-heading").textContent === "New conversation") {
              $("chat-heading").textContent = text.slice(0, 80);
            }
          }
        } else if (item.delta) {
          answer.textContent += item.delta.text || "";
          scrollDown();
        } else if (item.sources) {
          showSources(bubble, item.sources.sources || []);
          scrollDown();
        } else if (item.done) {
          ended = { done: item.done };
        } else if (item.error) {
          ended = { error: new ApiError(HTTP_OF_CODE[item.error.code] || 500, item.error) };
        }
      };
      const turn = () => (chatAbort === controller ? chatTurn : "");
      for (let attempt = 0; ; attempt += 1) {
        let cut = null;
        try {
          if (response) await readEvents(response, onEvent);
          if (ended) break;
          cut = new CutStream("the answer ended without done or error");
        } catch (err) {
          if (!(err instanceof CutStream)) throw err;
          cut = err;
        }
        // Dropped: the turn goes on on the server; read on after the last event seen.
        if (!turn() || attempt >= RESUME_DELAYS_MS.length) throw cut;
        await pause(RESUME_DELAYS_MS[attempt]);
        if (controller.signal.aborted) throw new DOMException("stopped", "AbortError");
        try {
          response = await request("POST", `/v1/${turn()}:resume`,
            { afterSequence: String(last) }, { signal: controller.signal });
        } catch (err) {
          if (err && err.name === "AbortError") throw err;
          if (err instanceof ApiError && err.status < 500) throw err;
          response = null;  // unreachable for now: try again
        }
      }
      if (ended.error) throw ended.error;
      const done = ended.done;
      if (done.finishReason === "FINISH_REASON_QUOTA_EXHAUSTED") {
        notify("The answer stopped early: this month's token quota ran out while it was " +
          "being written. It renews at the start of next month.");
      } else if (done.finishReason === "FINISH_REASON_LENGTH") {
        notify("The answer stopped at its length limit.", "info");
      } else if (done.finishReason === "FINISH_REASON_CANCELLED") {
        notify("The answer was stopped before it finished; it is not saved.", "info");
      } else if (done.finishReason === "FINISH_REASON_CONTENT_FILTER") {
        notify("The model's provider filtered the answer.", "info");
      } else if (done.stored === false) {
        notify("The answer arrived but could not be saved to the conversation's history.",
          "info");
      }
      bubble.dataset.done = "true";
    } catch (err) {
      bubble.classList.add("failed");
      bubble.dataset.failed = "true";
      if (!answer.textContent) bubble.remove();
      if (err && err.name === "AbortError") {
        if (bubble.isConnected) notify("Stopped. An unfinished answer is not saved.", "info");
      } else {
        report(err, "Sending your message", $("send"));
      }
      if (statusOf(err) !== 401 && !$("message").value) $("message").value = text;
    } finally {
      bubble.removeAttribute("aria-busy");
      if (chatAbort === controller) {
        chatAbort = null;
        chatTurn = "";
      }
      $("stop").hidden = true;
      release($("send"));
      if (session) {
        markCurrent();
        loadConversations();
        loadUsage();
      }
    }
  }

  // --- wiring ------------------------------------------------------------------------

  function formValues(form) {
    return Object.fromEntries(new FormData(form).entries());
  }

  function busy(button, promise) {
    button.disabled = true;
    return promise.finally(() => { release(button); });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("notice-close").addEventListener("click", clearNotice);
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const { username, password } = formValues(event.target);
      if (!username || !password) { notify("Enter your username and password."); return; }
      busy($("sign-in"), signIn(username.trim(), password)
        .catch((err) => report(err, "Sign in", $("sign-in"))));
    });
    $("sign-up-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const { username, email, password } = formValues(event.target);
      if (!username || !email || !password) {
        notify("Enter a username, an email and a password to create an account.");
        return;
      }
      busy($("sign-up"), (async () => {
        await call("POST", "/v1/users",
          { user: { username: username.trim(), email: email.trim() }, password },
          { auth: false });
        await signIn(username.trim(), password);
      })().catch((err) => report(err, "Create account", $("sign-up"))));
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("new-conversation").addEventListener("click", () => {
      newConversation();
      $("message").focus();
    });
    $("upload-form").addEventListener("submit", upload);
    $("chat-form").addEventListener("submit", send);
    $("stop").addEventListener("click", () => {
      // Stop the answer on the server too (else it runs on for the disconnect grace).
      if (chatTurn) call("POST", `/v1/${chatTurn}:cancel`, {}).catch(() => {});
      if (chatAbort) chatAbort.abort();
    });
    $("message").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      }
    });

    const saved = sessionStorage.getItem(SESSION_KEY);
    if (saved) {
      try {
        session = JSON.parse(saved);
      } catch (_) {
        session = null;
      }
    }
    if (!session) {
      showSignedIn(false);
      return;
    }
    scheduleRefresh();
    (async () => {
      try {
        await accessToken();
        await enter();
      } catch (err) {
        report(err, "Restoring your session");
      }
    })();
  });
})();
