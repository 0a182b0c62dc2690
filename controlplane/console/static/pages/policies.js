// Policies: the current policies, and per policy its YAML (an editor for admins and
// operators; read-only for the others), its history with rollback, a diff between any
// two versions, and which agents acknowledged which version. A save sends the text to
// POST /api/v1/policies: the server lints every document first and stores nothing if
// one is wrong; its problems (file, line, field) are shown at their line.
import {el, table, badge, fmtUnix, clear, errorBox} from '../dom.js';
import {ApiError} from '../api.js';
import {toYaml, lineDiff} from '../text.js';

export const title = 'Policies';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

const WRITERS = ['admin', 'operator'];
const ACK_REFRESH_MS = 3000;
const TEMPLATE = `apiVersion: moray/v1
kind: RuntimePolicy
metadata:
  name: my-policy
spec:
  scope:
    host: true
  mode: monitor
  exec:
    deny:
      - /usr/bin/nc
`;

const enc = encodeURIComponent;

// A textarea with line numbers; mark(lines) highlights the lines of lint problems.
export function lineEditor(value, {id = 'policy-editor'} = {}) {
  const gutter = el('div', {class: 'gutter', 'aria-hidden': 'true'});
  const area = el('textarea', {id, spellcheck: 'false', wrap: 'off', autocomplete: 'off',
    autocapitalize: 'off', 'aria-label': 'policy YAML'});
  area.value = value;
  let bad = new Set();
  function sync() {
    const count = area.value.split('\n').length;
    area.rows = count + 1;
    if (gutter.childElementCount !== count) {
      gutter.replaceChildren(...Array.from({length: count}, (_, i) => el('div', {}, String(i + 1))));
    }
    [...gutter.children].forEach((row, i) => row.classList.toggle('bad', bad.has(i + 1)));
  }
  area.addEventListener('input', sync);
  area.addEventListener('keydown', (event) => {   // Tab indents (two spaces) in the editor
    if (event.key !== 'Tab' || event.shiftKey) return;
    event.preventDefault();
    area.setRangeText('  ', area.selectionStart, area.selectionEnd, 'end');
    sync();
  });
  sync();
  return {
    node: el('div', {class: 'editor'}, gutter, area),
    area,
    value: () => area.value,
    mark(lines) { bad = new Set(lines); sync(); },
  };
}

function problemsOf(err) {
  const body = err instanceof ApiError ? err.body : null;
  if (!body || typeof body !== 'object' || !Array.isArray(body.problems)) return null;
  return body.problems;
}

function editCard(ctx, {content, name, onSaved}) {
  const editor = lineEditor(content);
  const comment = el('input', {id: 'policy-comment', size: 60, placeholder: 'why (kept in history)'});
  const out = el('div', {id: 'policy-result'});
  const save = el('button', {type: 'button', id: 'policy-save'}, 'Validate and save');
  save.addEventListener('click', async () => {
    save.disabled = true;
    clear(out);
    editor.mark([]);
    try {
      const result = await ctx.api.send('POST', '/api/v1/policies', {content: editor.value(),
        source: `${name || 'console'}.yaml`, comment: comment.value});
      const changed = result.policies.filter((p) => p.changed);
      out.append(el('div', {class: 'notice', id: 'policy-save-result'}, changed.length
        ? `Saved: ${changed.map((p) => `${p.name} v${p.version}`).join(', ')}`
        : 'No change: every document is identical to its current version.'));
      onSaved(result.policies);
    } catch (err) {
      const problems = problemsOf(err);
      if (!problems) {
        out.append(errorBox(err));
      } else {
        editor.mark(problems.map((p) => p.line).filter((l) => l));
        out.append(el('div', {class: 'error', id: 'policy-problems'},
          'Nothing was saved. Problems:',
          el('ul', {class: 'problems'}, problems.map((p) => el('li', {class: 'problem',
            dataset: {line: p.line ?? ''}},
          p.line ? `line ${p.line}: ` : '', p.field ? `${p.field}: ` : '', p.message)))));
        const first = problems.find((p) => p.line);
        if (first) {       // put the caret on the first bad line
          const lines = editor.value().split('\n');
          const at = lines.slice(0, first.line - 1).reduce((n, l) => n + l.length + 1, 0);
          editor.area.focus();
          editor.area.setSelectionRange(at, at);
        }
      }
    } finally {
      save.disabled = false;
    }
  });
  return el('section', {class: 'card', id: 'policy-edit'},
    el('h2', {}, name ? 'Edit' : 'New policy'),
    editor.node,
    el('div', {class: 'toolbar'}, el('label', {}, 'comment', comment), save),
    out);
}

