// Users (admin): list, create, change role, disable/enable, delete (GET/POST /api/v1/users,
// PATCH/DELETE /api/v1/users/{name}); a tenant's admin manages its own tenant's users
// (the server enforces it). Every signed-in user: their own password change
// (POST /api/v1/session/password).
import {el, clear, table, fmtUnix, errorBox} from '../dom.js';
import {ROLES, can, isGlobal, status, field, select, button, act, useStyles} from './uikit.js';

export const title = 'Users';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

function passwordForm(ctx) {
  const st = status();
  const current = el('input', {type: 'password', id: 'pw-current', autocomplete: 'current-password'});
  const next = el('input', {type: 'password', id: 'pw-new', autocomplete: 'new-password'});
  const again = el('input', {type: 'password', id: 'pw-again', autocomplete: 'new-password'});
  const save = el('button', {type: 'submit', id: 'pw-save'}, 'Change password');
  const form = el('form', {class: 'form-card', id: 'password-form', onsubmit: async (e) => {
    e.preventDefault();
    st.clear();
    if (next.value !== again.value) { st.error({detail: 'the new passwords differ'}); return; }
    const done = await act(save, st, async () => {
      await ctx.api.send('POST', '/api/v1/session/password',
        {current: current.value, new: next.value});
      return true;
    });
    if (done) {
      current.value = ''; next.value = ''; again.value = '';
      st.ok('Password changed.');
    }
  }},
  el('h2', {}, `Your account: ${ctx.session.user}`),
  el('div', {class: 'toolbar'}, field('Current password', current), field('New password', next),
    field('New password again', again), save), st.node);
  return form;
}

function createForm(ctx, reload) {
  const st = status();
  const name = el('input', {id: 'user-name', autocomplete: 'off'});
  const password = el('input', {type: 'password', id: 'user-password', autocomplete: 'new-password'});
  const role = select('user-role', ROLES, 'viewer');
  const tenant = el('input', {id: 'user-tenant', placeholder: 'empty: every tenant',
    value: ctx.session.tenant || '', disabled: !isGlobal(ctx)});
  const add = el('button', {type: 'submit', id: 'user-add'}, 'Create user');
  return el('form', {class: 'form-card', id: 'user-form', onsubmit: async (e) => {
    e.preventDefault();
    st.clear();
    const body = {name: name.value.trim(), password: password.value, role: role.value,
      tenant: isGlobal(ctx) ? (tenant.value.trim() || null) : ctx.session.tenant};
    const user = await act(add, st, () => ctx.api.send('POST', '/api/v1/users', body));
    if (user) {
      st.ok(`User ${body.name} created.`);
      name.value = ''; password.value = '';
      reload();
    }
  }},
  el('h2', {}, 'Create a user'),
  el('div', {class: 'toolbar'}, field('Name', name), field('Password', password),
    field('Role', role), field('Tenant', tenant), add), st.node);
}

async function userList(ctx, holder, st) {
  const users = await ctx.api.get('/api/v1/users');
  const patch = async (btn, u, body, message) => {
    const ok = await act(btn, st, () => ctx.api.send('PATCH',
      `/api/v1/users/${encodeURIComponent(u.name)}`, body));
    if (ok !== undefined) { st.ok(message); await userList(ctx, holder, st); }
  };
  clear(holder).append(table([
    {title: 'Name', value: (u) => u.name},
    {title: 'Role', value: (u) => {
      if (u.name === ctx.session.user) return u.role;
      const s = select(`role-${u.name}`, ROLES, u.role);
      s.classList.add('user-role');
      s.addEventListener('change', () => patch(s, u, {role: s.value},
        `${u.name} is now ${s.value}.`));
      return s;
    }},
    {title: 'Tenant', value: (u) => u.tenant || el('span', {class: 'muted'}, 'every tenant')},
    {title: 'State', value: (u) => (u.disabled ? 'disabled' : 'active')},
    {title: 'Created', value: (u) => fmtUnix(u.created_at)},
    {title: '', value: (u) => (u.name === ctx.session.user ? el('span', {class: 'muted'}, 'you') : [
      button(u.disabled ? 'Enable' : 'Disable', (e) => patch(e.currentTarget, u,
        {disabled: !u.disabled}, `${u.name} ${u.disabled ? 'enabled' : 'disabled'}.`),
      {class: 'toggle-user'}),
      button('Delete', async (e) => {
        if (!window.confirm(`Delete user ${u.name}?`)) return;
        const ok = await act(e.currentTarget, st, async () => {
          await ctx.api.send('DELETE', `/api/v1/users/${encodeURIComponent(u.name)}`);
          return true;
        });
        if (ok) { st.ok(`User ${u.name} deleted.`); await userList(ctx, holder, st); }
      }, {class: 'danger delete-user'}),
    ])},
  ], users, {empty: 'no user', rowAttrs: (u) => ({class: 'user-row', dataset: {name: u.name}})}));
}

export async function render(root, ctx) {
  useStyles();
  root.append(passwordForm(ctx));
  if (!can(ctx, ['admin'])) return;
  const st = status();
  const holder = el('div', {id: 'users'});
  const reload = () => userList(ctx, holder, st).catch((err) => holder.replaceChildren(errorBox(err)));
  root.append(createForm(ctx, reload), el('h2', {}, 'Users'), st.node, holder);
  await reload();
}
