// probemesh status page: polls /api/v1/status every second and renders it.
// No external assets: the map is drawn from the rough outlines below.
"use strict";

const POLL_MS = 1000;
// Approximate country centroids [lon, lat] (ISO 3166 alpha-2).
const CENTROIDS = {
  AE:[54,24],AR:[-64,-34],AT:[14,47.5],AU:[134,-25],BD:[90,24],BE:[4.5,50.5],BG:[25,42.7],BR:[-52,-10],
  CA:[-100,58],CH:[8.2,46.8],CL:[-71,-33],CN:[104,35],CO:[-73,4],CZ:[15.5,49.8],DE:[10.4,51.2],DK:[10,56],
  DZ:[3,28],EE:[25.5,58.7],EG:[30,27],ES:[-3.7,40.4],ET:[39.5,9],FI:[26,64],FR:[2.5,46.5],GB:[-2,54],
  GH:[-1,7.9],GR:[22,39],HK:[114.2,22.3],HR:[16,45.2],HU:[19.5,47.2],ID:[117,-2.5],IE:[-8,53.2],IL:[35,31.4],
  IN:[79,22],IQ:[44,33],IR:[53,32.5],IS:[-19,65],IT:[12.5,42.8],JP:[138,36.5],KE:[38,0.5],KR:[127.8,36.3],
  KZ:[67,48],LT:[24,55.3],LU:[6.1,49.8],LV:[24.6,56.9],MA:[-6,32],MX:[-102,23.5],MY:[102,4],NG:[8,9.5],
  NL:[5.3,52.2],NO:[9,61],NZ:[172,-41.5],PE:[-75,-9.5],PH:[122,12],PK:[69,30],PL:[19.4,52],PT:[-8.2,39.6],
  RO:[25,45.9],RS:[20.9,44.2],RU:[95,61],SA:[45,24],SE:[16,62],SG:[103.8,1.35],SK:[19.7,48.7],SI:[14.8,46.1],
  TH:[101,15],TR:[35,39],TW:[121,23.7],UA:[31,49],UG:[32.4,1.3],US:[-98,39],VE:[-66,7],VN:[106,16],
  ZA:[24.5,-29],ZW:[29.8,-19],TZ:[35,-6],SN:[-14.5,14.5],CI:[-5.5,7.5],CM:[12.5,5.5],AO:[17.5,-12.3],
  BO:[-64.7,-16.7],EC:[-78.4,-1.5],UY:[-56,-32.8],PY:[-58.4,-23.4],CR:[-84,10],PA:[-80,8.5],GT:[-90.3,15.7],
  CU:[-79,21.7],DO:[-70.5,18.8],NP:[84,28.2],LK:[80.7,7.8],MM:[96,21],KH:[105,12.6],LA:[102.5,19.8],
  MN:[103,46.8],AF:[66,33.9],UZ:[64.5,41.4],GE:[43.4,42.2],AM:[45,40.1],AZ:[47.6,40.1],BY:[28,53.7],
  MD:[28.4,47],CY:[33.2,35],JO:[36.5,31],LB:[35.9,33.9],QA:[51.2,25.3],KW:[47.5,29.3],OM:[57,21],
  TN:[9.5,34],LY:[17,27],SD:[30,15.5],RW:[29.9,-1.9],MZ:[35.5,-18.6],ZM:[27.8,-13.1],BW:[24.7,-22.3],
  NA:[18.5,-22.6],MG:[46.9,-19],
};
const LAND = [
  [[-168,65],[-140,70],[-95,72],[-80,63],[-60,55],[-52,47],[-66,44],[-75,35],[-81,25],[-97,26],[-97,18],[-87,15],[-78,8],[-83,8],[-92,15],[-105,20],[-110,24],[-117,32],[-124,40],[-124,48],[-135,58],[-152,58],[-165,60]],
  [[-50,60],[-43,60],[-20,70],[-20,80],[-60,82],[-70,77],[-55,68]],
  [[-78,8],[-60,10],[-50,0],[-35,-6],[-38,-15],[-48,-26],[-58,-38],[-65,-42],[-68,-55],[-74,-50],[-72,-30],[-70,-18],[-81,-5],[-80,2]],
  [[-10,36],[-9,43],[-2,44],[-5,48],[2,51],[8,54],[10,58],[5,62],[15,69],[28,71],[40,67],[40,55],[30,46],[28,41],[22,37],[15,38],[12,44],[8,44],[3,42],[0,38]],
  [[-5,50],[1,51],[0,53],[-2,56],[-5,58],[-6,55],[-3,54],[-5,52]],
  [[-17,21],[-10,30],[-6,36],[10,37],[20,32],[32,31],[35,28],[43,12],[51,11],[40,-2],[40,-15],[35,-25],[27,-34],[18,-34],[12,-18],[13,-6],[9,4],[-8,4],[-17,13]],
  [[44,-25],[47,-25],[50,-15],[49,-12],[44,-17]],
  [[28,41],[36,36],[35,30],[43,13],[56,22],[60,25],[67,24],[73,19],[78,8],[80,15],[88,22],[94,17],[98,8],[104,1],[106,10],[109,20],[117,24],[122,31],[121,40],[128,35],[130,43],[142,47],[140,54],[160,60],[180,66],[180,72],[140,73],[110,77],[80,73],[60,70],[40,67],[40,55],[30,46]],
  [[130,31],[135,34],[141,36],[142,41],[141,45],[145,44],[140,42],[136,36],[131,34]],
  [[95,5],[106,-6],[115,-8],[125,-8],[130,-3],[140,-3],[150,-6],[141,-9],[120,-5],[119,0],[117,7],[109,2],[104,-1]],
  [[120,18],[122,18],[126,7],[125,6],[120,10]],
  [[114,-22],[122,-18],[130,-12],[137,-12],[142,-11],[146,-19],[153,-26],[150,-37],[141,-38],[131,-31],[115,-34]],
  [[172,-35],[178,-38],[174,-41],[167,-46],[170,-46],[174,-41]],
];
const SVGNS = "http://www.w3.org/2000/svg";
let focus = null;        // check shown on the map; null: the worst one
let lastData = null;

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};
const hms = (iso) => (iso ? iso.slice(11, 19) : "");
const ago = (iso) => {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};
const STATE_LABEL = { ok: "OK", regional_outage: "regional outage", global_outage: "global outage", unknown: "unknown" };
const RANK = { global_outage: 3, regional_outage: 2, unknown: 1, ok: 0 };

