"""The admin console at `/admin`: one self-contained page (HTML, CSS and plain JavaScript inline;
no build step, nothing from a CDN). It asks for a key, keeps it in the tab's sessionStorage, and
reads everything through the same admin API an operator would call: health, loaded models with
their estimated memory,
cache stats and clear, circuit breakers and reset, rate limits and policy (the metrics snapshot),
media and jobs with live progress, the pipeline's queues and dead letters, and a search
playground that shows each result's chunk. A key without the admin role sees "admin key
required" (the API's 403). The page itself holds no data and no secret.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import HTMLResponse

from tldw_Server_API.app.api.v1.routing import StrictJSONRoute

router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tldw embeddings - admin</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
 header{background:#1d2430;color:#fff;padding:10px 18px;display:flex;gap:16px;align-items:center}
 header h1{font-size:16px;margin:0;flex:1} main{padding:14px 18px;display:grid;gap:14px;
 grid-template-columns:repeat(auto-fit,minmax(420px,1fr))} section{background:#fff;border:1px solid #dde1e7;
 border-radius:6px;padding:10px 14px} h2{font-size:14px;margin:0 0 8px} table{border-collapse:collapse;width:100%}
 td,th{border-bottom:1px solid #eef0f3;padding:3px 6px;text-align:left;font-size:13px;vertical-align:top}
 button{cursor:pointer;border:1px solid #9aa4b2;background:#fff;border-radius:4px;padding:3px 9px}
 .ok{color:#137333}.bad{color:#b3261e}.muted{color:#667085} #login{max-width:460px;margin:60px auto}
 input{padding:5px;border:1px solid #9aa4b2;border-radius:4px} .bar{background:#e6e9ee;height:8px;border-radius:4px}
 .bar div{background:#3b82f6;height:8px;border-radius:4px} pre{white-space:pre-wrap;margin:0;font-size:12px}
</style></head><body>
<header><h1>tldw embeddings - admin console</h1><span id="who" class="muted"></span>
<button id="logout" hidden>log out</button></header>
<div id="login"><section><h2>Log in</h2><p>Paste an admin API key (kept in this tab only).</p>
<form id="login-form"><input id="key" type="password" size="40" autocomplete="off" placeholder="API key">
<button id="login-button" type="submit">Log in</button></form><p id="login-error" class="bad"></p></section></div>
<main id="console" hidden>
 <section><h2>Health</h2><div id="health">...</div></section>
 <section><h2>Models</h2><table id="models"></table></section>
 <section><h2>Cache</h2><div id="cache"></div><button id="clear-cache">Clear cache</button>
  <span id="cache-result"></span></section>
 <section><h2>Circuit breakers</h2><table id="breakers"></table></section>
 <section><h2>Requests, rate limits and policy</h2><table id="limits"></table></section>
 <section><h2>Jobs</h2><table id="jobs"></table></section>
 <section><h2>Media</h2><table id="media"></table></section>
 <section><h2>Pipeline and dead letters</h2><div id="pipeline"></div></section>
 <section style="grid-column:1/-1"><h2>Search playground</h2>
  <form id="search-form"><input id="query" size="60" placeholder="a question about your media">
  <select id="mode"><option>hybrid</option><option>vector</option><option>fts</option></select>
  <button id="search-button" type="submit">Search</button></form><table id="results"></table></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"};
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ENTITIES[c]);
let key = sessionStorage.getItem("tldw-admin-key") || "";
async function api(method, path, body) {
  const response = await fetch(path, {method, headers: {"Authorization": "Bearer " + key,
    ...(body ? {"Content-Type": "application/json"} : {})}, body: body ? JSON.stringify(body) : undefined});
  const data = await response.json().catch(() => ({}));
  if (!response.ok) { const e = new Error((data.error && data.error.message) || response.statusText);
    e.status = response.status; throw e; }
  return data;
}
function rows(table, head, items) {
  $(table).innerHTML = "<tr>" + head.map((h) => "<th>" + esc(h) + "</th>").join("") + "</tr>" +
    items.map((cells) => "<tr>" + cells.map((c) => "<td>" + c + "</td>").join("") + "</tr>").join("");
}
async function login(event) {
  if (event) event.preventDefault();
  key = $("key").value.trim() || key;
  try { await api("GET", "/api/v1/embeddings/metrics"); }
  catch (e) { $("login-error").textContent = e.status === 403 ? "admin key required" :
              e.status === 401 ? "that key is not valid" : e.message; return; }
  sessionStorage.setItem("tldw-admin-key", key);
  $("login").hidden = true; $("console").hidden = false; $("logout").hidden = false;
  refresh(); setInterval(refreshLive, 2000);
}
async function refresh() {
  await Promise.allSettled([health(), models(), breakers(), limits(), refreshLive()]);
}
async function refreshLive() { await Promise.allSettled([jobs(), media(), pipeline(), models()]); }
async function health() {
  const h = await fetch("/health").then((r) => r.json());
  const parts = Object.entries(h.components || {}).map(([n, c]) => esc(n) + ": " + esc(c.status));
  $("health").innerHTML = '<b class="' + (h.status === "healthy" ? "ok" : "bad") + '" id="health-status">' +
    esc(h.status) + "</b> " + parts.join(", ");
  const c = h.cache || {};
  $("cache").innerHTML = c.enabled ? "entries " + esc(c.size) + " / " + esc(c.max_size) + ", hit rate " +
    esc(Number(c.hit_rate || 0).toFixed(2)) + ", ttl " + esc(c.ttl_s) + " s" : "off";
}
async function models() {
  const [m, h] = await Promise.all([api("GET", "/api/v1/embeddings/models"), fetch("/health").then((r) => r.json())]);
  const memory = (x) => ((((h.providers || {})[x.provider] || {}).model_cache || {}).models || {})[x.id];
  rows("models", ["model", "provider", "dimension", "loaded (memory)", "default"], m.data.map((x) =>
    [esc(x.id), esc(x.provider), esc(x.dimension),
     x.loaded ? "yes" + (memory(x) ? " (" + esc(memory(x).estimated_mb) + " MB)" : "") : "",
     x.default ? "default" : ""]));
}
async function breakers() {
  const b = (await api("GET", "/api/v1/embeddings/circuit-breakers")).circuit_breakers;
  rows("breakers", ["provider", "state", ""], Object.entries(b).map(([p, s]) => [esc(p), esc(s.state),
    '<button data-reset="' + esc(p) + '">reset</button>']));
}
async function limits() {
  const m = await api("GET", "/api/v1/embeddings/metrics");
  const shown = ["requests", "provider_calls", "provider_failures", "retries", "fallbacks", "policy_denials",
                 "rate_limited", "cache_hits", "cache_misses"];
  rows("limits", ["counter", "value"], shown.filter((k) => k in m).map((k) => [esc(k), esc(m[k])]));
}
async function jobs() {
  const j = await api("GET", "/api/v1/media/embeddings/jobs?limit=10");
  rows("jobs", ["job", "media", "status", "progress"], j.items.map((x) => [esc(x.job_id.slice(0, 16)),
    esc(x.media_id), esc(x.status), '<div class="bar"><div style="width:' + Number(x.progress) + '%"></div></div>']));
}
async function media() {
  const m = await api("GET", "/api/v1/media?limit=10");
  rows("media", ["id", "title", "type", "chunks"], m.items.map((x) => [esc(x.id), esc(x.title), esc(x.media_type),
    esc(x.chunk_count)]));
}
async function pipeline() {
  const [summary, dlq] = await Promise.all([api("GET", "/api/v1/embeddings/orchestrator/summary"),
                                            api("GET", "/api/v1/embeddings/dlq/stats")]);
  $("pipeline").innerHTML = "mode: <b>" + esc(summary.mode) + "</b><br>" + (summary.stages || []).map((s) =>
    esc(s.stage) + ": " + esc(s.state) + ", waiting " + esc(s.lag)).join("<br>") + "<br>dead letters: " +
    (dlq.stages || []).map((s) => esc(s.stage) + " " + esc(s.depth)).join(", ");
}
async function search(event) {
  event.preventDefault();
  const r = await api("POST", "/api/v1/rag/search", {query: $("query").value, mode: $("mode").value, top_k: 5});
  rows("results", ["score", "media", "chunk", "text"], r.data.map((x) => [Number(x.score).toFixed(3),
    esc(x.title || x.media_id), esc(x.chunk_index) + (x.page ? " (p. " + esc(x.page) + ")" : ""),
    '<span class="chunk">' + esc(x.text) + "</span>"]));
}
$("login-form").addEventListener("submit", login);
$("search-form").addEventListener("submit", search);
$("logout").addEventListener("click", () => { sessionStorage.removeItem("tldw-admin-key"); location.reload(); });
$("clear-cache").addEventListener("click", async () => {
  const r = await api("DELETE", "/api/v1/embeddings/cache");
  $("cache-result").textContent = "cleared " + r.removed + " entries"; health();
});
$("breakers").addEventListener("click", async (e) => {
  const p = e.target.getAttribute("data-reset");
  if (p) { await api("POST", "/api/v1/embeddings/circuit-breakers/" + encodeURIComponent(p) + "/reset"); breakers(); }
});
if (key) login();
</script></body></html>
"""


@router.get("/admin", include_in_schema=False)
async def admin_console() -> HTMLResponse:
    """The console page (it holds no data: every panel calls the admin API with the key you give)."""
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                       "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                       "style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"})
