// Agents: every enrolled agent with its kind (agent, micro, nano: what enrolled), its labels, connection state, version, health
// (drops, spool), last heartbeat, the enforcement tier it picked per hook (its status)
// and per rule (its policy acknowledgements); admins can revoke one, admins and
// operators can set its labels. Everything shown comes from the agent: rendered as text.
// The list comes a page at a time (GET /api/v1/agents?page=1: {"agents", "next"});
// "More" adds the next page; the filter searches the agents loaded.
import {el, table, badge, ago, fmtUnix, clear} from '../dom.js';
import {perPage} from './uikit.js';

export const title = 'Agents';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

const REFRESH_MS = 10000;
const PAGE = 100;       // agents a page (keyset pages of the server, "More" adds one)

export function state(agent) {
  if (agent.revoked) return ['revoked', 'bad'];
  return agent.connected ? ['online', 'ok'] : ['offline', 'warn'];
}

function drops(status) {
  return Object.values(status.drops || {}).reduce((n, v) => n + (Number(v) || 0), 0);
}

function health(agent) {
  if (agent.revoked) return badge('revoked', 'bad');
  const status = agent.status || {};
  const failed = Object.entries(agent.policies || {}).filter(([, p]) => p.status === 'FAILED'
    || p.status === 'failed' || p.error);
  const lost = drops(status);
  const out = [];
  if (failed.length) out.push(badge(`${failed.length} policy failed`, 'bad'));
  if (lost) out.push(badge(`${lost} dropped`, 'warn'));
  if (Number(status.spool_records)) out.push(badge(`${status.spool_records} spooled`, 'warn'));
  return out.length ? out : badge('ok', 'ok');
}

function labelBadges(labels) {
  const entries = Object.entries(labels || {});
  return entries.length ? entries.map(([k, v]) => badge(`${k}=${v}`)) : '—';
}

function tierTable(tiers, empty) {
  const rows = Object.entries(tiers || {}).sort(([a], [b]) => a.localeCompare(b));
  return table([{title: 'rule kind / hook', value: ([k]) => k, class: 'mono'},
    {title: 'tier', value: ([, t]) => badge(t, t === 'monitor' ? 'warn' : '')}], rows, {empty});
}

