"""The page a person searches from, served at `/`: a search box, the hits, and a mark on each that records
feedback. Plain HTML and a little JavaScript, no build step; every text from the store is put in with
`textContent`, never as HTML.

Touches: nothing (a constant).
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wikiembed search</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  form { display: flex; gap: .5rem; }
  input[type=search] { flex: 1; font-size: 1.05rem; padding: .4rem .6rem; }
  #about { color: #666; font-size: .85rem; margin: .6rem 0 1rem; min-height: 1.2em; }
  ol { padding-left: 1.4rem; }
  li { margin-bottom: 1rem; }
  .title { font-weight: 600; }
  .meta { color: #666; font-size: .8rem; }
  .text { margin: .2rem 0; }
  button.mark { font-size: .8rem; }
  .done { color: #176f2c; font-size: .8rem; margin-left: .4rem; }
  #token-row { display: none; margin-top: .5rem; font-size: .85rem; }
</style>
</head>
<body>
<h1>Search</h1>
<form id="search">
  <input type="search" id="q" name="q" placeholder="Search the corpus" maxlength="1000" autofocus required>
  <button type="submit">Search</button>
</form>
<div id="token-row">Token for feedback: <input type="password" id="token" autocomplete="off"></div>
<div id="about"></div>
<ol id="hits"></ol>
<script>
"use strict";
const hitsList = document.getElementById("hits");
const about = document.getElementById("about");
let needsToken = false;

fetch("healthz").then(r => r.json()).then(h => {
  needsToken = Boolean(h.feedback && h.feedback.token_required);
  if (needsToken) document.getElementById("token-row").style.display = "block";
  about.textContent = `generation ${h.generation} of ${h.store} (${h.model}), ${h.chunks} chunks`;
}).catch(() => {});

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function mark(query, hit, rank, generation, relevant, row) {
  const headers = {"Content-Type": "application/json"};
  const token = document.getElementById("token").value;
  if (token) headers["Authorization"] = "Bearer " + token;
  const body = {query, id: hit.id, chunk_index: hit.chunk_index, relevant, rank, generation};
  const r = await fetch("feedback", {method: "POST", headers, body: JSON.stringify(body)});
  const note = row.querySelector(".done") || row.appendChild(el("span", "done"));
  note.textContent = r.ok ? (relevant ? "recorded: relevant" : "recorded: not relevant") : `not recorded (${r.status})`;
}

document.getElementById("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = document.getElementById("q").value;
  about.textContent = "searching...";
  const r = await fetch("search?" + new URLSearchParams({q: query, k: "10"}));
  const answer = await r.json();
  hitsList.replaceChildren();
  if (!r.ok) {
    about.textContent = "error: " + JSON.stringify(answer.detail);
    return;
  }
  about.textContent = `${answer.hits.length} hits from generation ${answer.generation} (${answer.model}, ${answer.method === "index" ? "approximate index" : "exact scan"})`;
  answer.hits.forEach((hit, i) => {
    const item = el("li", "hit");
    item.dataset.id = hit.id;
    item.dataset.chunk = hit.chunk_index;
    item.appendChild(el("div", "title", hit.title));
    item.appendChild(el("div", "meta", `${hit.url} · chunk ${hit.chunk_index} · score ${hit.score.toFixed(4)}`));
    item.appendChild(el("div", "text", hit.text.length > 400 ? hit.text.slice(0, 400) + "..." : hit.text));
    const row = el("div", "marks");
    const yes = el("button", "mark relevant", "relevant");
    yes.type = "button";
    yes.addEventListener("click", () => mark(query, hit, i + 1, answer.generation, true, row));
    const no = el("button", "mark not-relevant", "not relevant");
    no.type = "button";
    no.addEventListener("click", () => mark(query, hit, i + 1, answer.generation, false, row));
    row.append(yes, " ", no);
    item.appendChild(row);
    hitsList.appendChild(item);
  });
});
</script>
</body>
</html>
"""