function drawBaseMap() {
  const svg = $("map");
  svg.setAttribute("viewBox", "0 6 360 142");
  for (let lon = -150; lon <= 180; lon += 30) {
    const l = document.createElementNS(SVGNS, "line");
    l.setAttribute("x1", lon + 180); l.setAttribute("x2", lon + 180);
    l.setAttribute("y1", 0); l.setAttribute("y2", 180); l.setAttribute("class", "grat");
    svg.appendChild(l);
  }
  for (let lat = -60; lat <= 90; lat += 30) {
    const l = document.createElementNS(SVGNS, "line");
    l.setAttribute("x1", 0); l.setAttribute("x2", 360);
    l.setAttribute("y1", 90 - lat); l.setAttribute("y2", 90 - lat); l.setAttribute("class", "grat");
    svg.appendChild(l);
  }
  for (const poly of LAND) {
    const p = document.createElementNS(SVGNS, "polygon");
    p.setAttribute("points", poly.map(([x, y]) => `${x + 180},${90 - y}`).join(" "));
    p.setAttribute("class", "land");
    svg.appendChild(p);
  }
  const g = document.createElementNS(SVGNS, "g");
  g.id = "map-points";
  svg.appendChild(g);
}

function drawMap(check) {
  const g = $("map-points");
  g.replaceChildren();
  $("map-title").textContent = check ? `- ${check.check} (${STATE_LABEL[check.state] || check.state})` : "";
  if (!check) return;
  let spare = 0;
  for (const c of check.countries) {
    let xy = CENTROIDS[c.country];
    if (!xy) { xy = [-170 + 8 * spare++, -50]; }  // unknown position: a row at the bottom
    const [x, y] = [xy[0] + 180, 90 - xy[1]];
    const circle = document.createElementNS(SVGNS, "circle");
    circle.setAttribute("cx", x); circle.setAttribute("cy", y); circle.setAttribute("r", 4.2);
    circle.setAttribute("class", c.state);
    circle.dataset.country = c.country;
    const title = document.createElementNS(SVGNS, "title");
    title.textContent = `${c.country}: ${c.state}` + (c.detail ? ` (${c.detail})` : "");
    circle.appendChild(title);
    g.appendChild(circle);
    const t = document.createElementNS(SVGNS, "text");
    t.setAttribute("x", x + 5); t.setAttribute("y", y + 1.8);
    t.textContent = c.country;
    g.appendChild(t);
  }
}

