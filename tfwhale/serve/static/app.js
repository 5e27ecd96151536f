// tfwhale catalogue: drag and drop, box drawing, decisions by fetch(), review-queue keys. No build step.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const reviewerInput = document.getElementById("reviewer");
if (reviewerInput) {
  reviewerInput.value = localStorage.getItem("tfwhale-reviewer") || reviewerInput.value;
  reviewerInput.addEventListener("change", () => localStorage.setItem("tfwhale-reviewer", reviewerInput.value));
}
const reviewer = () => (reviewerInput ? reviewerInput.value : "");
const statusBox = document.getElementById("status");
function say(text, isError) {
  statusBox.textContent = text;
  statusBox.className = isError ? "error" : "ok";
  statusHeight();  // now, before a section is scrolled to the top under it
}
// a section or heading scrolled to the top stops below the sticky status line (app.css scroll-margin-top)
function statusHeight() {
  document.documentElement.style.setProperty("--status-height", `${statusBox.offsetHeight}px`);
}
if (window.ResizeObserver) new ResizeObserver(statusHeight).observe(statusBox);  // it wraps on narrow pages
async function post(url, body) {
  const options = { method: "POST", headers: { "X-CSRF-Token": csrf }, body };
  if (!(body instanceof FormData)) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  return fetch(url, options);
}