function diffView(older, newer) {
  const a = older ? toYaml(older.document || {}).split('\n') : [];
  const b = newer ? toYaml(newer.document || {}).split('\n') : [];
  const ops = lineDiff(a, b);
  const cls = {' ': 'ctx', '-': 'del', '+': 'add'};
  return el('pre', {class: 'diff', id: 'policy-diff'},
    ops.map((o) => el('div', {class: cls[o.op]}, `${o.op} ${o.line}`)));
}

// the server's rule (controlplane/server/policydoc.py selects_host): an agent receives
// the policy when it has every label of spec.scope.agents.labels with the same value
export function selects(document, labels) {
  const scope = ((document || {}).spec || {}).scope || {};
  const wanted = (scope.agents || {}).labels || {};
  return Object.entries(wanted).every(([k, v]) => (labels || {})[k] === v);
}

function acksTable(agents, name, tenant, current, document) {
  const rows = agents.filter((a) => a.tenant === tenant && !a.revoked)
    .map((a) => ({agent: a, ack: (a.policies || {})[name] || null,
      selected: selects(document, a.labels)}));
  return table([
    {title: 'agent', value: (r) => [r.agent.hostname, ' ',
      el('span', {class: 'muted mono'}, String(r.agent.id).slice(0, 8))]},
    {title: 'state', value: (r) => (r.agent.connected ? badge('online', 'ok')
      : badge('offline', 'warn'))},
    {title: 'acknowledged version', value: (r) => (r.ack ? `v${r.ack.version}` : '—')},
    {title: 'status', value: (r) => {
      if (!r.ack) return r.selected ? badge('not received', 'warn') : badge('not selected');
      const ok = /APPLIED/i.test(r.ack.status);
      const latest = r.ack.version === current;
      return badge(`${r.ack.status}${latest ? '' : ' (older version)'}`,
        ok && latest ? 'ok' : ok ? 'warn' : 'bad');
    }},
    {title: 'error', value: (r) => (r.ack && r.ack.error) || ''},
    {title: 'when', value: (r) => (r.ack ? fmtUnix(r.ack.acked_at) : '')},
  ], rows, {empty: 'no agent in this tenant',
    rowAttrs: (r) => ({dataset: {agent: r.agent.id, version: r.ack ? r.ack.version : '',
      selected: r.selected ? '1' : '0'}})});
}

