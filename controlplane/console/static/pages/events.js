// Events (and Alerts, pages/alerts.js: the same with type=alert): newest first, filtered
// by type, rule, priority, container, image, node, agent and time; keyset pages through
// `next` (GET /api/v1/events?page=1&before=...); "live follow" polls for events newer
// than the newest shown (`after=`); a row opens the event with its process ancestry
// (GET /api/v1/events/{seq}). Every field is agent-derived: rendered as text only.
import {el, table, badge, fmtTime, clear, errorBox} from '../dom.js';
import {ApiError} from '../api.js';
import {normalizeEvent} from '../model.js';

export const title = 'Events';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

const PAGE = 50;
const FOLLOW_MS = 2000;
const FILTERS = ['type', 'rule', 'priority', 'container', 'image', 'node', 'agent'];
const PRIORITIES = ['', 'EMERGENCY', 'ALERT', 'CRITICAL', 'ERROR', 'WARNING', 'NOTICE',
  'INFORMATIONAL', 'DEBUG'];
const PRIORITY_KIND = {emergency: 'bad', alert: 'bad', critical: 'bad', error: 'bad',
  warning: 'warn', notice: 'warn'};

function toMs(local) {
  if (!local) return '';
  const t = new Date(local).getTime();
  return Number.isNaN(t) ? '' : String(t);
}

function toLocal(ms) {
  if (!ms) return '';
  const d = new Date(Number(ms));
  if (Number.isNaN(d.getTime())) return '';
  const z = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
  return z.toISOString().slice(0, 16);
}

// the list answer of an old server (no page=1 support) or the paged one
function paged(answer) {
  if (Array.isArray(answer)) return {events: answer.map(normalizeEvent).reverse(), next: null};
  return {events: (answer.events || []).map(normalizeEvent), next: answer.next ?? null};
}

// the agent's event shapes (docs/events.md): an alert carries its triggering event in
// `event`; `container` is an object (name, id, image) or, from the data endpoints, a name
function origin(e) {
  return e.event && typeof e.event === 'object' ? e.event : e;
}

export function containerName(e) {
  const c = e.container ?? origin(e).container;
  if (c && typeof c === 'object') return String(c.name || c.id || '');
  return c ? String(c) : '';
}

export function imageOf(e) {
  if (e.image && typeof e.image === 'string') return e.image;
  const c = e.container ?? origin(e).container;
  return c && typeof c === 'object' && c.image ? String(c.image) : '';
}

function args(value) {
  return Array.isArray(value) ? value.join(' ') : String(value ?? '');
}

// what an event is about: a path (the agent's `file.path`, or a flat `path`/`filename`)
// or a destination (`network.daddr:dport`, or flat `daddr`/`dst`); docs/events.md
function target(o) {
  const file = o.file && typeof o.file === 'object' ? o.file : {};
  const net = o.network && typeof o.network === 'object' ? o.network : {};
  const path = o.path || o.filename || file.path;
  if (path) return String(path);
  const daddr = o.daddr || o.dst || net.daddr;
  const dport = o.dport || net.dport;
  return daddr ? `→ ${daddr}${dport ? `:${dport}` : ''}` : '';
}

function summary(e) {
  if (e.output) return String(e.output);
  const o = origin(e);
  const enf = o.enforcement;
  if (enf && typeof enf === 'object') {    // an enforcement decision: what, by which policy
    return [enf.action, enf.binary || enf.path || target(o), enf.policy
      ? `(policy ${enf.policy})` : ''].filter(Boolean).map(String).join(' ');
  }
  const parts = [];
  if (o.process && o.process.args) parts.push(args(o.process.args));
  else if (o.args) parts.push(args(o.args));
  const what = target(o);
  if (what) parts.push(what);
  return parts.join(' ');
}