// -- identify: pending photos, each with an optional box drawn on it
const pending = [];
const pendingBox = document.getElementById("pending");
function addFiles(list) {
  for (const file of list) {
    const item = { file, box: null };
    const wrap = document.createElement("div");
    wrap.className = "pending";
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = file.name;
    const rect = document.createElement("div");
    rect.className = "box";
    const caption = document.createElement("div");
    caption.textContent = file.name + " (drag to draw a box)";
    wrap.append(img, rect, caption);
    pendingBox.append(wrap);
    drawBox(img, rect, caption, item);
    pending.push(item);
  }
  document.getElementById("identify").disabled = pending.length === 0;
}
function drawBox(img, rect, caption, item) {
  let start = null;
  const at = (e) => {
    const r = img.getBoundingClientRect();
    return [Math.min(Math.max(e.clientX - r.left, 0), r.width), Math.min(Math.max(e.clientY - r.top, 0), r.height)];
  };
  img.addEventListener("mousedown", (e) => { e.preventDefault(); start = at(e); });
  window.addEventListener("mousemove", (e) => {
    if (!start) return;
    const [x, y] = at(e);
    Object.assign(rect.style, { display: "block", left: Math.min(x, start[0]) + "px", top: Math.min(y, start[1]) + "px",
      width: Math.abs(x - start[0]) + "px", height: Math.abs(y - start[1]) + "px" });
  });
  window.addEventListener("mouseup", (e) => {
    if (!start) return;
    const [x, y] = at(e);
    const sx = img.naturalWidth / img.clientWidth, sy = img.naturalHeight / img.clientHeight;
    const box = [Math.min(x, start[0]) * sx, Math.min(y, start[1]) * sy, Math.max(x, start[0]) * sx, Math.max(y, start[1]) * sy];
    start = null;
    if (box[2] - box[0] < 4 || box[3] - box[1] < 4) { item.box = null; rect.style.display = "none"; return; }
    item.box = box.map((v) => Math.round(v)).join(" ");
    caption.textContent = item.file.name + " box " + item.box;
  });
}
const drop = document.getElementById("drop");
if (drop) {
  document.getElementById("files").addEventListener("change", (e) => addFiles(e.target.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  document.getElementById("identify").addEventListener("click", identifyAll);
}
async function identifyAll() {
  const results = document.getElementById("results");
  const items = pending.splice(0);
  pendingBox.textContent = "";
  document.getElementById("files").value = "";  // the picker no longer counts the photos sent
  document.getElementById("identify").disabled = true;
  let refused = 0;
  for (const [i, item] of items.entries()) {
    say(`identifying ${i + 1} of ${items.length}: ${item.file.name}…`);
    const form = new FormData();
    form.append("photo", item.file);
    form.append("box", item.box || "");
    form.append("who", reviewer());
    form.append("side", document.getElementById("upload-side").value);
    form.append("photographer", document.getElementById("upload-photographer").value);
    try {
      const response = await post("/api/identify", form);
      const html = await response.text();
      const holder = document.createElement("div");
      if (response.ok) holder.innerHTML = html;  // server-rendered, autoescaped
      else {
        refused += 1;
        holder.append(errorBox(response.status === 413 ? `${item.file.name}: too large` : html));
      }
      results.prepend(holder);
    } catch (err) {
      refused += 1;
      results.prepend(errorBox(`${item.file.name}: ${err}`));
    }
  }
  say(`done: ${items.length - refused} identified` + (refused ? `, ${refused} refused (see below)` : ""), refused > 0);
}
function errorBox(text) {
  const box = document.createElement("div");
  box.className = "error";
  box.setAttribute("role", "alert");
  box.textContent = plainText(text);  // the server's escaped message (or plain text)
  return box;
}
// The text of an HTML or plain-text message; DOMParser's document is inert (no image loads, no handlers).
function plainText(text) {
  return new DOMParser().parseFromString(text, "text/html").body.textContent;
}

// A JSON answer {ok, message}, also when the server (or a proxy) answers plain text or the network fails.
async function readAnswer(send) {
  let response;
  try {
    response = await send();
  } catch (err) {
    return { ok: false, message: `not sent: ${err}` };
  }
  const text = await response.text();
  try {
    const answer = JSON.parse(text);
    if (answer && typeof answer === "object" && "ok" in answer) return answer;
  } catch (err) { /* not JSON: fall through */ }
  return { ok: false, message: `error ${response.status}: ${plainText(text).trim().slice(0, 300)}` };
}

// -- decisions (identify results, review queue, photo pages): each answer re-renders the photo's section
function show(message, answer) {
  message.textContent = answer.message;
  message.className = "message " + (answer.ok ? "ok" : "error");
  say(answer.message, !answer.ok);  // also at the top of the page
  const at = message.getBoundingClientRect();  // not under the sticky status line, not below the fold
  if (at.top < statusBox.offsetHeight + 8 || at.bottom > window.innerHeight) message.scrollIntoView({ block: "center" });
}
async function refresh(section, answer) {
  const keys = section.dataset.keys ? "?keys=1" : "";
  const response = await fetch(`/api/result/${section.dataset.photo}${keys}`);
  if (response.ok) {
    const holder = document.createElement("div");
    holder.innerHTML = await response.text();  // server-rendered, autoescaped
    const fresh = holder.querySelector(".result");
    section.replaceWith(fresh);
    section = fresh;
  }
  show(section.querySelector(".message"), answer);
}
async function decide(section, action, individual) {
  if (action === "confirm" && section.dataset.assigned) action = "reassign";
  const species = section.querySelector(".new-species");
  const body = { photo: section.dataset.photo, action, individual: individual || "",
    note: section.querySelector(".note").value, species: species ? species.value : "",
    reviewer: reviewer(), scores: JSON.parse(section.dataset.scores) };
  const answer = await readAnswer(() => post("/api/decide", body));
  if (!answer.ok && action === "register" && /exists already/.test(answer.message)) {
    const search = section.querySelector(".assign-search");  // the id is taken: offer it to assign to
    search.value = body.individual;
    findIndividuals(search);
  }
  if (!answer.ok) return show(section.querySelector(".message"), answer);
  // the proposed id moves on to a free one wherever it (or the id just registered) is still offered
  document.querySelectorAll(".result").forEach((other) => {
    const input = other.querySelector(".new-id");
    if (input && (input.value === body.individual || input.value === other.dataset.proposed)) input.value = answer.proposed;
    other.dataset.proposed = answer.proposed;
  });
  const splitTo = document.getElementById("split-to");
  if (splitTo && splitTo.value === body.individual) splitTo.value = answer.proposed;
  await refresh(section, answer);
  if (document.querySelector("[data-review]") && action !== "reassign") setTimeout(() => move(1), 400);
  return answer;
}
async function undo(section, decision) {
  const body = { decision: Number(decision), note: section.querySelector(".note").value, reviewer: reviewer() };
  const answer = await readAnswer(() => post("/api/undo", body));
  if (!answer.ok) return show(section.querySelector(".message"), answer);
  await refresh(section, answer);
}
document.addEventListener("click", (e) => {
  const section = e.target.closest(".result");
  if (!section || e.target.tagName !== "BUTTON") return;
  if (e.target.classList.contains("confirm")) decide(section, "confirm", e.target.dataset.individual);
  if (e.target.classList.contains("assign-to")) decide(section, "confirm", e.target.dataset.individual);
  if (e.target.classList.contains("register")) decide(section, "register", section.querySelector(".new-id").value);
  if (e.target.classList.contains("unresolved")) decide(section, "unresolved", "");
  if (e.target.classList.contains("undo")) undo(section, e.target.dataset.decision);
});

// -- assign to any individual: search by id, with a few photos of each
let searchTimer = null;
document.addEventListener("input", (e) => {
  if (!e.target.classList.contains("assign-search")) return;
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => findIndividuals(e.target), 200);
});
async function findIndividuals(input) {
  const list = input.closest(".assign").querySelector(".assign-found");
  const text = input.value.trim();
  if (!text) { list.textContent = ""; return; }
  const answer = await readAnswer(() => fetch(`/api/individuals?q=${encodeURIComponent(text)}`));
  if (input.value.trim() !== text) return;  // typed on meanwhile
  list.textContent = "";
  if (!answer.ok || answer.individuals.length === 0) {
    list.append(Object.assign(document.createElement("li"), { textContent: answer.ok ? "no individual matches" : answer.message }));
    return;
  }
  for (const found of answer.individuals) {
    const item = document.createElement("li");
    item.className = "found";
    const button = Object.assign(document.createElement("button"), { type: "button", className: "assign-to",
      textContent: `Assign to ${found.id}` });
    button.dataset.individual = found.id;
    const label = Object.assign(document.createElement("span"), { textContent: ` ${found.species} · ${found.n} photo(s)` });
    item.append(button, label);
    for (const crop of found.photos) {
      item.append(Object.assign(document.createElement("img"), { src: `/blob/${crop}.jpg`, alt: found.id, className: "thumb" }));
    }
    list.append(item);
  }
}

// -- an individual's page: split off ticked photos, merge into another id, undo either
async function correct(url, body) {
  const answer = await readAnswer(() => post(url, { ...body, reviewer: reviewer() }));
  const message = document.getElementById("correct-message");
  show(message, answer);
  if (answer.ok) setTimeout(() => location.reload(), 600);
}
document.addEventListener("click", (e) => {
  const box = document.querySelector(".corrections");
  if (e.target.id === "split" && box) {
    const photos = [...document.querySelectorAll(".split-photo:checked")].map((input) => input.value);
    correct("/api/split", { individual: box.dataset.individual, photos, other: document.getElementById("split-to").value });
  }
  if (e.target.id === "merge" && box) {
    correct("/api/merge", { merged: box.dataset.individual, kept: document.getElementById("merge-into").value.trim() });
  }
  if (e.target.classList.contains("undo-row")) correct("/api/undo", { decision: Number(e.target.dataset.decision) });
});

// -- review queue keys
function move(step) {
  const links = [...document.querySelectorAll(".queue a")];
  const now = links.findIndex((a) => a.parentElement.classList.contains("current"));
  const next = links[now + step] || links[0];
  if (next) location.href = next.href;
}
document.addEventListener("keydown", (e) => {
  const section = document.querySelector("[data-review] .result");
  if (!section || ["INPUT", "TEXTAREA"].includes(e.target.tagName)) return;
  const candidate = /^[1-5]$/.test(e.key) && section.querySelectorAll(".candidate")[Number(e.key) - 1];
  // the new_individual row has nothing to confirm: its key registers, like n
  if (candidate) (candidate.querySelector(".confirm") || section.querySelector(".register")).click();
  else if (e.key === "n") section.querySelector(".register").click();
  else if (e.key === "u") section.querySelector(".unresolved").click();
  else if (e.key === "j") move(1);
  else if (e.key === "k") move(-1);
});

// -- export
const exportButton = document.getElementById("export");
if (exportButton) exportButton.addEventListener("click", async () => {
  say("exporting…");
  const answer = await readAnswer(() => post("/api/export", {}));
  const out = document.getElementById("export-result");
  const warnings = (answer.warnings || []).join("; ");
  const notes = (answer.notes || []).join("; ");
  out.textContent = answer.ok ? `written to ${answer.folder}; next: ${answer.command}` + (warnings ? `; ${warnings}` : "")
    + (notes ? `; ${notes}` : "")
    : `export failed: ${answer.message}`;
  say(answer.ok ? "exported" : "export failed", !answer.ok);
});

// -- photo metadata
const metaForm = document.getElementById("metadata");
if (metaForm) metaForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const body = Object.fromEntries(new FormData(metaForm).entries());
  body.reviewer = reviewer();
  const answer = await readAnswer(() => post(`/api/photos/${metaForm.dataset.photo}/metadata`, body));
  const message = metaForm.querySelector(".meta-message");
  message.textContent = answer.message;
  message.className = "meta-message " + (answer.ok ? "ok" : "error");
});

