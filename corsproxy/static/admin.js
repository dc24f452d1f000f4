// corsproxy's live page: polls /state.json once a second and rebuilds the tables.
// Every value goes in as a text node or textContent, never parsed as HTML: an Origin of
// <script> is shown as text.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "object" ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function td(value, cls) {
    return el("td", cls ? {class: cls} : {}, value === null || value === undefined ? "" : value);
  }

  function fill(id, rows, empty, span) {
    const body = document.querySelector("#" + id + " tbody");
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", {colspan: span, class: "empty"}, empty))]));
  }

  function clock(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
  }

  function rate(value) {
    return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
  }

  function spark(series, decision) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 60 20");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", decision);
    const top = Math.max(1, ...series);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", series.map((v, i) => i + "," + (19 - (v / top) * 18).toFixed(1)).join(" "));
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(line);
    const title = document.createElementNS(SVG, "title");
    title.textContent = decision + ": peak " + rate(top) + "/s in the last minute";
    svg.append(title);
    return svg;
  }

  function routes(state) {
    fill("routes", state.routes.map((r, i) => el("tr", {},
      td(i < state.routes.length - 1 ? String(i) : "—"), td(r.name, "mono"), td(r.host || "any"),
      td(r.path, "mono"), td(r.upstream, "mono"), td(r.policy, "policy"))), "no routes", 6);
  }

  function live(state) {
    const head = document.querySelector("#live thead tr");
    head.replaceChildren(el("th", {}, "route"), ...state.decisions.map((d) => el("th", {}, d)));
    fill("live", state.live.map((row) => el("tr", {}, td(row.route, "mono"),
      ...state.decisions.map((d) => {
        const cell = row.decisions[d];
        return el("td", {}, el("div", {class: "cell " + d}, spark(cell.series, d),
          el("span", {}, el("b", {}, rate(cell.rate) + "/s"), el("br"), el("i", {}, String(cell.total)))));
      }))), "no requests yet", state.decisions.length + 1);
  }

  function refusals(state) {
    fill("refusals", state.refusals.map((r) => el("tr", {},
      td(clock(r.time)), td(String(r.count), "num"), td(r.route, "mono"),
      el("td", {}, el("span", {class: "tag " + r.verdict}, r.verdict), " ", r.kind),
      td(r.origin, "mono"), td(r.request_method ? r.method + " → " + r.request_method : r.method, "mono"),
      td(r.request_headers, "mono"), td(r.reason),
      el("td", {class: "fix"}, ...r.fix.map((f) => el("div", {}, f))))),
      "no refusals since start", 9);
  }

  function reloads(state) {
    const list = document.getElementById("reloads");
    if (state.reloads === null) {
      list.replaceChildren(el("li", {class: "empty"}, "this process does not reload its config (demo)"));
      return;
    }
    if (!state.reloads.length) {
      list.replaceChildren(el("li", {class: "empty"}, "no reload since start"));
      return;
    }
    list.replaceChildren(...state.reloads.map((r) => el("li", {},
      el("span", {class: "tag " + r.result}, r.result), " ", clock(r.time), " (" + r.why + ")",
      r.result === "failure" ? el("pre", {}, r.lines.join("\n")) : el("div", {class: "changes"}, r.lines.join("; ")))));
  }

  function upstreams(state) {
    fill("upstreams", state.upstreams.map((u) => el("tr", {},
      td(u.url, "mono"), td(u.routes.join(", ")),
      td(u.recent_502 + " (" + u["502"] + ")", "num"), td(u.recent_504 + " (" + u["504"] + ")", "num"),
      td(u.last_cause ? u.last_cause + " at " + clock(u.last_time) + " (route " + u.last_route + ")" : "none"))),
      "no upstream", 5);
  }

  function render(state) {
    document.getElementById("meta").textContent = "v" + state.version + " · " +
      (state.workers > 1 ? state.workers + " workers" : "1 process") + " · " +
      state.totals.requests + " requests, " + state.totals.refused + " refused since start";
    for (const part of [routes, live, refusals, reloads, upstreams]) part(state);
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const response = await fetch("/state.json", {cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      status.textContent = "live · updated " + new Date().toLocaleTimeString();
      status.className = "status";
    } catch (error) {
      status.textContent = "disconnected: " + error.message + " (retrying)";
      status.className = "status down";
    }
    setTimeout(poll, 1000);
  }

  // The suggested rules: worked out by the server on each read (plan and render), so read
  // when the page opens, every 30 s and on "refresh", not once a second.
  function minutes(seconds) {
    return Math.round(seconds / 60) + " min";
  }

  async function suggestion() {
    const meta = document.getElementById("suggest-meta");
    const yaml = document.getElementById("suggest-yaml");
    try {
      const response = await fetch("/suggest.json", {cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const s = await response.json();
      const seen = s.first ? ", first " + clock(s.first) + ", last " + clock(s.last) : "";
      let text = s.requests + " cross-origin requests counted in the last " + minutes(s.window) +
        " (counted by the " + (s.bucket === 60 ? "minute" : minutes(s.bucket)) + seen + "), written into " + s.against +
        ", min count " + s.min_count + "; worked out at " + clock(s.now);
      if (s.untracked) text += "; " + s.untracked + " not counted (over a limit, see the comments)";
      meta.textContent = text;
      yaml.textContent = s.error || s.yaml;
      yaml.className = s.error ? "failed" : "";
    } catch (error) {
      meta.textContent = "not loaded: " + error.message + " (retrying)";
    }
  }

  async function suggestions() {
    await suggestion();
    setTimeout(suggestions, 30000);
  }

  document.getElementById("suggest-refresh").addEventListener("click", suggestion);
  poll();
  suggestions();
})();