function fieldRows(object, prefix = '') {
  const rows = [];
  for (const [k, v] of Object.entries(object || {})) {
    if (v && typeof v === 'object' && !Array.isArray(v)) rows.push(...fieldRows(v, `${prefix}${k}.`));
    else rows.push([`${prefix}${k}`, Array.isArray(v) ? JSON.stringify(v) : String(v ?? '')]);
  }
  return rows;
}

async function showDetail(box, api, seq, fallback) {
  clear(box).append(el('p', {class: 'muted'}, 'loading…'));
  let event = fallback;
  let ancestry = null;
  try {
    const found = await api.get(`/api/v1/events/${encodeURIComponent(seq)}`);
    // the row's own fields, as the list gave them, win over what the detail's payload says
    event = {...(found.event ? normalizeEvent(found.event) : {})};
    for (const [k, v] of Object.entries(fallback || {})) {
      if (v !== null && v !== undefined) event[k] = v;
    }
    ancestry = found.ancestry || [];
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    // not in the list either: no such event for this user (pruned, or another tenant's);
    // in the list: a server without the detail endpoint, so the row's fields are shown
    if (!fallback || fallback.type === undefined) {
      clear(box).append(el('section', {class: 'card', id: 'event-detail'},
        el('h2', {}, `Event ${seq}`),
        el('p', {class: 'muted', id: 'event-missing'}, 'not found (removed, or not yours to see)')));
      return;
    }
  }
  clear(box).append(el('section', {class: 'card', id: 'event-detail'},
    el('h2', {}, `Event ${event.seq}: ${event.type}`, event.rule ? ` · ${event.rule}` : ''),
    el('h3', {}, 'Process ancestry'),
    ancestry === null ? el('p', {class: 'muted'}, 'not available from this server')
      : ancestry.length === 0 ? el('p', {class: 'muted'}, 'no known ancestor')
        : el('ol', {class: 'ancestry', id: 'event-ancestry'}, ancestry.map((p) => el('li', {},
          el('span', {class: 'mono'}, args(p.args)),
          ' ', el('span', {class: 'muted'}, `pid ${p.pid} · ${fmtTime(p.time_ms)} · ${p.exec_id}`)))),
    el('h3', {}, 'Fields'),
    el('table', {class: 'grid kv'}, el('tbody', {}, fieldRows(event).map(([k, v]) =>
      el('tr', {}, el('th', {}, k), el('td', {class: 'mono'}, v)))))));
}

