// The longdoc playground: plain JavaScript against the public API, nothing loaded from elsewhere.
// Progress comes from GET /v1/jobs/{id}/events read with fetch streaming, because EventSource
// cannot send the Authorization header.
"use strict";

const TEMPLATES = {
  invoice: {
    type: "object",
    properties: {
      invoice_number: {type: "string"},
      date: {type: "string", description: "ISO 8601 date"},
      seller: {type: "string"},
      buyer: {type: "string"},
      currency: {type: "string"},
      total: {type: "number"},
      line_items: {type: "array", items: {type: "object", properties: {
        description: {type: "string"}, quantity: {type: "number"}, amount: {type: "number"}},
        required: ["description", "amount"]}},
    },
    required: ["invoice_number", "total", "line_items"],
  },
  contract: {
    type: "object",
    properties: {
      title: {type: "string"},
      parties: {type: "array", items: {type: "string"}},
      effective_date: {type: "string", description: "ISO 8601 date"},
      term: {type: "string"},
      governing_law: {type: "string"},
      termination_notice: {type: "string"},
      obligations: {type: "array", items: {type: "object", properties: {
        party: {type: "string"}, obligation: {type: "string"}}, required: ["party", "obligation"]}},
    },
    required: ["title", "parties"],
  },
  table: {
    type: "object",
    properties: {
      columns: {type: "array", items: {type: "string"}},
      rows: {type: "array", items: {type: "object", properties: {
        label: {type: "string"}, values: {type: "array", items: {type: "string"}}},
        required: ["label", "values"]}},
    },
    required: ["rows"],
  },
};
const ENDED = ["succeeded", "failed", "canceled"];
const $ = (id) => document.getElementById(id);
const state = {documentId: null, documentReady: false, job: null, result: null, planTimer: null};

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(code, message, status) {
    super(`${code}: ${message}`);
    this.code = code;
    this.status = status;
  }
}

function authHeaders(extra = {}) {
  return {Authorization: `Bearer ${$("key").value.trim()}`, ...extra};
}

