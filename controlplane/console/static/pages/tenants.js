// Tenants: the tenant registry (GET /api/v1/tenants; a tenant's principal sees only its
// own), create and delete (POST, DELETE /api/v1/tenants/{name}: global admin; the server
// refuses to delete a tenant that still has agents), and the Tenant Manager: one policy
// YAML stored in each chosen tenant, all or nothing (POST /api/v1/policies/distribute:
// global admin or global operator).
import {el, clear, table, fmtUnix, errorBox} from '../dom.js';
import {can, isGlobal, status, field, button, act, useStyles} from './uikit.js';

export const title = 'Tenants';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

function distributeForm(ctx, tenants, reload) {
  const st = status();
  const all = el('input', {type: 'checkbox', id: 'dist-all'});
  const boxes = tenants.map((t) => el('input', {type: 'checkbox', class: 'dist-tenant',
    value: t.name, dataset: {tenant: t.name}}));
  all.addEventListener('change', () => { for (const b of boxes) b.disabled = all.checked; });
  const content = el('textarea', {id: 'dist-content', class: 'yaml', spellcheck: 'false',
    placeholder: 'kind: Policy\nmetadata: {name: baseline}\nspec: ...'});
  const comment = el('input', {id: 'dist-comment', placeholder: 'why (kept in the history)'});
  const results = el('div', {id: 'dist-results'});
  const send = el('button', {type: 'submit', id: 'dist-send'}, 'Distribute');
  return el('form', {class: 'form-card', id: 'distribute-form', onsubmit: async (e) => {
    e.preventDefault();
    st.clear();
    clear(results);
    const chosen = all.checked ? ['*'] : boxes.filter((b) => b.checked).map((b) => b.value);
    if (!chosen.length) { st.error({detail: 'choose at least one tenant'}); return; }
    const res = await act(send, st, () => ctx.api.send('POST', '/api/v1/policies/distribute',
      {tenants: chosen, content: content.value, comment: comment.value}));
    if (!res) return;
    const rows = Object.entries(res.tenants || {}).flatMap(([tenant, r]) =>
      (r.policies || []).map((p) => ({tenant, ...p})));
    st.ok(`Stored in ${Object.keys(res.tenants || {}).length} tenants.`);
    results.append(table([
      {title: 'Tenant', value: (r) => r.tenant},
      {title: 'Policy', value: (r) => r.name},
      {title: 'Version', value: (r) => String(r.version ?? '')},
      {title: 'Changed', value: (r) => (r.changed === false ? 'no (same as stored)' : 'yes')},
    ], rows));
    reload();
  }},
  el('h2', {}, 'Tenant Manager: distribute a policy'),
  el('p', {class: 'muted'}, 'Every document is stored as that tenant\'s policy in each tenant '
    + 'chosen (all or nothing); their agents receive it.'),
  el('div', {class: 'checks'}, el('label', {}, all, ' every tenant'),
    tenants.map((t, i) => el('label', {}, boxes[i], ` ${t.name}`))),
  field('Policy (YAML)', content), field('Comment', comment), el('div', {}, send), st.node,
  results);
}

export async function render(root, ctx) {
  useStyles();
  const admin = can(ctx, ['admin']) && isGlobal(ctx);
  const distributor = can(ctx, ['admin', 'operator']) && isGlobal(ctx);
  const st = status();
  const holder = el('div', {id: 'tenants'});
  const manager = el('div', {id: 'tenant-manager'});

  async function load() {
    let tenants;
    try {
      tenants = await ctx.api.get('/api/v1/tenants');
    } catch (err) {
      if (err.status === 401) throw err;
      clear(holder).append(errorBox(err));
      return;
    }
    const cols = [
      {title: 'Tenant', value: (t) => t.name},
      {title: 'Created', value: (t) => fmtUnix(t.created_at)},
      {title: 'Agents', value: (t) => String(t.agents ?? 0)},
      {title: 'Policies', value: (t) => String(t.policies ?? 0)},
    ];
    if (admin) {
      cols.push({title: '', value: (t) => button('Delete', async (e) => {
        if (!window.confirm(`Delete tenant ${t.name}?`)) return;
        const ok = await act(e.currentTarget, st, async () => {
          await ctx.api.send('DELETE', `/api/v1/tenants/${encodeURIComponent(t.name)}`);
          return true;
        });
        if (ok) { st.ok(`Tenant ${t.name} deleted.`); load(); }
      }, {class: 'danger delete-tenant', dataset: {tenant: t.name}})});
    }
    clear(holder).append(table(cols, tenants, {empty: 'no tenant',
      rowAttrs: (t) => ({class: 'tenant-row', dataset: {tenant: t.name}})}));
    if (distributor && !manager.firstChild) manager.append(distributeForm(ctx, tenants, load));
  }

  if (admin) {
    const name = el('input', {id: 'tenant-name', placeholder: 'team-a', autocomplete: 'off'});
    const add = el('button', {type: 'submit', id: 'tenant-add'}, 'Create tenant');
    root.append(el('form', {class: 'form-card', id: 'tenant-form', onsubmit: async (e) => {
      e.preventDefault();
      st.clear();
      const made = await act(add, st, () => ctx.api.send('POST', '/api/v1/tenants',
        {name: name.value.trim()}));
      if (made) {
        st.ok(`Tenant ${name.value.trim()} created.`);
        name.value = '';
        clear(manager);
        load();
      }
    }}, el('h2', {}, 'Create a tenant'), el('div', {class: 'toolbar'}, field('Name', name), add)));
  }
  root.append(st.node, holder, manager);
  await load();
}
