// preguard console: live alerts over server-sent events. Plain JS, no inline script (the CSP forbids it).
// Every value from an alert is attacker-controlled text: it only ever goes into textContent.
"use strict";

(function () {
  const table = document.getElementById("alerts");
  if (!table || !window.EventSource) return;
  const body = table.tBodies[0];
  const state = document.getElementById("live-state");

  function setState(name, text) {
    if (!state) return;
    state.dataset.state = name;
    state.textContent = text;
  }

  function when(iso) {
    return String(iso || "").replace("T", " ").slice(0, 19);
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }

  function filterCell(text, key, value, cls) {
    const td = cell("", cls);
    const link = document.createElement("a");
    link.className = "filter";
    link.href = "/alerts?" + new URLSearchParams([[key, String(value || "")]]).toString();
    link.textContent = text;
    td.appendChild(link);
    return td;
  }

  function findRow(id) {
    for (const row of body.rows) {
      if (row.dataset.id === id) return row;
    }
    return null;
  }

  function bump(row) {
    row.classList.remove("bumped");
    void row.offsetWidth; // restart the highlight animation
    row.classList.add("bumped");
  }

  function addRow(a) {
    const row = document.createElement("tr");
    row.dataset.id = a.id;
    row.className = "sev-row-" + a.severity;
    row.appendChild(cell(when(a.last_seen), "last-seen"));
    const sev = cell("", "");
    const badge = document.createElement("span");
    badge.className = "sev sev-" + a.severity;
    badge.textContent = a.severity;
    sev.appendChild(badge);
    row.appendChild(sev);
    row.appendChild(filterCell(a.host, "host", a.host, ""));
    row.appendChild(filterCell(a.container_name, "container", a.container_id, "container"));
    row.appendChild(filterCell(a.policy, "policy", a.policy, ""));
    row.appendChild(cell(a.kind));
    const target = cell("", "target");
    const link = document.createElement("a");
    link.href = "/alerts/" + encodeURIComponent(a.id);
    link.textContent = a.target || a.title || "detail";
    target.appendChild(link);
    row.appendChild(target);
    row.appendChild(cell(a.action));
    row.appendChild(cell(String(a.count), "count"));
    body.insertBefore(row, body.firstChild);
    const none = document.getElementById("no-alerts");
    if (none) none.remove();
    bump(row);
  }

  function onAlert(event) {
    let a;
    try {
      a = JSON.parse(event.data);
    } catch (e) {
      return;
    }
    if (!a || typeof a.id !== "string") return;
    const row = findRow(a.id);
    if (!row) {
      addRow(a);
      return;
    }
    const count = row.querySelector(".count");
    if (count && Number(count.textContent) > a.count) return; // a late, older copy
    if (count) count.textContent = String(a.count);
    const seen = row.querySelector(".last-seen");
    if (seen) seen.textContent = when(a.last_seen);
    body.insertBefore(row, body.firstChild);
    bump(row);
  }

  const source = new EventSource(table.dataset.stream + window.location.search);
  source.addEventListener("alert", onAlert);
  source.onopen = function () { setState("live", "live"); };
  source.onerror = function () { setState("reconnecting", "reconnecting…"); };
})();