async function toError(response) {
  try {
    const body = await response.json();
    return new ApiError(body.error.code, body.error.message, response.status);
  } catch {
    return new ApiError(`http_${response.status}`, response.statusText, response.status);
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {...options, headers: authHeaders(options.headers)});
  if (!response.ok) throw await toError(response);
  return response.json();
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showError(error) {
  $("error").textContent = error ? (error instanceof ApiError ? error.message : String(error)) : "";
}

// ------------------------------------------------------------------ key and document

function setupKey() {
  $("key").value = sessionStorage.getItem("longdoc-key") || "";
  $("key").addEventListener("change", () => {
    sessionStorage.setItem("longdoc-key", $("key").value.trim());
    schedulePlan();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem("longdoc-key");
    $("key").value = "";
  });
}

function setupDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file").click(); });
  $("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
}

async function upload(file) {
  showError(null);
  state.documentId = null;
  state.documentReady = false;
  updateRunButton();
  $("document").textContent = `Uploading ${file.name} (${file.size.toLocaleString()} bytes)…`;
  const form = new FormData();
  form.append("file", file);
  try {
    const doc = await api("/v1/documents", {method: "POST", body: form});
    state.documentId = doc.id;
    await watchDocument(doc.id, file.name);
  } catch (error) {
    $("document").textContent = "Upload failed.";
    showError(error);
  }
}

async function watchDocument(id, name) {
  for (;;) {
    const doc = await api(`/v1/documents/${id}`);
    if (state.documentId !== id) return;  // another file was dropped meanwhile
    const pages = doc.pages ? `${doc.pages_parsed || 0}/${doc.pages} pages` : "";
    if (doc.status === "processing") {
      $("document").textContent = `${name}: reading… ${pages}`;
      await sleep(500);
      continue;
    }
    if (doc.status === "failed") {
      $("document").textContent = `${name}: could not be read.`;
      showError(new ApiError(doc.error.code, doc.error.message, 422));
      return;
    }
    $("document").textContent =
      `${name}: ready, ${doc.pages} page(s), ${doc.tokens.toLocaleString()} text tokens (${doc.id})`;
    $("document").dataset.status = "ready";
    state.documentReady = true;
    updateRunButton();
    schedulePlan();
    return;
  }
}

// ------------------------------------------------------------------ schema and plan

function setupSchema() {
  const load = () => { $("schema").value = JSON.stringify(TEMPLATES[$("template").value], null, 2); };
  $("template").addEventListener("change", () => { load(); schedulePlan(); });
  $("schema").addEventListener("input", schedulePlan);
  $("instructions").addEventListener("change", schedulePlan);
  load();
}

function readSchema() {
  try {
    const schema = JSON.parse($("schema").value);
    $("schema-error").textContent = "";
    return schema;
  } catch (error) {
    $("schema-error").textContent = `Not valid JSON: ${error.message}`;
    return null;
  }
}

function jobBody(dryRun) {
  const body = {document_ids: [state.documentId], schema: readSchema(), dry_run: dryRun};
  const instructions = $("instructions").value.trim();
  if (instructions) body.instructions = instructions;
  if ($("citations").checked) body.citations = true;
  return body;
}

function updateRunButton() {
  $("run").disabled = !(state.documentReady && readSchema());
}

function schedulePlan() {
  updateRunButton();
  clearTimeout(state.planTimer);
  state.planTimer = setTimeout(showPlan, 400);
}

async function showPlan() {
  if (!state.documentReady || !readSchema()) return;
  try {
    const out = await api("/v1/jobs", {method: "POST", body: JSON.stringify(jobBody(true)),
                                       headers: {"Content-Type": "application/json"}});
    const tokens = out.plan.chunks.reduce((sum, c) => sum + c.prompt_tokens, 0);
    const table = document.createElement("table");
    table.innerHTML = "<thead><tr><th>call</th><th>pages</th><th>prompt tokens</th></tr></thead>";
    const rows = document.createElement("tbody");
    out.plan.chunks.forEach((chunk, i) => {
      const row = rows.insertRow();
      [String(i + 1), chunk.pages.join("–"), chunk.prompt_tokens.toLocaleString()]
        .forEach((text) => { row.insertCell().textContent = text; });
    });
    table.appendChild(rows);
    const summary = document.createElement("p");
    summary.id = "plan-summary";
    summary.textContent = `${out.plan.calls} call(s), ${tokens.toLocaleString()} prompt tokens, ` +
      `estimated cost $${out.estimated_cost_usd.toFixed(6)} (${out.profile})`;
    $("plan").replaceChildren(summary, table);
    $("plan").classList.remove("muted");
  } catch (error) {
    $("plan").textContent = `No plan: ${error.message}`;
  }
}

// ------------------------------------------------------------------ running a job

async function run() {
  showError(null);
  $("result").replaceChildren();
  $("raw").textContent = "";
  $("source").hidden = true;
  $("run").disabled = true;
  try {
    const job = await api("/v1/jobs", {method: "POST", body: JSON.stringify(jobBody(false)),
                                       headers: {"Content-Type": "application/json"}});
    state.job = job;
    $("progress").hidden = false;
    $("job-id").textContent = job.id;
    setStatus(job.status);
    await follow(job.id);
    const final = await api(`/v1/jobs/${job.id}`);
    state.job = final;
    setStatus(final.status);
    if (final.status === "succeeded") {
      showResult(await api(`/v1/jobs/${job.id}/result`));
    } else if (final.error) {
      showError(new ApiError(final.error.code, `${final.error.code}: ${final.error.message}`));
    }
  } catch (error) {
    showError(error);
  } finally {
    updateRunButton();
  }
}

function setStatus(status) {
  $("status").textContent = status;
  $("status").className = `status-${status}`;
}

function onEvent(event) {
  const data = event.data;
  if (event.type === "status") setStatus(data.status);
  if (event.type === "progress") {
    $("chunks-bar").max = Math.max(1, data.chunks_total);
    $("chunks-bar").value = data.chunks_done;
    $("chunks").textContent = `${data.chunks_done}/${data.chunks_total}`;
    $("usage").textContent = `${data.usage.prompt_tokens.toLocaleString()} tokens in, ` +
      `${data.usage.completion_tokens.toLocaleString()} out, $${data.cost_usd.toFixed(6)}`;
  }
  if (event.type === "document" && data.status === "processing" && data.pages) {
    $("usage").textContent = `reading the document: ${data.pages_parsed || 0}/${data.pages} pages`;
  }
}

// Reads the job's Server-Sent Events until the job ends, resuming after a dropped connection.
async function follow(jobId) {
  let lastId = null;
  let ended = false;
  for (let failures = 0; failures < 10 && !ended;) {
    try {
      const headers = authHeaders(lastId ? {"Last-Event-ID": String(lastId)} : {});
      const response = await fetch(`/v1/jobs/${jobId}/events`, {headers});
      if (!response.ok) throw await toError(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue;  // "retry:" or a heartbeat comment
          const event = JSON.parse(data);
          lastId = event.id;
          failures = 0;
          onEvent(event);
          if (event.type === "status" && ENDED.includes(event.data.status)) ended = true;
        }
      }
      if (!ended) ended = ENDED.includes((await api(`/v1/jobs/${jobId}`)).status);
    } catch (error) {
      if (error instanceof ApiError) throw error;
      failures += 1;
      await sleep(500 * failures);
    }
  }
}

