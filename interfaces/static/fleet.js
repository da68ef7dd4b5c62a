// The live fleet page: load the JSON API once, then apply the change feed as it arrives.
// Every value from the data goes into the page as text (textContent), never as markup.
"use strict";

(() => {
  const MULTIPLIER = 3; // the daemon's default liveness multiplier: ONLINE within 3 heartbeats
  const MAX_WORKER_ROWS = 300;
  const MAX_FAILURES = 15;
  const HOLDING = new Set(["PENDING", "RUNNING"]);
  const FAILING = new Set(["FAILED", "CRASHED"]);
  const STATUS_ORDER = { ONLINE: 0, OFFLINE: 1, STOPPED: 2 };
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    workers: new Map(), // id -> WorkerWithStatus
    holders: new Map(), // task -> {task, status, pool, queue, worker}
    pools: new Map(), // name -> PoolView (plus status, where the API gives one)
    queues: new Map(), // pool + "\u0000" + queue -> QueueView
    failures: new Map(), // task -> TaskView
    util: [],
  };
  const changed = new Set(); // workers touched by the feed since the last render
  let loaded = false;
  let early = []; // feed items that arrived while loading
  let renderQueued = false;

  // --- small helpers -------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (seconds < 60) return `${seconds}s ago`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes}m ${String(seconds % 60).padStart(2, "0")}s ago`;
    return `${Math.floor(minutes / 60)}h ${String(minutes % 60).padStart(2, "0")}m ago`;
  }

  function clock(iso) {
    return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "";
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (response.status === 401) askForToken();
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // Parts of the API may be missing on an older daemon: the page shows what it can.
  async function optional(path) {
    try {
      return await getJSON(path);
    } catch (error) {
      console.warn("workledger page:", error.message);
      return null;
    }
  }

  // --- the model -----------------------------------------------------------------------

  function queueKey(pool, queue) {
    return `${pool}\u0000${queue}`;
  }

  function setTask(view, ids) {
    if (HOLDING.has(view.status)) {
      state.holders.set(view.task, {
        task: view.task,
        status: view.status,
        pool: ids.pool ?? view.pool,
        queue: view.queue,
        worker: view.worker,
      });
    } else {
      state.holders.delete(view.task);
    }
    if (FAILING.has(view.status)) state.failures.set(view.task, { ...view, pool: ids.pool ?? view.pool });
  }

  function apply(item) {
    const view = item.view;
    if (!view) return;
    if (item.entity === "worker") {
      state.workers.set(item.worker, view);
      changed.add(item.worker);
    } else if (item.entity === "task") {
      setTask(view, item);
      if (item.worker) changed.add(item.worker);
    } else if (item.entity === "pool") {
      state.pools.set(view.pool, { ...state.pools.get(view.pool), ...view });
    } else if (item.entity === "queue") {
      state.queues.set(queueKey(view.pool, view.queue), view);
    }
  }

  async function load() {
    loaded = false;
    const [workers, slots, pools, queues, failed, crashed] = await Promise.all([
      optional("/v1/workers?limit=10000"),
      optional("/v1/slots"),
      optional("/v1/pools"),
      optional("/v1/queues"),
      optional(`/v1/tasks?status=FAILED&limit=${MAX_FAILURES}`),
      optional(`/v1/tasks?status=CRASHED&limit=${MAX_FAILURES}`),
    ]);
    state.workers = new Map((workers ?? []).map((w) => [w.worker.worker, w]));
    state.holders = new Map((slots?.holders ?? []).map((h) => [h.task, h]));
    state.pools = new Map((pools ?? []).map((p) => [p.pool, p]));
    state.queues = new Map((queues ?? []).map((q) => [queueKey(q.pool, q.queue), q]));
    state.failures = new Map([...(failed ?? []), ...(crashed ?? [])].map((t) => [t.task, t]));
    loaded = true;
    early.forEach(apply);
    early = [];
    schedule();
  }

  async function loadUtilization() {
    const rows = await optional("/v1/utilization?bucket=1m&since=-1h");
    if (rows) state.util = rows;
    schedule();
  }

  // --- the live feed -------------------------------------------------------------------

  function setFeed(kind, label) {
    $("feed-state").dataset.state = kind;
    $("feed-label").textContent = label ?? kind;
  }

  let feed = null; // the EventSource
  let retry = null; // the timer that reconnects it

  function connect() {
    const source = new EventSource("/v1/feed");
    feed = source;
    source.addEventListener("ready", () => setFeed("live"));
    source.addEventListener("gap", () => load()); // the daemon no longer has what we missed
    source.addEventListener("lagged", () => setFeed("connecting", "catching up"));
    source.onmessage = (message) => {
      const item = JSON.parse(message.data);
      $("feed-seq").textContent = `#${item.seq}`;
      if (loaded) apply(item);
      else early.push(item);
      schedule();
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setFeed("offline", "offline, retrying");
        retry = setTimeout(connect, 5000); // the browser gives up on an HTTP error: we do not
      } else {
        setFeed("connecting", "reconnecting");
      }
    };
  }

  // --- signing in: a daemon started with an API token ------------------------------------
  // An EventSource cannot send an Authorization header, so the page trades the token for an
  // HttpOnly session cookie once (POST /v1/session); the token itself is never stored.

  function askForToken() {
    setFeed("offline", "this daemon wants an API token");
    $("signin").hidden = false;
  }

  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value;
    $("token").value = "";
    const response = await fetch("/v1/session", {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!response.ok) {
      $("signin-error").textContent = response.status === 401 ? "wrong token" : `HTTP ${response.status}`;
      return;
    }
    $("signin").hidden = true;
    $("signin-error").textContent = "";
    if (feed === null || feed.readyState === EventSource.CLOSED) {
      clearTimeout(retry);
      connect();
    }
    load();
    loadUtilization();
  }

  // --- rendering -----------------------------------------------------------------------

  function schedule() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  // Status ages on the page between events: a worker silent for too long goes OFFLINE.
  function statusOf(w) {
    if (w.status !== "ONLINE" || !w.worker.last_seen) return w.status;
    const silentFor = (Date.now() - Date.parse(w.worker.last_seen)) / 1000;
    return silentFor > w.worker.heartbeat_interval * MULTIPLIER ? "OFFLINE" : "ONLINE";
  }

  function tasksByWorker() {
    const by = new Map();
    for (const holder of state.holders.values()) {
      if (!holder.worker) continue;
      if (!by.has(holder.worker)) by.set(holder.worker, []);
      by.get(holder.worker).push(holder);
    }
    for (const list of by.values()) list.sort((a, b) => a.task.localeCompare(b.task));
    return by;
  }

  function render() {
    const held = tasksByWorker();
    renderTiles();
    renderPools();
    renderWorkers(held);
    renderFailures();
    renderSparkline();
    changed.clear();
  }

  function renderTiles() {
    const workers = [...state.workers.values()];
    const online = workers.filter((w) => statusOf(w) === "ONLINE");
    const holders = [...state.holders.values()];
    const slots = online.reduce((sum, w) => sum + w.worker.slots, 0);
    $("tile-online").textContent = `${online.length} / ${workers.length}`;
    $("tile-held").textContent = `${holders.length} / ${slots}`;
    $("tile-running").textContent = holders.filter((h) => h.status === "RUNNING").length;
    $("tile-pending").textContent = holders.filter((h) => h.status === "PENDING").length;
  }

  // A bar against the limit; with none, against what is online (a queue: its pool's bound).
  function usage(held, limit, capacity, fallback) {
    const numbers = [`${held} held`];
    if (limit !== null && limit !== undefined) numbers.push(`limit ${limit}`);
    if (capacity !== null) numbers.push(`${capacity} slots online`);
    const bound = limit ?? capacity ?? fallback ?? 0;
    const bar = el("div", "bar");
    const fill = el("div", "fill");
    const share = bound > 0 ? held / bound : held > 0 ? 1 : 0;
    fill.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
    if (share > 1) fill.classList.add("over");
    else if (share >= 1) fill.classList.add("full");
    bar.append(fill);
    return [el("span", "numbers", numbers.join(" · ")), bar];
  }

  function badge(pool) {
    const status = pool?.status ?? (pool?.paused ? "PAUSED" : null);
    return status ? el("span", `badge ${String(status).toLowerCase()}`, status) : null;
  }

  function renderPool(name, heldPool, heldQueue, capacity) {
    const pool = state.pools.get(name);
    const box = el("div", "pool");
    box.dataset.pool = name;
    const head = el("div", "pool-head");
    const title = el("span", "pool-name", name);
    const status = badge(pool);
    if (status) title.append(status);
    const online = capacity.get(name) ?? 0;
    const [numbers, bar] = usage(heldPool.get(name) ?? 0, pool?.concurrency_limit, online);
    const poolBound = pool?.concurrency_limit ?? online;
    head.append(title, numbers);
    box.append(head, bar);
    const queues = el("div", "queues");
    const names = new Set([...state.queues.values()].filter((q) => q.pool === name).map((q) => q.queue));
    for (const key of heldQueue.keys()) if (key.startsWith(`${name}\u0000`)) names.add(key.slice(name.length + 1));
    for (const queue of [...names].sort()) {
      const view = state.queues.get(queueKey(name, queue));
      const row = el("div", "queue");
      row.dataset.queue = queue;
      const qhead = el("div", "pool-head");
      const qtitle = el("span", null, queue);
      if (view?.paused) qtitle.append(el("span", "badge paused", "PAUSED"));
      const held = heldQueue.get(queueKey(name, queue)) ?? 0;
      const [qnumbers, qbar] = usage(held, view?.concurrency_limit, null, poolBound);
      qhead.append(qtitle, qnumbers);
      row.append(qhead, qbar);
      queues.append(row);
    }
    if (queues.childElementCount) box.append(queues);
    return box;
  }

  function renderPools() {
    const heldPool = new Map();
    const heldQueue = new Map();
    for (const h of state.holders.values()) {
      const pool = h.pool ?? "(no pool)";
      heldPool.set(pool, (heldPool.get(pool) ?? 0) + 1);
      if (h.queue) heldQueue.set(queueKey(pool, h.queue), (heldQueue.get(queueKey(pool, h.queue)) ?? 0) + 1);
    }
    const capacity = new Map();
    for (const w of state.workers.values()) {
      if (statusOf(w) !== "ONLINE" || !w.worker.pool) continue;
      capacity.set(w.worker.pool, (capacity.get(w.worker.pool) ?? 0) + w.worker.slots);
    }
    const names = new Set([...state.pools.keys(), ...heldPool.keys(), ...capacity.keys()]);
    const boxes = [...names].sort().map((name) => renderPool(name, heldPool, heldQueue, capacity));
    $("pools").replaceChildren(...(boxes.length ? boxes : [el("p", "empty", "No pools yet.")]));
  }

  function workerRow(w, tasks) {
    const view = w.worker;
    const row = el("tr");
    row.dataset.worker = view.worker;
    const status = statusOf(w);
    row.dataset.status = status;
    if (changed.has(view.worker)) row.className = "flash";
    const cells = [el("span", `status ${status}`, status), null, null, null, null, null];
    const chips = tasks.map((t) => {
      const chip = el("span", `task-chip ${t.status}`, t.task);
      chip.dataset.task = t.task;
      chip.title = `${t.status}${t.queue ? ` in ${t.queue}` : ""}`;
      return chip;
    });
    const values = [
      null,
      view.worker,
      view.pool ?? "–",
      `${tasks.length} / ${view.slots}`,
      chips.length ? chips : "idle",
      ago(view.last_seen),
    ];
    values.forEach((value, i) => {
      const td = el("td", i === 1 ? "worker" : null);
      if (cells[i]) td.append(cells[i]);
      else if (Array.isArray(value)) td.append(...value);
      else td.textContent = value;
      row.append(td);
    });
    return row;
  }

  function renderWorkers(held) {
    const workers = [...state.workers.values()].sort(
      (a, b) =>
        STATUS_ORDER[statusOf(a)] - STATUS_ORDER[statusOf(b)] ||
        a.worker.worker.localeCompare(b.worker.worker),
    );
    const shown = workers.slice(0, MAX_WORKER_ROWS);
    const rows = shown.map((w) => workerRow(w, held.get(w.worker.worker) ?? []));
    if (!rows.length) rows.push(emptyRow("No workers have reported yet."));
    if (workers.length > shown.length) rows.push(emptyRow(`and ${workers.length - shown.length} more`));
    $("workers").replaceChildren(...rows);
    const online = workers.filter((w) => statusOf(w) === "ONLINE").length;
    $("workers-count").textContent = `${online} online of ${workers.length}`;
  }

  function emptyRow(text) {
    const row = el("tr");
    const cell = el("td", "empty more", text);
    cell.colSpan = 6;
    row.append(cell);
    return row;
  }

  function renderFailures() {
    const when = (t) => Date.parse(t.finished_at ?? t.updated_at ?? 0) || 0;
    const recent = [...state.failures.values()].sort((a, b) => when(b) - when(a)).slice(0, MAX_FAILURES);
    const items = recent.map((t) => {
      const li = el("li", t.status.toLowerCase());
      li.dataset.task = t.task;
      const what = el("div", "what");
      what.append(el("span", "task", t.task), el("span", "when", `${t.status} · ${clock(t.finished_at ?? t.updated_at)}`));
      const where = [t.pool, t.queue, t.worker && `on ${t.worker}`].filter(Boolean).join(" · ");
      li.append(what, el("div", "where", where || "–"));
      if (t.error || t.message) li.append(el("div", "error", t.error ?? t.message));
      return li;
    });
    $("failures").replaceChildren(...(items.length ? items : [el("li", "empty", "No failures. ")]));
  }

  function renderSparkline() {
    const svg = $("sparkline");
    const buckets = new Map();
    for (const row of state.util) {
      const b = buckets.get(row.bucket_start) ?? { busy: 0, capacity: 0 };
      b.busy += row.busy_seconds;
      b.capacity += row.capacity_seconds ?? 0;
      buckets.set(row.bucket_start, b);
    }
    const points = [...buckets.entries()]
      .sort(([a], [b]) => Date.parse(a) - Date.parse(b))
      .map(([, b]) => (b.capacity > 0 ? Math.min(1, b.busy / b.capacity) : 0));
    if (points.length < 2) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", "0");
      text.setAttribute("y", "28");
      text.setAttribute("class", "none");
      text.textContent = "not enough history yet";
      svg.replaceChildren(text);
      return;
    }
    const step = 300 / (points.length - 1);
    const xy = points.map((v, i) => `${(i * step).toFixed(1)},${(46 - v * 44).toFixed(1)}`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "line");
    line.setAttribute("points", xy.join(" "));
    const area = document.createElementNS(SVG, "polygon");
    area.setAttribute("class", "area");
    area.setAttribute("points", `0,48 ${xy.join(" ")} 300,48`);
    svg.replaceChildren(area, line);
    $("util-now").textContent = `· now ${(points[points.length - 1] * 100).toFixed(0)}%`;
  }

  // --- start ---------------------------------------------------------------------------

  $("signin").addEventListener("submit", signIn);
  connect(); // first, so nothing published while the page loads is missed
  load();
  loadUtilization();
  setInterval(schedule, 1000); // "last seen" and liveness age between events
  setInterval(loadUtilization, 60_000);
  setInterval(load, 5 * 60_000); // a slow safety net; the feed keeps everything else current
})();
