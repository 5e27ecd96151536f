// tfwhale catalogue: the compare view (two photos, synchronised zoom and pan, verified matches drawn over
// them) and the candidate rows' match strips. Plain JS, no build step, no dependency.
"use strict";
(() => {
  const COLOURS = ["#00ff00", "#ffc800", "#00c8ff", "#ff00ff", "#ffff00"];
  const SVG = "http://www.w3.org/2000/svg";
  const MAX_LINES = 80;  // more lines across the panes hide the photos

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (parent) parent.append(node);
    return node;
  }

  // {ok, query, photo, inliers, tentative, pairs: [[qx, qy, px, py]...]} in each picture's own pixels
  async function fetchMatches(query, photo) {
    const response = await fetch(`/api/matches?query=${encodeURIComponent(query)}&photo=${encodeURIComponent(photo)}`);
    let answer = null;
    try { answer = await response.json(); } catch (err) { /* not JSON: below */ }
    if (!response.ok || !answer || !answer.ok) throw new Error((answer && answer.message) || `error ${response.status}`);
    return answer;
  }
  const countText = (m) => `${m.inliers} verified match${m.inliers === 1 ? "" : "es"} (of ${m.tentative} tentative, ${m.geometry})`;

  // -- the compare view: both panes share one zoom z and one pan (tx, ty), each photo fitted to its pane
  function setupCompare(view) {
    const panes = [...view.querySelectorAll(".pane")];
    const links = view.querySelector("svg.links");
    const toggle = view.querySelector(".matches-toggle");
    const count = view.querySelector(".match-count");
    const state = { z: 1, tx: 0, ty: 0 };
    let matches = null;

    function fit(pane) {
      const w = Number(pane.dataset.width), h = Number(pane.dataset.height);
      const W = pane.clientWidth, H = pane.clientHeight;
      const s = Math.min(W / w, H / h);
      return { s, ox: (W - w * s) / 2, oy: (H - h * s) / 2, cx: W / 2, cy: H / 2 };
    }
    // an image point -> the pane's own pixels: centre + pan + zoom x (fitted position - centre)
    function toPane(pane, x, y, f = fit(pane)) {
      return [f.cx + state.tx + state.z * (f.ox + f.s * x - f.cx), f.cy + state.ty + state.z * (f.oy + f.s * y - f.cy)];
    }
    function fitScreen() {  // the panes fill the window below whatever banner the page shows
      const top = view.getBoundingClientRect().top + window.scrollY;
      view.style.height = `${Math.max(320, window.innerHeight - top - 12)}px`;
    }
    function render() {
      for (const pane of panes) {
        const f = fit(pane);
        const k = state.z * f.s;
        const [x0, y0] = toPane(pane, 0, 0, f);
        pane.querySelector(".layer").style.transform = `translate(${x0}px, ${y0}px) scale(${k})`;
        pane.dataset.zoom = state.z.toFixed(4);
        pane.dataset.pan = `${state.tx.toFixed(1)},${state.ty.toFixed(1)}`;
        pane.querySelectorAll("circle").forEach((c) => c.setAttribute("r", 4 / k));
      }
      drawLinks();
    }
    function drawLinks() {
      links.textContent = "";
      if (!matches || !toggle.checked) return;
      const box = links.getBoundingClientRect();
      const [a, b] = panes.map((p) => p.getBoundingClientRect());
      const inside = (x, y, r) => x >= 0 && y >= 0 && x <= r.width && y <= r.height;
      const every = Math.max(1, Math.ceil(matches.pairs.length / MAX_LINES));  // circles mark them all
      matches.pairs.forEach(([qx, qy, px, py], i) => {
        if (i % every) return;
        const [ax, ay] = toPane(panes[0], qx, qy), [bx, by] = toPane(panes[1], px, py);
        if (!inside(ax, ay, a) || !inside(bx, by, b)) return;  // a line to a point out of view misleads
        el("line", { x1: a.left - box.left + ax, y1: a.top - box.top + ay, x2: b.left - box.left + bx,
          y2: b.top - box.top + by, stroke: COLOURS[i % COLOURS.length], "stroke-width": 1, "stroke-opacity": 0.8, "data-i": i }, links);
      });
    }
    function drawMarks() {
      panes.forEach((pane, side) => {
        const marks = pane.querySelector("svg.marks");
        marks.textContent = "";
        matches.pairs.forEach((pair, i) => el("circle", { cx: pair[2 * side], cy: pair[2 * side + 1], r: 4, fill: "none",
          stroke: COLOURS[i % COLOURS.length], "stroke-width": 2, "vector-effect": "non-scaling-stroke" }, marks));
      });
    }
    function zoomAt(pane, factor, px, py) {  // keeps the image point under (px, py) where it is
      const f = fit(pane);
      const z = Math.min(Math.max(state.z * factor, 0.5), 50);
      const k = z / state.z;
      state.tx = px - f.cx - (px - f.cx - state.tx) * k;
      state.ty = py - f.cy - (py - f.cy - state.ty) * k;
      state.z = z;
      render();
    }
    const zoomCentre = (factor) => zoomAt(panes[0], factor, panes[0].clientWidth / 2, panes[0].clientHeight / 2);
    function reset() { Object.assign(state, { z: 1, tx: 0, ty: 0 }); render(); }
    function pan(dx, dy) { state.tx += dx; state.ty += dy; render(); }

    async function showMatches() {
      view.classList.toggle("no-matches", !toggle.checked);
      if (toggle.checked && !matches) {
        count.textContent = "matching…";
        try {
          matches = await fetchMatches(view.dataset.query, view.dataset.photo);
          count.textContent = countText(matches);
          drawMarks();
        } catch (err) {
          count.textContent = `no matches: ${err.message}`;
          count.classList.add("error");
        }
      }
      render();
    }

    for (const pane of panes) {
      const pointers = new Map();
      pane.addEventListener("wheel", (e) => {
        e.preventDefault();
        const r = pane.getBoundingClientRect();
        zoomAt(pane, Math.exp(-e.deltaY * (e.ctrlKey ? 0.01 : 0.002)), e.clientX - r.left, e.clientY - r.top);
      }, { passive: false });
      pane.addEventListener("pointerdown", (e) => {
        pane.setPointerCapture(e.pointerId);
        pointers.set(e.pointerId, [e.clientX, e.clientY]);
        pane.classList.add("dragging");
      });
      pane.addEventListener("pointermove", (e) => {
        const last = pointers.get(e.pointerId);
        if (!last) return;
        if (pointers.size === 2) {  // pinch: the distance between two fingers scales the zoom
          const [other] = [...pointers].filter(([id]) => id !== e.pointerId).map(([, p]) => p);
          const before = Math.hypot(last[0] - other[0], last[1] - other[1]);
          const after = Math.hypot(e.clientX - other[0], e.clientY - other[1]);
          const r = pane.getBoundingClientRect();
          if (before > 0) zoomAt(pane, after / before, (e.clientX + other[0]) / 2 - r.left, (e.clientY + other[1]) / 2 - r.top);
        } else pan(e.clientX - last[0], e.clientY - last[1]);
        pointers.set(e.pointerId, [e.clientX, e.clientY]);
      });
      const up = (e) => { pointers.delete(e.pointerId); if (!pointers.size) pane.classList.remove("dragging"); };
      pane.addEventListener("pointerup", up);
      pane.addEventListener("pointercancel", up);
    }
    view.querySelector(".back").addEventListener("click", (e) => {  // back where it was opened from, if here
      if (history.length > 1 && document.referrer.startsWith(location.origin)) { e.preventDefault(); history.back(); }
    });
    for (const step of view.querySelectorAll(".prev, .next")) step.addEventListener("click", (e) => {
      e.preventDefault();
      location.replace(step.href);  // stepping through candidates keeps one history entry: back leaves
    });
    view.querySelector(".zoom-in").addEventListener("click", () => zoomCentre(1.5));
    view.querySelector(".zoom-out").addEventListener("click", () => zoomCentre(1 / 1.5));
    view.querySelector(".zoom-reset").addEventListener("click", reset);
    toggle.addEventListener("change", showMatches);
    window.addEventListener("resize", () => { fitScreen(); render(); });
    document.addEventListener("keydown", (e) => {
      if (["INPUT", "TEXTAREA"].includes(e.target.tagName) && e.target.type !== "checkbox") return;
      const step = 60;
      const keys = {
        "+": () => zoomCentre(1.5), "=": () => zoomCentre(1.5), "-": () => zoomCentre(1 / 1.5), "0": reset,
        m: () => { toggle.checked = !toggle.checked; showMatches(); },
        ArrowLeft: () => pan(step, 0), ArrowRight: () => pan(-step, 0), ArrowUp: () => pan(0, step), ArrowDown: () => pan(0, -step),
        "[": () => view.querySelector(".prev")?.click(), "]": () => view.querySelector(".next")?.click(),
        Escape: () => view.querySelector(".back").click(),
      };
      if (keys[e.key] && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); keys[e.key](); }
    });
    for (const img of view.querySelectorAll(".pane img")) img.addEventListener("load", render);
    fitScreen();
    showMatches();
  }
  const view = document.querySelector(".compare-view");
  if (view) setupCompare(view);

  // -- candidate rows: a strip with the query and the candidate's photo side by side, matches drawn across
  async function toggleStrip(button) {
    const row = button.closest(".candidate");
    const shown = row.querySelector(".match-strip");
    if (shown) { shown.remove(); button.setAttribute("aria-pressed", "false"); return; }
    button.setAttribute("aria-pressed", "true");
    const strip = document.createElement("div");
    strip.className = "match-strip";
    strip.textContent = "matching…";
    row.append(strip);
    try {
      const m = await fetchMatches(button.dataset.query, button.dataset.photo);
      const height = 300, gap = 8;  // drawing units; the CSS sets the strip's height on screen
      const kq = height / m.query.height, kp = height / m.photo.height;
      const left = m.query.width * kq, width = left + gap + m.photo.width * kp;
      strip.textContent = "";
      const shown = 150;  // px on screen
      const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width: (width * shown) / height, height: shown,
        role: "img", "aria-label": countText(m) }, strip);
      el("image", { href: m.query.url, x: 0, y: 0, width: left, height, preserveAspectRatio: "none" }, svg);
      el("image", { href: m.photo.url, x: left + gap, y: 0, width: width - left - gap, height, preserveAspectRatio: "none" }, svg);
      m.pairs.filter((_, i) => i % Math.max(1, Math.ceil(m.pairs.length / 60)) === 0).forEach(([qx, qy, px, py], i) => el("line", { x1: qx * kq, y1: qy * kq, x2: left + gap + px * kp,
        y2: py * kp, stroke: COLOURS[i % COLOURS.length], "stroke-width": 1.5 }, svg));
      const caption = document.createElement("small");
      caption.textContent = `${countText(m)} with ${m.photo.name} · `;
      const open = document.createElement("a");
      open.href = `/compare?query=${encodeURIComponent(m.query.photo)}&photo=${encodeURIComponent(m.photo.photo)}`;
      open.textContent = "side by side";
      caption.append(open);
      strip.append(caption);
    } catch (err) {
      strip.textContent = `no matches: ${err.message}`;
      strip.classList.add("error");
    }
  }
  document.addEventListener("click", (e) => {
    const button = e.target.closest(".show-matches");
    if (button) toggleStrip(button);
  });

  // review queue: c compares the photo with its first candidate at full size
  document.addEventListener("keydown", (e) => {
    if (e.key !== "c" || ["INPUT", "TEXTAREA"].includes(e.target.tagName)) return;
    const link = document.querySelector("[data-review] .result .compare-link");
    if (link) link.click();
  });
  // a new identify result is scrolled to the top, so its five candidates and their buttons are in view
  const results = document.getElementById("results");
  if (results) new MutationObserver(() => results.firstElementChild?.scrollIntoView({ block: "start" }))
    .observe(results, { childList: true });
})();