function incidentCard(inc) {
  const card = el("div", "card incident");
  card.id = `incident-${inc.id}`;  // alerts and webhooks link here: /#incident-ID
  if (location.hash === `#${card.id}`) card.classList.add("focus");
  card.dataset.id = inc.id;
  card.dataset.check = inc.check;
  const head = el("div", "card-head");
  head.appendChild(el("span", "check-name", inc.check));
  const scope = inc.ended_at ? "closed" : inc.scope;
  head.appendChild(el("span", `badge ${inc.ended_at ? "ok" : inc.scope}`, scope));
  if (inc.cause && inc.cause !== "unknown") {
    const cause = el("span", `badge cause ${inc.cause}`, `cause: ${inc.cause}`);
    cause.dataset.cause = inc.cause;
    head.appendChild(cause);
  }
  card.appendChild(head);
  card.appendChild(el("div", "summary", inc.summary));
  const meta = el("div", "muted small",
    `started ${inc.started_at}` + (inc.ended_at ? ` · ended ${inc.ended_at}` : "") +
    ` · now affected: ${inc.countries.length ? inc.countries.join(", ") : "none"}`);
  card.appendChild(meta);
  const ul = el("ul", "timeline");
  for (const ev of inc.timeline) {
    const li = el("li", `ev-${ev.event}`);
    const time = el("time", "", hms(ev.at));
    time.setAttribute("datetime", ev.at);
    li.appendChild(time);
    const kind = ev.kind ? ` (${ev.kind})` : "";
    li.appendChild(document.createTextNode(`${ev.event}${ev.countries.length ? ": " + ev.countries.join(", ") : ""}${kind}`));
    ul.appendChild(li);
  }
  card.appendChild(ul);
  return card;
}

function checkCard(check) {
  const card = el("div", "card check" + (lastFocus() === check.check ? " focus" : ""));
  card.dataset.check = check.check;
  card.dataset.state = check.state;
  const head = el("div", "card-head");
  head.title = "Show on the map";
  head.addEventListener("click", () => { focus = check.check; render(lastData); });
  head.appendChild(el("span", "check-name", check.check));
  head.appendChild(el("span", `badge ${check.state}`, STATE_LABEL[check.state] || check.state));
  card.appendChild(head);
  // Refused by an agent's own policy: a configuration problem, shown apart from outages.
  for (const r of check.not_runnable || []) {
    const line = el("div", "not-runnable", r.message);
    line.dataset.agent = r.agent;
    line.dataset.rule = r.rule;
    card.appendChild(line);
  }
  const grid = el("div", "grid");
  for (const c of check.countries) {
    const tile = el("div", `tile ${c.state}`);
    tile.dataset.country = c.country;
    tile.dataset.state = c.state;
    tile.appendChild(el("div", "cc", c.country));
    const ratio = c.ratio === null ? "no data" : `${c.up}/${c.agents} up`;
    tile.appendChild(el("div", "ratio", `${c.state} · ${ratio}`));
    if (c.diagnosis) {
      const kind = el("div", `kind ${c.diagnosis.kind}`, c.diagnosis.kind);
      kind.dataset.kind = c.diagnosis.kind;
      tile.appendChild(kind);
      tile.title = `${c.country}: ${c.diagnosis.kind} - ${c.diagnosis.detail}`;
    } else if (c.detail) tile.appendChild(el("div", "why", c.detail));
    else if (c.excluded) tile.appendChild(el("div", "why", `${c.excluded} local problem`));
    else if (c.suspects) tile.appendChild(el("div", "why", `${c.suspects} suspect`));
    grid.appendChild(tile);
  }
  card.appendChild(grid);
  const diagnosed = check.countries.filter((c) => c.diagnosis);
  if (diagnosed.length) card.appendChild(diagnosisList(diagnosed));
  return card;
}

// Why each failing country fails; for "path", the hops of the traceroute taken during the failure.
function diagnosisList(countries) {
  const ul = el("ul", "diagnosis");
  for (const c of countries) {
    const d = c.diagnosis;
    const li = el("li", `kind-${d.kind}`);
    li.dataset.country = c.country;
    li.appendChild(el("b", "", `${c.country} · ${d.kind}`));
    li.appendChild(document.createTextNode(` ${d.detail}`));
    if (d.kind === "path" && d.path && d.path.length) {
      const hops = el("ol", "hops");
      for (const h of d.path) {
        const hop = el("li", h.address === d.hop ? "last" : "",
          h.address ? `${h.address}${h.asn ? ` (AS${h.asn})` : ""} ${(h.rtt_seconds * 1000).toFixed(1)} ms` : "*");
        hop.value = h.ttl;
        hops.appendChild(hop);
      }
      li.appendChild(hops);
    }
    ul.appendChild(li);
  }
  return ul;
}

function lastFocus() {
  if (!lastData || !lastData.checks.length) return null;
  if (focus && lastData.checks.some((c) => c.check === focus)) return focus;
  const worst = [...lastData.checks].sort((a, b) => (RANK[b.state] || 0) - (RANK[a.state] || 0))[0];
  return worst.check;
}

