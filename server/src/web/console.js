// bootvault web console: live progress, and a question before deleting.
// Follows /admin/events (server-sent events) and updates the rows of
// running jobs; without JavaScript the pages still work, showing progress
// as of their loading.
"use strict";
// Forms that destroy something ask first (data-confirm); without the
// script they do it at once.
document.addEventListener("submit", (e) => {
  const text = e.target.dataset && e.target.dataset.confirm;
  if (text && !window.confirm(text)) e.preventDefault();
});
(function () {
  const table = document.getElementById("running");
  if (!table || !window.EventSource) return;
  const body = table.querySelector("tbody");
  const empty = document.getElementById("running-empty");
  const mib = (n) => (n / 1048576).toFixed(1) + " MiB";
  function row(p) {
    let tr = body.querySelector('tr[data-pc="' + CSS.escape(p.pc) + '"]');
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.pc = p.pc;
      for (const k of ["pc", "action", "step", "bar", "rate", "moved", "eta"]) {
        const td = document.createElement("td");
        td.className = k;
        if (k === "bar") {
          const bar = document.createElement("progress");
          bar.max = 100;
          const pct = document.createElement("span");
          pct.className = "pct";
          td.append(bar, " ", pct);
        }
        tr.append(td);
      }
      body.append(tr);
    }
    return tr;
  }
  function show(p) {
    const tr = row(p);
    const pct = p.total ? Math.min(100, (p.done * 100) / p.total) : 0;
    tr.querySelector(".pc").textContent = p.pc;
    tr.querySelector(".action").textContent = p.action + (p.job ? " (job " + p.job + ")" : "");
    tr.querySelector(".step").textContent = p.step;
    tr.querySelector("progress").value = pct;
    tr.querySelector(".pct").textContent = pct.toFixed(1) + " %";
    tr.querySelector(".rate").textContent = (p.rate / 1e6).toFixed(1) + " MB/s";
    tr.querySelector(".moved").textContent = mib(p.moved);
    tr.querySelector(".eta").textContent = p.eta == null ? "" : p.eta + " s";
    tr.dataset.step = p.step;
    if (empty) empty.hidden = true;
  }
  const source = new EventSource("/admin/events");
  source.addEventListener("progress", (e) => {
    try { show(JSON.parse(e.data)); } catch (_) { /* a bad event changes nothing */ }
  });
})();