// -- bulk import: plan (CSV rows without a photo), then one photo per request, with progress
const importStart = document.getElementById("import-start");
function reportRows(outcomes) {
  const table = document.getElementById("import-report");
  table.hidden = false;
  for (const o of outcomes) {
    const row = table.tBodies[0].insertRow();
    row.className = o.status;
    for (const text of [o.file, o.status, o.individual, o.reason]) row.insertCell().textContent = text;
  }
}
function importSummary(counts, prefix) {
  const parts = Object.entries(counts).map(([status, n]) => `${n} ${status}`).join(", ");
  document.getElementById("import-progress").textContent = `${prefix}: ${parts}`;
  say(`${prefix}: ${parts}`, counts.unreadable + counts.refused > 0);
}
if (importStart) importStart.addEventListener("click", async () => {
  const files = [...document.getElementById("import-files").files, ...document.getElementById("import-dir").files];
  const csvFile = document.getElementById("import-csv").files[0];
  const csv = csvFile ? await csvFile.text() : null;
  const progress = document.getElementById("import-progress");
  const counts = { imported: 0, duplicate: 0, unreadable: 0, refused: 0 };
  const names = files.map((f) => f.webkitRelativePath || f.name);
  const csvName = csvFile ? csvFile.name : "import.csv";
  const plan = await readAnswer(() => post("/api/import/plan", { csv, csv_name: csvName, names }));
  if (!plan.ok) { say(plan.message, true); return; }
  for (const o of plan.refused) if (!names.includes(o.file)) { counts[o.status] += 1; reportRows([o]); }
  for (const [i, file] of files.entries()) {
    progress.textContent = `importing ${i + 1} of ${files.length}: ${names[i]}…`;
    const form = new FormData();
    form.append("photo", file);
    form.append("path", names[i]);
    form.append("csv", csv || "");
    form.append("csv_name", csvName);
    form.append("who", reviewer());
    const answer = await readAnswer(() => post("/api/import/photo", form));
    const outcomes = answer.ok ? answer.outcomes : [{ file: names[i], status: "refused", individual: "", reason: answer.message }];
    for (const o of outcomes) counts[o.status] += 1;
    reportRows(outcomes);
  }
  importSummary(counts, "import done");
});
const folderStart = document.getElementById("import-folder-start");
if (folderStart) folderStart.addEventListener("click", async () => {
  document.getElementById("import-progress").textContent = "importing the folder…";
  const body = { folder: document.getElementById("import-folder").value,
    csv: document.getElementById("import-folder-csv").value, reviewer: reviewer() };
  const answer = await readAnswer(() => post("/api/import/folder", body));
  if (!answer.ok) { say(answer.message, true); document.getElementById("import-progress").textContent = answer.message; return; }
  reportRows(answer.outcomes);
  importSummary(answer.counts, "import done");
});
