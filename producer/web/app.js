// The ris web page: search by image, index a folder, watch progress. Plain JS, no build step.
// Images are fetched with the bearer token and shown as blob URLs (an <img src> cannot send it).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("ris-token") || "", config: null };

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) $("token-box").hidden = false;
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return body;
}

async function imageUrl(id) {
  const response = await api(`/api/images/${id}/thumbnail`);
  if (!response.ok) return null;
  return URL.createObjectURL(await response.blob());
}

function setStatus(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// --- search ----------------------------------------------------------------------------------
async function search(file) {
  const status = $("search-status");
  const preview = $("query-preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("results").replaceChildren();
  setStatus(status, `searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file, file.name);
  const topK = Number($("top-k").value) || state.config.top_k;
  const started = performance.now();
  try {
    const result = await apiJson(`/api/search?wait=true&top_k=${topK}`, { method: "POST", body: form });
    if (result.error) throw new Error(result.error);
    const ms = Math.round(performance.now() - started);
    setStatus(status, `${result.hits.length} matches in ${ms} ms`);
    await showHits(result.hits);
  } catch (err) {
    setStatus(status, `search failed: ${err.message}`, true);
  }
}

async function showHits(hits) {
  const grid = $("results");
  for (const hit of hits) {
    const card = document.createElement("figure");
    card.className = "hit";
    card.dataset.rank = hit.rank;
    card.dataset.id = hit.id;
    card.dataset.path = hit.path || "";
    const img = document.createElement("img");
    img.alt = hit.path || hit.id;
    const caption = document.createElement("figcaption");
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `#${hit.rank}  score ${hit.score.toFixed(4)}`;
    const path = document.createElement("div");
    path.className = "path";
    path.textContent = hit.path || `(id ${hit.id})`;
    const size = document.createElement("div");
    size.textContent = hit.width ? `${hit.width}×${hit.height}` : "";
    caption.append(score, path, size);
    card.append(img, caption);
    card.addEventListener("click", () => openFull(hit));
    grid.append(card);
  }
  // Thumbnails load after the grid is laid out, in parallel.
  await Promise.all(
    [...grid.children].map(async (card) => {
      const url = await imageUrl(card.dataset.id);
      if (url) card.querySelector("img").src = url;
      card.dataset.loaded = url ? "yes" : "no";
    }),
  );
}

async function openFull(hit) {
  const response = await api(`/api/images/${hit.id}`);
  if (!response.ok) return;
  $("viewer-img").src = URL.createObjectURL(await response.blob());
  $("viewer-caption").textContent = `${hit.path}  (score ${hit.score.toFixed(4)})`;
  $("viewer").showModal();
}

function wireDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => e.target.files[0] && search(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) search(e.dataTransfer.files[0]);
  });
}

// --- ingest ----------------------------------------------------------------------------------
async function ingest(event) {
  event.preventDefault();
  const status = $("ingest-status");
  const bar = $("ingest-progress");
  $("ingest-failures").replaceChildren();
  setStatus(status, "enqueueing…");
  try {
    const job = await apiJson("/api/ingest", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ inputs: [$("ingest-path").value.trim()], queue: $("ingest-queue").value }),
    });
    bar.hidden = false;
    await follow(job.job_id, bar, status);
  } catch (err) {
    setStatus(status, `ingest failed: ${err.message}`, true);
  }
}

async function follow(jobId, bar, status) {
  for (;;) {
    const job = await apiJson(`/api/jobs/${jobId}`);
    bar.max = Math.max(job.total, 1);
    bar.value = job.processed;
    setStatus(
      status,
      `job ${jobId}: ${job.processed}/${job.total} processed (${job.indexed} indexed, ` +
        `${job.unchanged} unchanged, ${job.failed} failed)${job.finished ? " — done" : ""}`,
    );
    if (job.finished) {
      status.dataset.finished = "yes";
      for (const [path, reason] of Object.entries(job.failures)) {
        const li = document.createElement("li");
        li.textContent = `${path}: ${reason}`;
        $("ingest-failures").append(li);
      }
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}

// --- start -----------------------------------------------------------------------------------
async function checkHealth() {
  const el = $("health");
  try {
    const response = await fetch("/api/health");
    const h = await response.json();
    el.textContent = h.ok ? `ok: ${h.workers} worker(s)` : `degraded: ${Object.values(h.errors).join("; ")}`;
    el.className = `health ${h.ok ? "ok" : "bad"}`;
  } catch (err) {
    el.textContent = "API unreachable";
    el.className = "health bad";
  }
}

async function start() {
  state.config = await (await fetch("/api/config")).json();
  $("top-k").value = state.config.top_k;
  $("token-box").hidden = !state.config.token_required || Boolean(state.token);
  $("token").value = state.token;
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value;
    sessionStorage.setItem("ris-token", state.token);
    $("token-box").hidden = true;
  });
  for (const queue of state.config.queues) $("ingest-queue").append(new Option(queue, queue));
  $("flower-link").href = state.config.flower_url || `${location.protocol}//${location.hostname}:${state.config.flower_port}/`;
  $("ingest-form").addEventListener("submit", ingest);
  wireDrop();
  checkHealth();
  document.body.dataset.ready = "yes";
}

start();