export async function renderEvents(root, ctx, {fixed = {}} = {}) {
  const {api, params, navigate, signal} = ctx;
  const page = fixed.type === 'alert' ? 'alerts' : 'events';
  const inputs = {};
  for (const name of FILTERS) {
    if (name in fixed) continue;
    inputs[name] = name === 'priority'
      ? el('select', {id: `filter-${name}`}, PRIORITIES.map((p) => el('option',
        {value: p, selected: p === (params[name] || '')}, p || 'any')))
      : el('input', {id: `filter-${name}`, size: 14, value: params[name] || ''});
  }
  inputs.since = el('input', {id: 'filter-since', type: 'datetime-local',
    value: toLocal(params.since_ms)});
  inputs.until = el('input', {id: 'filter-until', type: 'datetime-local',
    value: toLocal(params.until_ms)});
  const follow = el('input', {id: 'follow', type: 'checkbox', checked: params.follow === '1'});

  function filterParams() {
    const out = {};
    for (const name of FILTERS) if (inputs[name] && inputs[name].value) out[name] = inputs[name].value;
    out.since_ms = toMs(inputs.since.value);
    out.until_ms = toMs(inputs.until.value);
    return out;
  }
  const apply = () => navigate(page, {...filterParams(), follow: follow.checked ? '1' : ''});
  const form = el('form', {class: 'toolbar', id: 'event-filters', onsubmit: (e) => {
    e.preventDefault(); apply();
  }}, Object.entries(inputs).map(([name, input]) => el('label', {}, name, input)),
  el('button', {type: 'submit', id: 'filter-apply'}, 'Apply'),
  el('button', {type: 'button', class: 'secondary', onclick: () => navigate(page, {})}, 'Clear'),
  el('label', {class: 'inline'}, 'live follow', follow));
  follow.addEventListener('change', apply);

  const query = {...fixed, ...Object.fromEntries(Object.entries(params)
    .filter(([k]) => FILTERS.includes(k) || k === 'since_ms' || k === 'until_ms'))};
  const status = el('p', {class: 'muted', id: 'events-status'});
  const listBox = el('div', {id: 'events-list'});
  const pager = el('div', {class: 'pager'});
  const detailBox = el('div');
  root.append(form, status, listBox, pager, detailBox);

  let shown = [];
  const columns = [
    {title: 'seq', value: (e) => String(e.seq), class: 'mono'},
    {title: 'time', value: (e) => fmtTime(e.time_ms)},
    {title: 'type', value: (e) => String(e.type ?? '')},
    {title: 'priority', value: (e) => (e.priority ? badge(e.priority,
      PRIORITY_KIND[String(e.priority).toLowerCase()] || '') : '')},
    {title: 'rule', value: (e) => String(e.rule || '')},
    {title: 'container', value: containerName, class: 'container'},
    {title: 'image', value: imageOf, class: 'mono'},
    {title: 'node', value: (e) => String(e.node || origin(e).node || '')},
    {title: 'what', value: summary, class: 'mono'},
  ];
  function draw() {
    clear(listBox).append(table(columns, shown, {empty: 'no events match',
      rowAttrs: (e) => ({class: String(e.seq) === params.seq ? 'clickable selected' : 'clickable',
        dataset: {seq: e.seq},
        onclick: () => {
          params.seq = String(e.seq);
          for (const row of listBox.querySelectorAll('tr.selected')) row.classList.remove('selected');
          showDetail(detailBox, api, e.seq, e).catch((err) => clear(detailBox).append(errorBox(err)));
        }})}));
  }

  const before = params.before || '';
  const answer = paged(await api.get('/api/v1/events', {...query, page: 1, limit: PAGE,
    before}));
  shown = answer.events;
  status.textContent = `${shown.length} ${fixed.type === 'alert' ? 'alerts' : 'events'}${
    before ? ` older than #${before}` : ', newest first'}`;
  draw();
  if (before) {
    pager.append(el('button', {type: 'button', class: 'secondary', id: 'page-newest',
      onclick: () => navigate(page, {...params, before: '', seq: ''})}, 'Newest'));
  }
  if (answer.next !== null) {
    pager.append(el('button', {type: 'button', class: 'secondary', id: 'page-older',
      onclick: () => navigate(page, {...params, before: answer.next, seq: ''})}, 'Older →'));
  }
  if (params.seq) {
    showDetail(detailBox, api, params.seq, shown.find((e) => String(e.seq) === params.seq)
      || {seq: params.seq}).catch((err) => clear(detailBox).append(errorBox(err)));
  }

  if (follow.checked && !before) {
    let newest = shown.reduce((m, e) => Math.max(m, Number(e.seq) || 0), 0);
    let busy = false;
    const timer = setInterval(async () => {
      if (busy) return;
      busy = true;
      try {
        // the list form (ascending from `after`): every newer event, none skipped
        const fresh = await api.get('/api/v1/events', {...query, after: newest, limit: 500});
        if (signal.aborted || !Array.isArray(fresh) || fresh.length === 0) return;
        newest = fresh.reduce((m, e) => Math.max(m, Number(e.seq) || 0), newest);
        shown = [...fresh.map(normalizeEvent).reverse(), ...shown].slice(0, 1000);
        status.textContent = `${shown.length} shown, following (newest #${newest})`;
        draw();
      } catch { /* next tick */ } finally {
        busy = false;
      }
    }, FOLLOW_MS);
    signal.addEventListener('abort', () => clearInterval(timer));
  }
}

export async function render(root, ctx) {
  return renderEvents(root, ctx);
}
