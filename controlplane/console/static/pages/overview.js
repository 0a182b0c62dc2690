// Overview: agents online/offline/revoked, alerts per hour (SVG), top rules, blocks and
// images by verdict, from GET /api/v1/overview (i-events' statistics endpoint). A server
// without it (404) gets the figures computed here from /api/v1/agents and the newest
// alerts of /api/v1/events.
import {el, badge, clear} from '../dom.js';
import {ApiError} from '../api.js';
import {barChart, hbars} from '../chart.js';
import {normalizeEvent} from '../model.js';

export const title = 'Overview';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

const HOURS = 24;
const HOUR = 3600 * 1000;
const REFRESH_MS = 30000;

function buckets(events, now, hours) {
  const start = Math.floor(now / HOUR) * HOUR - (hours - 1) * HOUR;
  const out = Array.from({length: hours}, (_, i) => ({t: start + i * HOUR, count: 0}));
  for (const e of events) {
    const i = Math.floor((Number(e.time_ms) - start) / HOUR);
    if (i >= 0 && i < hours) out[i].count += 1;
  }
  return out;
}

async function computed(api) {
  const now = Date.now();
  const [agents, alerts] = await Promise.all([
    api.get('/api/v1/agents'),
    api.get('/api/v1/events', {type: 'alert', since_ms: now - HOURS * HOUR, limit: 10000}),
  ]);
  const counts = {online: 0, offline: 0, revoked: 0};
  for (const a of agents) {
    if (a.revoked) counts.revoked += 1;
    else if (a.connected) counts.online += 1;
    else counts.offline += 1;
  }
  const rules = new Map();
  let blocks = 0;
  for (const e of alerts.map(normalizeEvent)) {
    rules.set(e.rule || '(none)', (rules.get(e.rule || '(none)') || 0) + 1);
    if (e.action === 'block' || e.blocked === true || e.enforced === true) blocks += 1;
  }
  return {
    agents: counts,
    alerts_over_time: buckets(alerts, now, HOURS),
    top_rules: [...rules].map(([rule, count]) => ({rule, count}))
      .sort((a, b) => b.count - a.count).slice(0, 10),
    blocks,
    images_by_verdict: null,
  };
}

function stat(label, value, kind = '', id = '') {
  return el('div', {class: `stat ${kind}`.trim(), id: id || null},
    el('div', {class: 'stat-value'}, String(value ?? '—')),
    el('div', {class: 'stat-label'}, label));
}

async function load(api) {
  try {
    return await api.get('/api/v1/overview', {hours: HOURS});
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    return computed(api);
  }
}

export async function render(root, {api, signal}) {
  draw(root, await load(api));
  const timer = setInterval(() => {      // refreshed while shown
    load(api).then((data) => { if (!signal.aborted) draw(clear(root), data); })
      .catch(() => {});
  }, REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer));
}

function draw(root, data) {
  const agents = data.agents || {};
  const alerts = data.alerts_over_time || [];
  const total = alerts.reduce((n, p) => n + (Number(p.count) || 0), 0);
  const verdicts = data.images_by_verdict;
  root.append(
    el('section', {class: 'stats', id: 'overview-agents'},
      stat('agents online', agents.online ?? 0, 'ok', 'stat-online'),
      stat('agents offline', agents.offline ?? 0, agents.offline ? 'warn' : '', 'stat-offline'),
      stat('agents revoked', agents.revoked ?? 0, '', 'stat-revoked'),
      stat(`alerts (${HOURS} h)`, total, total ? 'bad' : '', 'stat-alerts'),
      stat('blocks', data.blocks ?? 0, '', 'stat-blocks')),
    el('section', {class: 'card'},
      el('h2', {}, `Alerts per hour, last ${HOURS} hours`),
      barChart(alerts, {label: 'alerts'})),
    el('div', {class: 'columns'},
      el('section', {class: 'card', id: 'overview-rules'},
        el('h2', {}, 'Top rules'),
        hbars((data.top_rules || []).map((r) => ({label: String(r.rule), count: r.count,
          href: `#/alerts?rule=${encodeURIComponent(r.rule)}`})),
          {empty: 'no alerts'})),
      el('section', {class: 'card', id: 'overview-images'},
        el('h2', {}, 'Images by verdict'),
        verdicts ? el('div', {class: 'verdicts'},
          badge(`compliant ${verdicts.compliant ?? 0}`, 'ok'),
          badge(`non-compliant ${verdicts['non-compliant'] ?? 0}`, 'bad'),
          badge(`unscanned ${verdicts.unscanned ?? 0}`, ''))
          : el('p', {class: 'muted'}, 'not reported by this server'))));
}