function parseLabels(textValue) {
  const labels = {};
  for (const part of textValue.split(',').map((s) => s.trim()).filter(Boolean)) {
    const at = part.indexOf('=');
    if (at < 1) throw new Error(`"${part}" is not key=value`);
    labels[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return labels;
}

function detail(agent, ctx, reload) {
  const status = agent.status || {};
  const [label, kind] = state(agent);
  const role = ctx.session.role;
  const actions = el('div', {class: 'toolbar'});
  const message = el('div');
  if (['admin', 'operator'].includes(role) && !agent.revoked) {
    const input = el('input', {id: 'agent-labels-input', size: 50,
      value: Object.entries(agent.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ')});
    actions.append(el('label', {}, 'labels (key=value, ...)', input),
      el('button', {type: 'button', id: 'agent-labels-save', onclick: async () => {
        clear(message);
        try {
          await ctx.api.send('PUT', `/api/v1/agents/${encodeURIComponent(agent.id)}/labels`,
            {labels: parseLabels(input.value)});
          await reload();
        } catch (err) {
          message.append(el('div', {class: 'error'}, err.message || String(err)));
        }
      }}, 'Save labels'));
  }
  if (role === 'admin' && !agent.revoked) {
    const revoke = el('button', {type: 'button', class: 'danger', id: 'agent-revoke'}, 'Revoke…');
    let armed = false;
    revoke.addEventListener('click', async () => {
      if (!armed) {     // two clicks: no modal dialog, no accident
        armed = true;
        revoke.textContent = `Confirm: revoke ${agent.hostname}`;
        return;
      }
      revoke.disabled = true;
      try {
        await ctx.api.send('POST', `/api/v1/agents/${encodeURIComponent(agent.id)}/revoke`);
        await reload();
      } catch (err) {
        message.append(el('div', {class: 'error'}, err.message || String(err)));
        revoke.disabled = false;
      }
    });
    actions.append(revoke);
  }
  const policies = Object.entries(agent.policies || {}).sort(([a], [b]) => a.localeCompare(b));
  return el('section', {class: 'card', id: 'agent-detail'},
    el('h2', {}, agent.hostname, ' ', badge(agent.kind || 'agent'), ' ', badge(label, kind)),
    el('table', {class: 'grid kv'}, el('tbody', {},
      [['id', agent.id], ['kind', agent.kind || 'agent'], ['tenant', agent.tenant], ['version', status.agent_version || '—'],
        ['kernel', status.kernel || '—'], ['enrolled', fmtUnix(agent.enrolled_at)],
        ['last seen', `${fmtUnix(agent.last_seen)} (${ago(agent.last_seen)})`],
        ['certificate serial', agent.cert_serial],
        ['spool', `${status.spool_records || 0} records, ${status.spool_bytes || 0} bytes`],
        ['drops', Object.entries(status.drops || {}).map(([k, v]) => `${k}: ${v}`).join(', ')
          || 'none'],
        ['kernel features', Object.entries(status.features || {})
          .map(([k, v]) => `${k}${v ? '' : ' (no)'}`).join(', ') || '—'],
      ].map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {class: 'mono'}, v))))),
    el('p', {}, 'Labels: ', labelBadges(agent.labels)),
    actions, message,
    el('h2', {}, 'Enforcement tier per hook'),
    tierTable(status.tiers, 'not reported'),
    el('h2', {}, 'Policies held'),
    table([{title: 'policy', value: ([n]) => n},
      {title: 'version', value: ([, p]) => `v${p.version}`},
      {title: 'status', value: ([, p]) => badge(p.status, /APPLIED|applied/.test(p.status)
        ? 'ok' : 'bad')},
      {title: 'error', value: ([, p]) => p.error || ''},
      {title: 'acknowledged', value: ([, p]) => fmtUnix(p.acked_at)},
      {title: 'tier per rule', value: ([, p]) => Object.entries(p.tiers || {})
        .map(([r, t]) => el('div', {class: 'mono'}, `${r}: ${t}`))}], policies,
    {empty: 'no policy acknowledged'}));
}

export async function render(root, ctx) {
  const {api, params, navigate, signal} = ctx;
  const filter = el('input', {id: 'agents-filter', placeholder: 'hostname, kind, label, id',
    value: params.q || ''});
  const list = el('div', {id: 'agents-list'});
  const side = el('div');
  root.append(el('div', {class: 'toolbar'}, el('label', {}, 'filter', filter)), list, side);
  const per = perPage(params, PAGE);
  let agents = [];
  let next = null;        // more agents after the pages shown
  let want = per;         // how many agents the pages shown hold
  let chosen = null;      // the agent of the detail (params.id)

  function draw() {
    const q = filter.value.trim().toLowerCase();
    const shown = agents.filter((a) => !q || [a.hostname, a.id, a.tenant, a.kind,
      ...Object.entries(a.labels || {}).map(([k, v]) => `${k}=${v}`)]
      .some((s) => String(s).toLowerCase().includes(q)));
    clear(list).append(el('p', {class: 'muted'}, `${shown.length} of ${agents.length} agents`
      + (next ? ' loaded' : '')),
      table([
        {title: 'host', value: (a) => [a.hostname, ' ',
          el('span', {class: 'muted mono'}, String(a.id).slice(0, 8))]},
        {title: 'kind', value: (a) => a.kind || 'agent'},
        {title: 'state', value: (a) => badge(...state(a))},
        {title: 'tenant', value: (a) => a.tenant},
        {title: 'labels', value: (a) => labelBadges(a.labels)},
        {title: 'version', value: (a) => (a.status || {}).agent_version || '—'},
        {title: 'tiers', value: (a) => Object.entries((a.status || {}).tiers || {})
          .map(([k, t]) => badge(`${k}: ${t}`))},
        {title: 'health', value: health},
        {title: 'last seen', value: (a) => ago(a.last_seen)},
        {title: 'policies', value: (a) => Object.entries(a.policies || {})
          .map(([n, p]) => badge(`${n} v${p.version}`))},
      ], shown, {empty: 'no agents enrolled',
        rowAttrs: (a) => ({class: a.id === params.id ? 'clickable selected' : 'clickable',
          dataset: {agent: a.id},
          onclick: () => navigate('agents', {...params, id: a.id})})}));
    if (next) {
      list.append(el('div', {class: 'pager'}, el('button', {type: 'button', id: 'agents-more',
        onclick: () => more().catch(() => {})}, `More (${per} a page) →`)));
    }
    clear(side);
    if (chosen) side.append(detail(chosen, ctx, load));
  }

  // keyset pages in enrolment order (GET /api/v1/agents?page=1&after=): `want` agents are
  // shown (a page more on "More"); a refresh reads the pages shown again
  async function pages(count) {
    const out = [];
    let after = null;
    let last = null;
    do {
      const res = await api.get('/api/v1/agents', {page: 1, limit: per, after});
      out.push(...res.agents);
      last = res.next;
      after = last;
    } while (last && out.length < count);
    return [out, last];
  }

  async function load() {
    const [got, more] = await pages(want);
    // an agent named in the URL but not on the pages shown (a link to it): read alone
    let one = got.find((a) => a.id === params.id) || null;
    if (!one && params.id) one = await api.get(`/api/v1/agents/${encodeURIComponent(params.id)}`).catch(() => null);
    if (signal.aborted) return;
    agents = got;
    next = more;
    chosen = one;
    draw();
  }

  async function more() {
    want = agents.length + per;
    await load();
  }

  filter.addEventListener('input', draw);
  await load();
  // refreshed while shown (connection state, last seen), not while an edit is open
  const timer = setInterval(() => {
    if (document.activeElement && document.activeElement.id === 'agent-labels-input') return;
    load().catch(() => {});
  }, REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer));
}
