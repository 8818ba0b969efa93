// Aftercare web console. Plain DOM, no framework: every value from the API
// is set with textContent, never parsed as markup.
"use strict";

(function () {
  const tokenKey = "aftercare.token";
  const refreshMillis = 3000;
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") n.className = v;
      else n.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      n.append(c instanceof Node ? c : String(c));
    }
    return n;
  }

  function link(href, text) { return el("a", { href: href }, text); }

  function table(headers, rows, id) {
    const t = el("table", id ? { id: id } : {});
    t.append(el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))));
    const body = el("tbody");
    for (const r of rows) body.append(el("tr", {}, ...r.map((c) => el("td", {}, c))));
    t.append(body);
    return t;
  }

  function when(s) {
    if (!s || s.startsWith("0001-")) return "never";
    return new Date(s).toLocaleString();
  }

  function versions(v) {
    return Object.entries(v || {}).sort().map(([ver, n]) => ver + "×" + n).join(" ");
  }

  function statusCell(s) { return el("span", { class: "status-" + s }, s); }

  class HTTPError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, init) {
    const token = sessionStorage.getItem(tokenKey);
    const res = await fetch("/api/v1" + path, Object.assign({}, init, {
      headers: Object.assign({ "Authorization": "Bearer " + token, "Accept": "application/json" }, (init || {}).headers),
      credentials: "omit",
      cache: "no-store",
    }));
    let body = null;
    try { body = await res.json(); } catch (_) { /* no JSON body */ }
    if (!res.ok) {
      const msg = (body && (body.error || body.message)) || res.statusText;
      throw new HTTPError(res.status, msg);
    }
    return body;
  }

  function show(node) {
    const v = $("view");
    v.replaceChildren(node);
    v.hidden = false;
  }

  function setStatus(text) { $("status").textContent = text; }

  function signedOut(message) {
    sessionStorage.removeItem(tokenKey);
    stopRefresh();
    $("nav").hidden = true;
    $("view").hidden = true;
    $("view").replaceChildren();
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    $("token").value = "";
    setStatus("");
  }

  function stopRefresh() {
    if (timer !== null) { clearInterval(timer); timer = null; }
  }

  // Each view is an async function returning a node; views that watch live
  // state refresh every few seconds.
  const views = {
    async sites() {
      const res = await api("/patch-state");
      const rows = res.sites.map((s) => [
        link("#/site/" + encodeURIComponent(s.site.id), s.site.name),
        s.site.organisation || "",
        s.counts.total, s.counts.current, s.counts.pending, s.counts.installing, s.counts.failed,
        versions(s.counts.versions),
      ]);
      return el("div", {},
        el("h2", {}, "Patch state by site"),
        table(["Site", "Organisation", "Devices", "Current", "Pending", "Installing", "Failed", "Versions"], rows, "sites"));
    },
    async site(id) {
      const sp = await api("/sites/" + encodeURIComponent(id) + "/patch-state");
      const rows = (sp.devices || []).map((d) => [
        link("#/device/" + encodeURIComponent(d.id), d.id),
        d.serial, d.model, d.installed_version, d.target_version || "", statusCell(d.status),
        d.state || "", d.state_reason || "", when(d.last_seen),
      ]);
      const c = sp.counts;
      return el("div", {},
        el("h2", { id: "site-name" }, sp.site.name),
        el("p", { id: "site-counts" }, `${c.total} devices: ${c.current} current, ${c.pending} pending, ${c.installing} installing, ${c.failed} failed. Versions: ${versions(c.versions)}`),
        table(["Device", "Serial", "Model", "Running", "Target", "Status", "Last state", "Reason", "Last seen"], rows, "devices"));
    },
    async devices() {
      const res = await api("/devices");
      const rows = res.devices.map((d) => [
        link("#/device/" + encodeURIComponent(d.id), d.id), d.serial, d.model, d.hardware_revision,
        d.installed_version, d.state || "", when(d.last_seen),
      ]);
      return el("div", {}, el("h2", {}, "Devices"),
        table(["Device", "Serial", "Model", "HW rev", "Running", "Last state", "Last seen"], rows, "devices"));
    },
    async device(id) {
      const res = await api("/devices/" + encodeURIComponent(id));
      const d = res.device;
      const facts = el("dl", { id: "device-facts" });
      for (const [k, v] of [["Serial", d.serial], ["Model", d.model], ["Hardware revision", d.hardware_revision],
        ["Running", d.installed_version], ["Last state", d.state || ""], ["Reason", d.state_reason || ""],
        ["Last seen", when(d.last_seen)], ["Enrolled", when(d.enrolled_at)]]) {
        facts.append(el("dt", {}, k), el("dd", {}, v));
      }
      const rows = res.reports.slice().reverse().map((r) => [r.seq, r.state, r.running, r.version || "", r.reason || "", when(r.reported_at)]);
      return el("div", {}, el("h2", {}, "Device " + d.id), facts, el("h3", {}, "State history (newest first)"),
        table(["Seq", "State", "Running", "Target version", "Reason", "Reported"], rows, "reports"));
    },
    async releases() {
      const res = await api("/releases");
      const rows = res.releases.map((r) => [
        link("#/release/" + encodeURIComponent(r.id), r.product + " " + r.version),
        (r.manifest.models || []).join(", "), when(r.created_at),
      ]);
      return el("div", {}, el("h2", {}, "Releases"), table(["Release", "Models", "Published"], rows, "releases"));
    },
    async release(id) {
      const [rel, fs] = await Promise.all([
        api("/releases/" + encodeURIComponent(id)),
        api("/releases/" + encodeURIComponent(id) + "/findings"),
      ]);
      const rows = fs.findings.map((f) => [f.vuln_id, f.severity || "", f.component_name + " " + f.component_version,
        f.patched ? "patched" : "open", f.summary || ""]);
      return el("div", {}, el("h2", {}, rel.product + " " + rel.version),
        el("h3", {}, "Findings (" + fs.findings.length + ")"),
        table(["Vulnerability", "Severity", "Component", "State", "Summary"], rows, "findings"));
    },
    async exposure(vulnID) {
      const form = el("form", { id: "exposure-form" },
        el("label", { for: "vuln" }, "Are we exposed to "),
        el("input", { id: "vuln", placeholder: "CVE-2023-4863", required: "", pattern: "[A-Za-z0-9._:-]{3,64}" }),
        el("button", { type: "submit" }, "Ask"));
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        location.hash = "#/exposure/" + encodeURIComponent($("vuln").value.trim());
      });
      const out = el("div", {}, el("h2", {}, "Exposure"), form);
      if (!vulnID) return out;
      const e = await api("/vuln/exposure/" + encodeURIComponent(vulnID));
      out.querySelector("#vuln").value = vulnID;
      out.append(el("p", { id: "exposure-answer" }, e.exposed
        ? `${e.vuln_id}: exposed. ${e.totals.total} devices run an affected release.`
        : `${e.vuln_id}: no device runs an affected release${e.known ? "" : " (not in the imported feeds)"}.`));
      const rows = [];
      for (const o of e.organisations || []) {
        for (const s of o.sites) rows.push([o.organisation, s.site_name, s.counts.total, s.counts.current, s.counts.pending, s.counts.failed]);
      }
      out.append(table(["Organisation", "Site", "Exposed devices", "Current", "Pending", "Failed"], rows, "exposure"));
      return out;
    },
  };

  const live = new Set(["sites", "site", "devices", "device"]);

  let generation = 0;

  async function render() {
    stopRefresh();
    const mine = ++generation;
    if (!sessionStorage.getItem(tokenKey)) { signedOut(); return; }
    $("signin").hidden = true;
    $("nav").hidden = false;
    const [, name, arg] = (location.hash || "#/sites").split("/");
    const view = views[name] ? name : "sites";
    const draw = async () => {
      try {
        show(await views[view](arg ? decodeURIComponent(arg) : ""));
        setStatus("Updated " + new Date().toLocaleTimeString());
      } catch (err) {
        if (err.status === 401) { signedOut("That token was not accepted."); return; }
        setStatus("Error: " + err.message);
      }
    };
    await draw();
    // A newer render (another hash change) owns the refresh timer.
    if (mine === generation && live.has(view) && sessionStorage.getItem(tokenKey)) timer = setInterval(draw, refreshMillis);
  }

  async function signIn(ev) {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(tokenKey, token);
    try {
      await api("/sites");
    } catch (err) {
      signedOut(err.status === 401 ? "That token was not accepted." : "Sign-in failed: " + err.message);
      return;
    }
    $("signin-error").textContent = "";
    if (!location.hash) location.hash = "#/sites";
    render();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => { signedOut(); location.hash = ""; });
    window.addEventListener("hashchange", render);
    render();
  });
})();
