// Audit log: every change, newest first, a page at a time (GET /api/v1/audit?page=1:
// {"entries", "next"}; "Older" passes next as ?before=), filtered by actor (a name, or
// role:name) and action (exact, or a prefix ending in '.': "policy."). Filters and the
// page live in the URL hash (#/audit?actor=alice&before=123), so a view can be shared.
import {el, clear, table, fmtUnix, errorBox} from '../dom.js';
import {field, button, useStyles} from './uikit.js';

export const title = 'Audit log';
export const roles = ['admin', 'auditor'];

const PAGE = 50;

function detail(d) {
  if (d === null || d === undefined) return '';
  const s = typeof d === 'string' ? d : JSON.stringify(d);
  return el('code', {class: 'detail', title: s}, s.length > 200 ? `${s.slice(0, 200)}…` : s);
}

export async function render(root, ctx) {
  useStyles();
  const p = ctx.params;
  const actor = el('input', {type: 'search', id: 'audit-actor', value: p.actor || '',
    placeholder: 'alice or admin:alice'});
  const action = el('input', {type: 'search', id: 'audit-action', value: p.action || '',
    placeholder: 'policy.apply or policy.'});
  const go = (extra = {}) => ctx.navigate('audit', {actor: actor.value.trim(),
    action: action.value.trim(), ...extra});
  const form = el('form', {class: 'toolbar', id: 'audit-filter',
    onsubmit: (e) => { e.preventDefault(); go(); }},
  field('Actor', actor), field('Action', action),
  el('button', {type: 'submit', id: 'audit-apply'}, 'Filter'),
  button('Clear', () => ctx.navigate('audit', {})));
  const holder = el('div', {id: 'audit-entries'});
  root.append(form, holder);
  let res;
  try {
    res = await ctx.api.get('/api/v1/audit', {page: 1, limit: PAGE, actor: p.actor,
      action: p.action, before: p.before});
  } catch (err) {
    if (err.status === 401) throw err;
    holder.append(errorBox(err));
    return;
  }
  clear(holder).append(table([
    {title: 'When', value: (r) => fmtUnix(r.at)},
    {title: 'Actor', value: (r) => r.actor},
    {title: 'Action', value: (r) => r.action},
    {title: 'Target', value: (r) => r.target},
    {title: 'Detail', value: (r) => detail(r.detail)},
  ], res.entries, {empty: 'no audit entry matches', rowAttrs: (r) => ({class: 'audit-row',
    dataset: {id: r.id}})}));
  const pager = el('div', {class: 'pager'});
  if (p.before) pager.append(button('Newest', () => go(), {id: 'audit-newest'}));
  if (res.next !== null && res.next !== undefined) {
    pager.append(button('Older →', () => go({before: res.next}), {id: 'audit-older'}));
  }
  holder.append(pager);
}