// ------------------------------------------------------------------ the result and its sources

function pointerToken(key) {
  return String(key).replace(/~/g, "~0").replace(/\//g, "~1");
}

function renderValue(value, pointer, sources) {
  if (value !== null && typeof value === "object") {
    const list = document.createElement(Array.isArray(value) ? "ol" : "ul");
    list.start = 0;
    for (const [key, child] of Object.entries(value)) {
      const item = document.createElement("li");
      if (!Array.isArray(value)) {
        const name = document.createElement("span");
        name.className = "key";
        name.textContent = `${key}: `;
        item.appendChild(name);
      }
      item.appendChild(renderValue(child, `${pointer}/${pointerToken(key)}`, sources));
      list.appendChild(item);
    }
    return list;
  }
  const leaf = document.createElement("span");
  leaf.className = "leaf";
  leaf.tabIndex = 0;
  leaf.dataset.pointer = pointer;
  leaf.textContent = JSON.stringify(value);
  if (sources && sources[pointer]) leaf.classList.add("cited");
  leaf.addEventListener("click", () => showSource(pointer));
  leaf.addEventListener("keydown", (e) => { if (e.key === "Enter") showSource(pointer); });
  return leaf;
}

function showResult(result) {
  state.result = result;
  $("result").replaceChildren(renderValue(result.data, "", result.sources));
  $("result").dataset.status = "shown";
  $("raw").textContent = JSON.stringify(result, null, 2);
  const warnings = (result.warnings || []).length;
  $("result-help").textContent = (result.sources ? "Click a value to see the page it came from." :
    "This result has no sources (run with citations to get them).") +
    (warnings ? ` ${warnings} warning(s) in the raw JSON.` : "");
}

function documentOf(source) {
  // A source names its document by id, or by position among the job's documents (1-based).
  return typeof source.document === "number" ? state.job.document_ids[source.document - 1]
                                             : source.document;
}

async function showSource(pointer) {
  const cited = (state.result && state.result.sources && state.result.sources[pointer]) || [];
  $("source").hidden = false;
  $("source-title").textContent = `${pointer || "/"}: ${cited.length} source(s)`;
  $("source-list").replaceChildren();
  $("source-text").replaceChildren();
  cited.forEach((source, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "quiet";
    const verified = source.verified === true ? "verified" : source.verified === false ?
      "NOT verified" : "unverified";
    button.textContent = `page ${source.page} (${verified})`;
    button.addEventListener("click", () => showPage(source));
    $("source-list").appendChild(button);
    if (i === 0) showPage(source);
  });
}

async function showPage(source) {
  try {
    const page = await api(`/v1/documents/${documentOf(source)}/pages/${source.page}`);
    const text = page.kind === "image" ? "(this page is an image: the model read the picture)"
                                       : page.text;
    $("source-text").replaceChildren(...highlight(text, source.quote || ""));
    const mark = $("source-text").querySelector("mark");
    if (mark) mark.scrollIntoView({block: "center"});
  } catch (error) {
    showError(error);
  }
}

// The page's text with the quote marked; whitespace and case may differ from the quote.
function highlight(text, quote) {
  const words = quote.trim().split(/\s+/).filter(Boolean)
    .map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const match = words.length ? new RegExp(words.join("\\s+"), "i").exec(text) : null;
  if (!match) return [document.createTextNode(text)];
  const mark = document.createElement("mark");
  mark.textContent = match[0];
  return [document.createTextNode(text.slice(0, match.index)), mark,
          document.createTextNode(text.slice(match.index + match[0].length))];
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupDrop();
  setupSchema();
  $("run").addEventListener("click", run);
});
