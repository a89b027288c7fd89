/* Aqueduct console: one page, hash routes, the edge's own API, no build step.
 *
 * The key lives in sessionStorage (this tab only) and travels only in the
 * Authorization header. Everything shown is built with textContent, never
 * innerHTML, so names and ids from the API cannot inject markup.
 */
(function () {
  "use strict";

  const KEY_STORAGE = "aqueduct.console.key";
  const LIMITS = ["rpm", "input_tpm", "output_tpm", "max_concurrent"];
  const FRAMES = { "1h": 3600, "1d": 86400, "1w": 7 * 86400 };
  const AUTO_BUCKET = { "1h": "minute", "1d": "hour", "1w": "day" };
  const PALETTE = ["#0b5cad", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#4338ca"];

  let session = null;
  const charts = [];
  const usageFilters = { team: "", key_id: "", frame: "1d", bucket: "auto", since: "", until: "" };

  // --- small helpers -------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name === "text") node.textContent = value;
      else if (value === true) node.setAttribute(name, "");
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const $ = (id) => document.getElementById(id);
  const fmtInt = (n) => Number(n || 0).toLocaleString("en-US");
  const fmtMs = (n) => (n ? `${Number(n).toLocaleString("en-US", { maximumFractionDigits: 1 })} ms` : "–");
  const fmtTime = (s) => (s ? new Date(s * 1000).toLocaleString() : "–");
  const fmtLimits = (limits) => {
    const set = LIMITS.filter((name) => limits && limits[name] !== null && limits[name] !== undefined);
    return set.length ? set.map((name) => `${name} ${fmtInt(limits[name])}`).join(", ") : "unlimited";
  };
  const plural = (n, word) => `${fmtInt(n)} ${word}${n === 1 ? "" : "s"}`;
  const fmtModels = (models) => (models === null || models === undefined ? "all models" : models.join(", ") || "none");

  function say(message, kind) {
    const box = $("status");
    box.replaceChildren();
    if (message) box.append(el("p", { class: kind || "info", text: message }));
  }

  function table(caption, headers, rows, options) {
    const head = el("tr", {}, headers.map((h) => el("th", { scope: "col", class: h.num ? "num" : null, text: h.label || h })));
    const body = rows.length
      ? rows
      : [el("tr", {}, el("td", { colspan: headers.length, class: "muted", text: (options && options.empty) || "Nothing here yet." }))];
    return el("div", { class: "table-wrap" },
      el("table", { id: options && options.id }, el("caption", { text: caption }), el("thead", {}, head), el("tbody", {}, body)));
  }

  function cell(value, num) {
    return el("td", { class: num ? "num" : null }, value);
  }

  function confirmAction(text, ok) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = ok;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
    });
  }

  // --- the API -------------------------------------------------------------

  async function api(path, options) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    const init = { method: (options && options.method) || "GET", headers: { Authorization: `Bearer ${key}` } };
    if (options && options.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    let payload = null;
    try {
      payload = await response.json();
    } catch (_) {
      payload = null;
    }
    if (response.status === 401 && path !== "/v1/console/session") {
      signOut("Your key is no longer accepted (revoked or expired). Sign in again.");
    }
    if (!response.ok) {
      const error = new Error((payload && payload.error && payload.error.message) || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return payload;
  }

  // --- sign in and out -----------------------------------------------------

  async function signIn(key) {
    sessionStorage.setItem(KEY_STORAGE, key);
    try {
      session = await api("/v1/console/session");
    } catch (error) {
      sessionStorage.removeItem(KEY_STORAGE);
      session = null;
      throw error;
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    session = null;
    for (const chart of charts.splice(0)) chart.destroy();
    if (location.hash !== "#/sign-in") location.hash = "#/sign-in";
    else render();
    say(message || "", message ? "error" : "info");
  }

  function showChrome() {
    const signedIn = Boolean(session);
    $("nav").hidden = !signedIn;
    $("who").hidden = !signedIn;
    $("sign-in").hidden = signedIn;
    $("page").hidden = !signedIn;
    if (!signedIn) return;
    const role = session.admin ? "admin" : `team ${session.team}`;
    $("who-name").textContent = `${session.name} (${role})`;
    for (const link of document.querySelectorAll("#nav a")) {
      const page = link.dataset.page;
      if (currentPage() === page) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function currentPage() {
    const page = location.hash.replace(/^#\//, "").split("?")[0];
    return PAGES[page] ? page : "usage";
  }

  // --- pages ---------------------------------------------------------------

  async function render() {
    for (const chart of charts.splice(0)) chart.destroy();
    if (!session) {
      showChrome();
      document.title = "Sign in · Aqueduct console";
      $("sign-in-key").focus();
      return;
    }
    showChrome();
    const page = currentPage();
    const root = $("page");
    root.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
    document.title = `${PAGES[page].title} · Aqueduct console`;
    try {
      await PAGES[page].draw(root);
    } catch (error) {
      root.replaceChildren(el("h1", { text: PAGES[page].title }));
      say(error.message, "error");
    }
  }

  // Usage --------------------------------------------------------------------

  function usageQuery() {
    const params = new URLSearchParams();
    let since;
    let until;
    if (usageFilters.frame === "custom" && usageFilters.since && usageFilters.until) {
      since = Math.floor(new Date(usageFilters.since).getTime() / 1000);
      until = Math.floor(new Date(usageFilters.until).getTime() / 1000);
    } else {
      until = Math.ceil(Date.now() / 1000);
      since = until - (FRAMES[usageFilters.frame] || FRAMES["1d"]);
    }
    let bucket = usageFilters.bucket;
    if (bucket === "auto") {
      const span = until - since;
      bucket = AUTO_BUCKET[usageFilters.frame] || (span <= 6 * 3600 ? "minute" : span <= 14 * 86400 ? "hour" : "day");
    }
    params.set("since", since);
    params.set("until", until);
    params.set("bucket", bucket);
    if (usageFilters.team) params.set("team", usageFilters.team);
    if (usageFilters.key_id) params.set("key_id", usageFilters.key_id);
    return { params, since, until, bucket };
  }

  function select(id, label, options, value, onchange, disabled) {
    return el("div", {},
      el("label", { for: id, text: label }),
      el("select", { id, onchange, disabled },
        options.map(([v, text]) => el("option", { value: v, selected: v === value, text }))));
  }

  function chart(canvas, config) {
    if (!window.Chart) return;
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    for (const dataset of config.data.datasets) dataset.maxBarThickness = 48;
    charts.push(new window.Chart(canvas, config));
  }

  function chartPanel(title, id, description, wide) {
    const canvas = el("canvas", { id, role: "img", "aria-label": description });
    return [el("section", { class: `panel${wide ? " wide" : ""}`, "aria-labelledby": `${id}-title` },
      el("h2", { id: `${id}-title`, text: title }), el("div", { class: "chart-box" }, canvas)), canvas];
  }

  function bucketLabels(report, since, until) {
    const width = { minute: 60, hour: 3600, day: 86400 }[report.bucket];
    const byStart = new Map(report.series.map((b) => [b.start, b]));
    const labels = [];
    const requests = [];
    const failed = [];
    for (let start = Math.floor(since / width) * width; start < until; start += width) {
      const b = byStart.get(start);
      const when = new Date(start * 1000);
      labels.push(report.bucket === "day" ? when.toLocaleDateString() : when.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" }));
      requests.push(b ? b.requests : 0);
      failed.push(b ? b.failed_requests : 0);
    }
    return { labels, requests, failed };
  }

  async function drawUsage(root) {
    const keys = (await api("/v1/console/keys")).data;
    const keyName = new Map(keys.map((k) => [k.id, `${k.name} (${k.preview})`]));
    const teams = [...new Set(keys.map((k) => k.team))].sort();
    const { params, since, until } = usageQuery();
    const report = await api(`/v1/console/usage?${params}`);
    const s = report.summary;

    const teamOptions = session.admin ? [["", "All teams"], ...teams.map((t) => [t, t])] : [[session.team, session.team]];
    const keyOptions = [["", "All keys"], ...keys.filter((k) => !usageFilters.team || k.team === usageFilters.team).map((k) => [k.id, keyName.get(k.id)])];
    const refresh = () => render();
    const filters = el("form", { class: "panel grid", "aria-label": "Usage filters", onsubmit: (e) => { e.preventDefault(); refresh(); } },
      select("f-team", "Team", teamOptions, session.admin ? usageFilters.team : session.team, (e) => { usageFilters.team = e.target.value; usageFilters.key_id = ""; refresh(); }, !session.admin),
      select("f-key", "Key", keyOptions, usageFilters.key_id, (e) => { usageFilters.key_id = e.target.value; refresh(); }),
      select("f-frame", "Time frame", [["1h", "Last hour"], ["1d", "Last day"], ["1w", "Last week"], ["custom", "Custom"]], usageFilters.frame, (e) => {
        usageFilters.frame = e.target.value;
        if (usageFilters.frame === "custom" && !usageFilters.since) {
          const local = (t) => new Date(t * 1000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
          usageFilters.until = local(Math.ceil(until / 60) * 60); // minutes: round up, keep now in
          usageFilters.since = local(since);
        }
        refresh();
      }),
      usageFilters.frame === "custom" ? el("div", {}, el("label", { for: "f-since", text: "From" }),
        el("input", { id: "f-since", type: "datetime-local", value: usageFilters.since, onchange: (e) => { usageFilters.since = e.target.value; } })) : null,
      usageFilters.frame === "custom" ? el("div", {}, el("label", { for: "f-until", text: "To" }),
        el("input", { id: "f-until", type: "datetime-local", value: usageFilters.until, onchange: (e) => { usageFilters.until = e.target.value; } })) : null,
      select("f-bucket", "Buckets", [["auto", "Automatic"], ["minute", "Per minute"], ["hour", "Per hour"], ["day", "Per day"]], usageFilters.bucket, (e) => { usageFilters.bucket = e.target.value; refresh(); }),
      el("div", {}, el("button", { type: "submit", text: "Refresh" })));

    const metric = (label, value, id) => el("div", { class: "metric" }, el("dt", { text: label }), el("dd", { id, text: value }));
    const metrics = el("dl", { class: "metrics", "aria-label": "Totals for the chosen range" },
      metric("Requests", fmtInt(s.requests), "m-requests"),
      metric("Failed requests", fmtInt(s.failed_requests), "m-failed"),
      metric("Avg latency, completions", fmtMs(s.avg_completion_latency_ms), "m-latency"),
      metric("Avg latency, embeddings", fmtMs(s.avg_embedding_latency_ms), "m-embedding-latency"),
      metric("Avg time to first token", fmtMs(s.avg_ttft_ms), "m-ttft"),
      metric("Input tokens", fmtInt(s.input_tokens), "m-input"),
      metric("Output tokens", fmtInt(s.output_tokens), "m-output"),
      metric("Total tokens", fmtInt(s.total_tokens), "m-total"));

    const series = bucketLabels(report, since, until);
    const [overTime, overTimeCanvas] = chartPanel(`Requests over time (per ${report.bucket})`, "c-time", `Requests per ${report.bucket}: ${fmtInt(s.requests)} in all`, true);
    const byTeam = session.admin && !usageFilters.team && !usageFilters.key_id;
    const top = byTeam ? report.top_teams : report.top_keys;
    const topName = (row) => (byTeam ? row.team : keyName.get(row.key_id) || row.key_id);
    const [topPanel, topCanvas] = chartPanel(byTeam ? "Top teams" : "Top keys", "c-top", `Requests by ${byTeam ? "team" : "key"}`);
    const [modelPanel, modelCanvas] = chartPanel("Requests by model", "c-models", "Requests by model, models without requests included");

    const groupRows = (rows, name) => rows.map((row) => el("tr", {},
      el("th", { scope: "row", text: name(row) }), cell(fmtInt(row.requests), 1), cell(fmtInt(row.failed_requests), 1),
      cell(fmtInt(row.input_tokens), 1), cell(fmtInt(row.output_tokens), 1), cell(fmtInt(row.total_tokens), 1), cell(fmtMs(row.avg_completion_latency_ms), 1)));
    const groupHead = (first) => [first, { label: "Requests", num: 1 }, { label: "Failed", num: 1 }, { label: "Input tokens", num: 1 },
      { label: "Output tokens", num: 1 }, { label: "Total tokens", num: 1 }, { label: "Avg latency", num: 1 }];

    const parts = [
      el("h1", { text: report.team ? `Usage: team ${report.team}` : "Usage: all teams" }),
      filters, metrics,
      overTime, el("div", { class: "charts" }, topPanel, modelPanel),
      table(byTeam ? "Top teams" : "Top keys", groupHead(byTeam ? "Team" : "Key"), groupRows(top, topName), { id: "t-top" }),
      table("Requests by model", groupHead("Model"), groupRows(report.models, (r) => r.model), { id: "t-models" }),
    ];
    if (usageFilters.key_id) {
      parts.push(table(`Requests by user (the request's "user" field) for ${keyName.get(usageFilters.key_id) || usageFilters.key_id}`,
        groupHead("User"), groupRows(report.users, (r) => r.user || "(no user)"), { id: "t-users", empty: "No requests from this key in the range." }));
    } else {
      parts.push(el("p", { class: "muted", text: "Choose one key to break its requests down by the request's user field." }));
    }
    root.replaceChildren(...parts);

    chart(overTimeCanvas, {
      type: "bar",
      data: { labels: series.labels, datasets: [
        { label: "Requests", data: series.requests, backgroundColor: PALETTE[0] },
        { label: "Failed", data: series.failed, backgroundColor: PALETTE[4] },
      ] },
      options: { scales: { x: { stacked: false, ticks: { maxTicksLimit: 12 } }, y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    chart(topCanvas, {
      type: "bar",
      data: { labels: top.map(topName), datasets: [{ label: "Requests", data: top.map((r) => r.requests), backgroundColor: PALETTE[1] }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    chart(modelCanvas, {
      type: "bar",
      data: { labels: report.models.map((r) => r.model), datasets: [
        { label: "Requests", data: report.models.map((r) => r.requests), backgroundColor: PALETTE[2] },
      ] },
      options: { plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
  }

  // Keys ---------------------------------------------------------------------

  function limitInputs(prefix, limits) {
    return LIMITS.map((name) => el("div", {},
      el("label", { for: `${prefix}-${name}`, text: `${name} (empty: unlimited)` }),
      el("input", { id: `${prefix}-${name}`, type: "number", min: 1, step: 1, value: limits && limits[name] !== null ? limits[name] : "" })));
  }

  function readLimits(prefix) {
    const limits = {};
    for (const name of LIMITS) {
      const raw = $(`${prefix}-${name}`).value.trim();
      limits[name] = raw === "" ? null : Number(raw);
    }
    return limits;
  }

  function readModels(id) {
    const raw = $(id).value.trim();
    return raw === "" ? null : raw.split(",").map((m) => m.trim()).filter(Boolean);
  }

  function readExpiry(id) {
    const raw = $(id).value;
    return raw ? Math.floor(new Date(raw).getTime() / 1000) : null;
  }

  function localInput(seconds) {
    if (!seconds) return "";
    return new Date(seconds * 1000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }

  function keyForm(prefix, key, submitLabel, onsubmit) {
    return el("form", { class: "panel", id: `${prefix}-form`, onsubmit },
      el("div", { class: "grid" },
        el("div", {}, el("label", { for: `${prefix}-name`, text: "Name" }), el("input", { id: `${prefix}-name`, type: "text", required: true, value: key ? key.name : "" })),
        el("div", {}, el("label", { for: `${prefix}-team`, text: "Team (empty: its own)" }), el("input", { id: `${prefix}-team`, type: "text", value: key ? key.team : "" })),
        el("div", {}, el("label", { for: `${prefix}-models`, text: "Models, comma-separated (empty: all)" }), el("input", { id: `${prefix}-models`, type: "text", value: key && key.models ? key.models.join(", ") : "" })),
        el("div", {}, el("label", { for: `${prefix}-expires`, text: "Expires (empty: never)" }), el("input", { id: `${prefix}-expires`, type: "datetime-local", value: localInput(key && key.expires_at) })),
        ...limitInputs(prefix, key && key.limits),
        el("div", { class: "check" }, el("input", { id: `${prefix}-admin`, type: "checkbox", checked: Boolean(key && key.admin) }), el("label", { for: `${prefix}-admin`, text: "Admin key" }))),
      el("button", { type: "submit", text: submitLabel }));
  }

  function keySpec(prefix) {
    const spec = {
      name: $(`${prefix}-name`).value.trim(),
      models: readModels(`${prefix}-models`),
      expires_at: readExpiry(`${prefix}-expires`),
      limits: readLimits(prefix),
      admin: $(`${prefix}-admin`).checked,
    };
    const team = $(`${prefix}-team`).value.trim();
    if (team) spec.team = team;
    return spec;
  }

  async function drawKeys(root) {
    const keys = (await api("/v1/console/keys")).data;
    const headers = ["Name", "Preview", "Team", "Models", "Limits", "Expires", "Last used", "State"];
    if (session.admin) headers.push("Actions");
    const rows = keys.map((k) => el("tr", { class: k.revoked ? "revoked" : null, "data-key-id": k.id },
      el("th", { scope: "row", text: k.name }), cell(el("code", { text: k.preview })), cell(k.team), cell(fmtModels(k.models)),
      cell(fmtLimits(k.limits)), cell(fmtTime(k.expires_at)), cell(fmtTime(k.last_used_at)),
      el("td", { class: "state" }, el("span", { class: `tag ${k.revoked ? "bad" : "ok"}`, text: k.revoked ? "revoked" : "active" }), k.admin ? el("span", { class: "tag warn", text: "admin" }) : null),
      session.admin ? el("td", { class: "actions" },
        el("button", { type: "button", class: "small secondary", "aria-label": `Edit ${k.name}`, text: "Edit", onclick: () => editKey(root, k) }),
        k.revoked ? null : el("button", { type: "button", class: "small danger", "aria-label": `Revoke ${k.name}`, text: "Revoke", onclick: () => revokeKey(k) })) : null));
    const parts = [el("h1", { text: session.admin ? "Keys" : `Keys of team ${session.team}` })];
    if (session.admin) {
      parts.push(el("details", { class: "panel", id: "create-key" }, el("summary", { text: "Create a key" }),
        keyForm("new", null, "Create key", async (e) => {
          e.preventDefault();
          try {
            const created = await api("/v1/admin/keys", { method: "POST", body: keySpec("new") });
            await render(); // the list with the new key, the form empty again
            showSecret(created);
          } catch (error) {
            say(error.message, "error");
          }
        })));
    }
    parts.push(el("div", { id: "secret-slot" }), el("div", { id: "edit-slot" }));
    parts.push(table(plural(keys.length, "key"), headers, rows, { id: "keys-table" }));
    root.replaceChildren(...parts);
  }

  function showSecret(created) {
    say(`Created key ${created.name}.`, "info");
    const slot = $("secret-slot");
    const code = el("code", { id: "new-secret", text: created.key });
    const copy = el("button", { type: "button", id: "copy-secret", text: "Copy", onclick: async () => {
      try {
        await navigator.clipboard.writeText(created.key);
        copy.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(code);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        copy.textContent = "Selected: press Ctrl+C";
      }
    } });
    const done = el("button", { type: "button", class: "secondary", text: "I have stored it", onclick: () => {
      slot.replaceChildren();
      $("main").focus();
    } });
    slot.replaceChildren(el("section", { class: "panel", "aria-labelledby": "secret-title" },
      el("h2", { id: "secret-title", text: `Secret of ${created.name}: shown once` }),
      el("p", { text: "Store it now: it cannot be shown again. Only its preview is kept." }),
      el("div", { class: "secret" }, code, copy, done)));
    copy.focus();
  }

  function editKey(root, key) {
    const slot = $("edit-slot");
    slot.replaceChildren(el("section", { class: "panel", "aria-labelledby": "edit-title" },
      el("h2", { id: "edit-title", text: `Edit ${key.name}` }),
      keyForm("edit", key, "Save changes", async (e) => {
        e.preventDefault();
        try {
          await api(`/v1/admin/keys/${encodeURIComponent(key.id)}`, { method: "PATCH", body: keySpec("edit") });
          say(`Saved ${key.name}.`, "info");
          await render();
        } catch (error) {
          say(error.message, "error");
        }
      }),
      el("button", { type: "button", class: "secondary", text: "Cancel", onclick: () => slot.replaceChildren() })));
    $("edit-name").focus();
  }

  async function revokeKey(key) {
    if (!(await confirmAction(`Revoke ${key.name} (${key.preview})? Every request with it will be refused within a second. This cannot be undone.`, "Revoke"))) return;
    try {
      await api(`/v1/admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      say(`Revoked ${key.name}.`, "info");
      await render();
    } catch (error) {
      say(error.message, "error");
    }
  }

  // Teams --------------------------------------------------------------------

  async function drawTeams(root) {
    const keys = (await api("/v1/console/keys")).data;
    const names = session.admin ? [...new Set(keys.map((k) => k.team))].sort() : [session.team];
    const parts = [el("h1", { text: session.admin ? "Teams" : "Your team" })];
    for (const team of names) {
      const limits = session.admin
        ? (await api(`/v1/admin/teams/${encodeURIComponent(team)}`)).limits
        : session.team_limits;
      const members = keys.filter((k) => k.team === team);
      const prefix = `team-${names.indexOf(team)}`;
      const section = el("section", { class: "panel", "aria-labelledby": `${prefix}-title` },
        el("h2", { id: `${prefix}-title`, text: `Team ${team}` }),
        el("p", {}, "Limits shared by its keys: ", el("strong", { text: fmtLimits(limits) })));
      if (session.admin) {
        section.append(el("form", { onsubmit: async (e) => {
          e.preventDefault();
          try {
            await api(`/v1/admin/teams/${encodeURIComponent(team)}`, { method: "PUT", body: { limits: readLimits(prefix) } });
            say(`Saved the limits of team ${team}.`, "info");
            await render();
          } catch (error) {
            say(error.message, "error");
          }
        } }, el("div", { class: "grid" }, ...limitInputs(prefix, limits)), el("button", { type: "submit", text: `Save limits of ${team}` })));
      }
      section.append(table(`Keys of ${team}`, ["Name", "Preview", "Models", "Limits", "Last used", "State"],
        members.map((k) => el("tr", { class: k.revoked ? "revoked" : null }, el("th", { scope: "row", text: k.name }), cell(el("code", { text: k.preview })),
          cell(fmtModels(k.models)), cell(fmtLimits(k.limits)), cell(fmtTime(k.last_used_at)),
          el("td", { class: "state" }, el("span", { class: `tag ${k.revoked ? "bad" : "ok"}`, text: k.revoked ? "revoked" : "active" }))))));
      parts.push(section);
    }
    root.replaceChildren(...parts);
  }

  // Models -------------------------------------------------------------------

  async function drawModels(root) {
    const [models, keys] = await Promise.all([api("/v1/console/models"), api("/v1/console/keys")]);
    const active = keys.data.filter((k) => !k.revoked);
    const health = (m) => {
      if (m.backend !== "openai") return el("span", { class: "tag ok", text: "bundled, in process" });
      return el("ul", { class: "plain" }, m.upstreams.map((u) => el("li", {},
        el("span", { class: `tag ${u.state === "closed" ? "ok" : u.state === "open" ? "bad" : "warn"}`, text: u.state === "closed" ? "serving" : u.state === "open" ? "ejected" : "probing" }),
        ` ${u.label} · ${fmtInt(u.in_flight)} in flight · ${fmtInt(u.failures)} failures`)));
    };
    const allowedKeys = (m) => {
      const names = active.filter((k) => k.models === null || k.models.includes(m.id) || k.models.includes(m.root)).map((k) => k.name);
      return names.length === active.length ? `every key (${names.length})` : names.join(", ") || "no key";
    };
    root.replaceChildren(
      el("h1", { text: "Models" }),
      el("p", { class: "muted", text: session.models ? `This key may use: ${session.models.join(", ")}.` : "This key may use every model." }),
      table("Models and their upstreams", ["Model", "Serves as", "Backend", "Capabilities", "Upstream health", "Keys that may use it"],
        models.data.map((m) => el("tr", {}, el("th", { scope: "row", text: m.id }), cell(m.root === m.id ? "–" : `alias of ${m.root}`),
          cell(m.backend), cell(m.capabilities.join(", ") || "text"), cell(health(m)), cell(allowedKeys(m)))), { id: "models-table" }));
  }

  // Files and batches ----------------------------------------------------------

  function inspect(slot, title, object) {
    slot.replaceChildren(el("section", { class: "panel", "aria-labelledby": "inspect-title" },
      el("h2", { id: "inspect-title", text: title }), el("pre", { text: JSON.stringify(object, null, 2) }),
      el("button", { type: "button", class: "secondary", text: "Close", onclick: () => slot.replaceChildren() })));
    slot.querySelector("button").focus();
  }

  async function drawFiles(root) {
    const files = (await api("/v1/files?limit=10000")).data;
    const slot = el("div", { id: "inspect-slot" });
    root.replaceChildren(el("h1", { text: `Files of team ${session.team}` }), slot,
      table(plural(files.length, "file"), ["File", "Id", "Purpose", { label: "Bytes", num: 1 }, "Created", "Expires", "Actions"],
        files.map((f) => el("tr", {}, el("th", { scope: "row", text: f.filename }), cell(el("code", { text: f.id })), cell(f.purpose),
          cell(fmtInt(f.bytes), 1), cell(fmtTime(f.created_at)), cell(fmtTime(f.expires_at)),
          el("td", { class: "actions" },
            el("button", { type: "button", class: "small secondary", "aria-label": `Inspect ${f.filename}`, text: "Inspect", onclick: async () => inspect(slot, f.filename, await api(`/v1/files/${encodeURIComponent(f.id)}`)) }),
            el("button", { type: "button", class: "small danger", "aria-label": `Delete ${f.filename}`, text: "Delete", onclick: async () => {
              if (!(await confirmAction(`Delete ${f.filename} (${f.id})? Batches and chats that name it will no longer find it.`, "Delete"))) return;
              try {
                await api(`/v1/files/${encodeURIComponent(f.id)}`, { method: "DELETE" });
                say(`Deleted ${f.filename}.`, "info");
                await render();
              } catch (error) {
                say(error.message, "error");
              }
            } })))), { id: "files-table", empty: "No files." }));
  }

  async function drawBatches(root) {
    const batches = (await api("/v1/batches?limit=100")).data;
    const slot = el("div", { id: "inspect-slot" });
    const running = new Set(["validating", "in_progress", "finalizing"]);
    root.replaceChildren(el("h1", { text: `Batches of team ${session.team}` }), slot,
      table(`${plural(batches.length, "batch").replace("batchs", "batches")}, most recent first`, ["Batch", "Endpoint", "Status", { label: "Done / total", num: 1 }, { label: "Failed", num: 1 }, "Created", "Actions"],
        batches.map((b) => el("tr", {}, el("th", { scope: "row" }, el("code", { text: b.id })), cell(b.endpoint), cell(b.status),
          cell(`${fmtInt(b.request_counts && b.request_counts.completed)} / ${fmtInt(b.request_counts && b.request_counts.total)}`, 1),
          cell(fmtInt(b.request_counts && b.request_counts.failed), 1), cell(fmtTime(b.created_at)),
          el("td", { class: "actions" },
            el("button", { type: "button", class: "small secondary", "aria-label": `Inspect ${b.id}`, text: "Inspect", onclick: async () => inspect(slot, b.id, await api(`/v1/batches/${encodeURIComponent(b.id)}`)) }),
            running.has(b.status) ? el("button", { type: "button", class: "small danger", "aria-label": `Cancel ${b.id}`, text: "Cancel", onclick: async () => {
              if (!(await confirmAction(`Cancel batch ${b.id}? Lines already answered stay answered.`, "Cancel batch"))) return;
              try {
                await api(`/v1/batches/${encodeURIComponent(b.id)}/cancel`, { method: "POST" });
                say(`Cancelling ${b.id}.`, "info");
                await render();
              } catch (error) {
                say(error.message, "error");
              }
            } }) : null))), { id: "batches-table", empty: "No batches." }));
  }

  const PAGES = {
    usage: { title: "Usage", draw: drawUsage },
    keys: { title: "Keys", draw: drawKeys },
    teams: { title: "Teams", draw: drawTeams },
    models: { title: "Models", draw: drawModels },
    files: { title: "Files", draw: drawFiles },
    batches: { title: "Batches", draw: drawBatches },
  };

  // --- start -------------------------------------------------------------------

  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("sign-in-key");
    const key = input.value.trim();
    input.value = "";
    try {
      await signIn(key);
      say("", "info");
      if (location.hash === "" || location.hash === "#/sign-in") location.hash = "#/usage";
      else await render();
      $("main").focus();
    } catch (error) {
      say(`Sign-in failed: ${error.message}`, "error");
      input.focus();
    }
  });
  $("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", async () => {
    say("", "info");
    await render();
  });

  (async function start() {
    if (sessionStorage.getItem(KEY_STORAGE)) {
      try {
        session = await api("/v1/console/session");
      } catch (_) {
        sessionStorage.removeItem(KEY_STORAGE);
        session = null;
      }
    }
    await render();
  })();
})();