function render(data) {
  if (!data) return;
  lastData = data;
  const active = data.incidents.filter((i) => !i.ended_at);
  const recent = data.incidents.filter((i) => i.ended_at);
  const wanted = linkedId();
  if (wanted && !data.incidents.some((i) => String(i.id) === wanted)) {
    if (older && String(older.id) === wanted) recent.push(older);
    else loadOlder(wanted);
  }
  const worst = data.checks.reduce((w, c) => Math.max(w, RANK[c.state] || 0), 0);
  const overall = $("overall");
  const stateName = Object.keys(RANK).find((k) => RANK[k] === worst) || "unknown";
  overall.className = `banner ${data.checks.length ? stateName : "unknown"}`;
  const refused = data.checks.filter((c) => (c.not_runnable || []).length).length;
  // A check is unknown either before its first results or because every agent refuses it.
  const waiting = data.checks.some((c) => c.state === "unknown" && !(c.not_runnable || []).length);
  overall.textContent = (!data.checks.length ? "No checks configured"
    : active.length ? `${active.length} active incident${active.length > 1 ? "s" : ""}`
    : worst === 1 && waiting ? "Waiting for results" : refused ? "All runnable checks OK" : "All checks OK")
    + (refused ? ` · ${refused} check${refused > 1 ? "s" : ""} not runnable on some agents (configuration)` : "");
  $("incidents").replaceChildren(...(active.length ? active.map(incidentCard) : [el("p", "muted", "None.")]));
  $("recent").replaceChildren(...(recent.length ? recent.map(incidentCard) : [el("p", "muted", "None.")]));
  $("checks").replaceChildren(...data.checks.map(checkCard));
  const f = lastFocus();
  drawMap(data.checks.find((c) => c.check === f));
  const body = $("agents").querySelector("tbody");
  body.replaceChildren(...data.agents.map((a) => {
    const tr = el("tr", a.local_problem ? "local-problem" : "");
    tr.dataset.agent = a.agent;
    tr.appendChild(el("td", "", a.agent));
    tr.appendChild(el("td", "", a.country + (a.region ? ` / ${a.region}` : "")));
    tr.appendChild(el("td", "", a.connected ? "connected" : "disconnected"));
    tr.appendChild(el("td", "", ago(a.last_seen)));
    tr.appendChild(el("td", "", a.local_problem ? "⚠ local problem" : a.suspect ? "suspect (checking)" : "-"));
    const p = a.policy || {};
    if (p.min_interval_seconds || p.allow_private_targets !== null) {
      tr.title = `policy: interval floor ${p.min_interval_seconds || "?"}s; private targets `
        + `${p.allow_private_targets ? "allowed" : "refused"}; secrets dir ${p.secrets_dir ? "set" : "none"}`;
    }
    tr.appendChild(el("td", "", a.version || "-"));
    const offset = a.clock_offset_seconds;
    const clock = offset === null || offset === undefined ? "-"
      : `${offset >= 0 ? "+" : ""}${offset.toFixed(3)} s`;
    tr.appendChild(el("td", a.clock_skewed ? "clock-skewed" : "", (a.clock_skewed ? "⚠ " : "") + clock));
    return tr;
  }));
  $("updated").textContent = data.generated_at ? hms(data.generated_at) + " UTC" : "never";
  const linked = location.hash.startsWith("#incident-") && document.getElementById(location.hash.slice(1));
  if (linked && scrolledTo !== location.hash) {
    linked.scrollIntoView();
    scrolledTo = location.hash;
  }
}

// An incident linked by an alert (/#incident-ID) is outlined and scrolled to once.
// One older than the page's list is fetched from /api/v1/incidents and shown too.
let scrolledTo = "";
let older = null;
let olderLoading = "";
function linkedId() {
  const m = location.hash.match(/^#incident-(\d+)$/);
  return m ? m[1] : null;
}
async function loadOlder(id) {
  if (olderLoading === id) return;
  olderLoading = id;
  try {
    const resp = await fetch("/api/v1/incidents", { cache: "no-store" });
    if (!resp.ok) return;
    const found = (await resp.json()).incidents.find((i) => String(i.id) === id);
    if (found) { older = found; render(lastData); }
  } catch (err) {
    olderLoading = "";  // try again on the next render
  }
}
window.addEventListener("hashchange", () => render(lastData));

// Long poll: the collector answers as soon as an evaluation newer than ours exists.
let evaluation = -1;
async function poll() {
  let delay = 0;
  try {
    const query = evaluation >= 0 ? `?after=${evaluation}` : "";
    const resp = await fetch(`/api/v1/status${query}`, { cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const data = await resp.json();
    if (data.evaluation === evaluation) delay = POLL_MS;  // nothing new: do not spin
    evaluation = data.evaluation;
    render(data);
    $("conn").textContent = "live";
  } catch (err) {
    $("conn").textContent = `collector unreachable (${err.message}); retrying`;
    evaluation = -1;
    delay = POLL_MS;
  } finally {
    setTimeout(poll, delay);
  }
}

drawBaseMap();
poll();