async function renderDetail(root, ctx) {
  const {api, params, navigate, signal, session} = ctx;
  const name = params.name;
  const tenant = params.tenant || 'default';
  const canWrite = WRITERS.includes(session.role);
  const [history, agents] = await Promise.all([
    api.get(`/api/v1/policies/${enc(name)}/history`, {tenant}),
    api.get('/api/v1/agents', {tenant}),
  ]);
  const current = history[history.length - 1];
  const byVersion = new Map(history.map((h) => [h.version, h]));
  root.append(el('p', {}, el('a', {href: '#/policies'}, '← all policies')),
    el('h2', {id: 'policy-title'}, `${name} `, badge(`tenant ${tenant}`),
      badge(`v${current.version}`), current.removed ? badge('removed', 'bad') : null));

  if (params.saved) {
    root.append(el('div', {class: 'notice', id: 'policy-saved'}, `Saved as v${params.saved}.`));
  }
  const yaml = current.removed ? '' : toYaml(current.document || {});
  if (canWrite) {
    root.append(editCard(ctx, {content: yaml, name, onSaved: (saved) => {
      const first = saved[0];
      if (first && first.changed) {
        navigate('policies', {name: first.name, tenant: first.tenant, saved: first.version});
      }
    }}));
  } else {
    root.append(el('section', {class: 'card', id: 'policy-view'}, el('h2', {}, 'Document'),
      el('pre', {class: 'json', id: 'policy-yaml'}, yaml || '(removed)')));
  }

  const acks = el('div', {id: 'policy-acks'}, acksTable(agents, name, tenant, current.version,
    current.document));
  root.append(el('section', {class: 'card'}, el('h2', {}, 'Agents'), acks));
  const timer = setInterval(async () => {
    try {
      const fresh = await api.get('/api/v1/agents', {tenant});
      if (!signal.aborted) clear(acks).append(acksTable(fresh, name, tenant,
        current.version, current.document));
    } catch { /* shown again on the next tick */ }
  }, ACK_REFRESH_MS);
  signal.addEventListener('abort', () => clearInterval(timer));

  const versions = history.map((h) => h.version);
  const pick = (id, chosen) => el('select', {id}, versions.map((v) => el('option',
    {value: v, selected: v === chosen}, `v${v}`)));
  const from = pick('diff-from', versions.length > 1 ? versions[versions.length - 2] : versions[0]);
  const to = pick('diff-to', current.version);
  const diffOut = el('div');
  const drawDiff = () => clear(diffOut).append(diffView(byVersion.get(Number(from.value)),
    byVersion.get(Number(to.value))));
  from.addEventListener('change', drawDiff);
  to.addEventListener('change', drawDiff);
  drawDiff();

  const message = el('div');
  const columns = [
    {title: 'version', value: (h) => `v${h.version}`},
    {title: 'when', value: (h) => fmtUnix(h.created_at)},
    {title: 'author', value: (h) => h.author},
    {title: 'action', value: (h) => (h.removed ? 'removed' : h.action)},
    {title: 'comment', value: (h) => h.comment},
    {title: 'sha256', value: (h) => String(h.sha256 || '').slice(0, 12), class: 'mono'},
  ];
  if (canWrite) {
    columns.push({title: '', value: (h) => (h.version === current.version || h.removed ? ''
      : el('button', {type: 'button', class: 'secondary', dataset: {version: h.version},
        onclick: async () => {
          clear(message);
          try {
            await api.send('POST', `/api/v1/policies/${enc(name)}/rollback?tenant=${enc(tenant)}`,
              {version: h.version, comment: `rollback to v${h.version} from the console`});
            navigate('policies', {name, tenant, t: Date.now()});
          } catch (err) {
            message.append(errorBox(err));
          }
        }}, `Roll back to v${h.version}`))});
  }
  root.append(el('section', {class: 'card', id: 'policy-history'}, el('h2', {}, 'History'),
    message, table(columns, [...history].reverse())),
  el('section', {class: 'card'}, el('h2', {}, 'Diff'),
    el('div', {class: 'toolbar'}, el('label', {}, 'from', from), el('label', {}, 'to', to)),
    diffOut));

  if (canWrite && !current.removed) {
    const remove = el('button', {type: 'button', class: 'danger', id: 'policy-delete'},
      'Delete policy…');
    let armed = false;
    remove.addEventListener('click', async () => {
      if (!armed) { armed = true; remove.textContent = `Confirm: delete ${name}`; return; }
      try {
        await api.send('DELETE', `/api/v1/policies/${enc(name)}?tenant=${enc(tenant)}`);
        navigate('policies', {});
      } catch (err) {
        message.append(errorBox(err));
      }
    });
    root.append(el('div', {class: 'toolbar'}, remove));
  }
}

async function renderList(root, ctx) {
  const {api, navigate, session} = ctx;
  const [policies, agents] = await Promise.all([api.get('/api/v1/policies'),
    api.get('/api/v1/agents')]);
  const held = (p) => {
    const mine = agents.filter((a) => a.tenant === p.tenant && !a.revoked);
    const on = mine.filter((a) => ((a.policies || {})[p.name] || {}).version === p.version);
    return `${on.length}/${mine.length}`;
  };
  if (WRITERS.includes(session.role)) {
    root.append(el('div', {class: 'toolbar'}, el('button', {type: 'button', id: 'policy-new',
      onclick: () => navigate('policies', {new: '1'})}, 'New policy')));
  }
  root.append(table([
    {title: 'name', value: (p) => el('a', {href: `#/policies?name=${enc(p.name)}&tenant=${
      enc(p.tenant)}`}, p.name)},
    {title: 'tenant', value: (p) => p.tenant},
    {title: 'version', value: (p) => `v${p.version}`},
    {title: 'agents on this version', value: held},
    {title: 'author', value: (p) => p.author},
    {title: 'updated', value: (p) => fmtUnix(p.created_at)},
    {title: 'comment', value: (p) => p.comment},
  ], policies.filter((p) => !p.removed), {empty: 'no policies',
    rowAttrs: (p) => ({dataset: {policy: p.name}})}));
}

export async function render(root, ctx) {
  const {params, session, navigate} = ctx;
  if (params.name) return renderDetail(root, ctx);
  if (params.new && WRITERS.includes(session.role)) {
    root.append(el('p', {}, el('a', {href: '#/policies'}, '← all policies')),
      editCard(ctx, {content: TEMPLATE, name: '', onSaved: (saved) => {
        const first = saved[0];
        if (first) navigate('policies', {name: first.name, tenant: first.tenant,
          saved: first.version});
      }}));
    return undefined;
  }
  return renderList(root, ctx);
}
