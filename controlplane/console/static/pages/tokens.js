// API tokens (admin): list (GET /api/v1/tokens: never a secret), create (POST: the
// token is in the answer once, shown here once with a copy button and a warning; it is
// kept nowhere in the page after that), revoke (POST /api/v1/tokens/{id}/revoke).
import {el, clear, table, fmtUnix, errorBox} from '../dom.js';
import {isGlobal, status, field, select, button, act, useStyles} from './uikit.js';

export const title = 'API tokens';
export const roles = ['admin'];

const TOKEN_ROLES = ['viewer', 'auditor', 'operator', 'admin', 'admission'];
const TTLS = [['', 'until revoked'], ['3600', '1 hour'], ['86400', '1 day'],
  ['2592000', '30 days'], ['7776000', '90 days'], ['31536000', '1 year']];

async function copy(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no clipboard API (a plain-HTTP origin): select the text and use the old command
    input.select();
    return document.execCommand('copy');
  }
}

function shownOnce(created, onDone) {
  const box = el('input', {type: 'text', readonly: true, id: 'token-secret', class: 'secret',
    value: created.token, 'aria-label': 'the new token', autocomplete: 'off',
    spellcheck: 'false'});
  const said = el('span', {class: 'muted', role: 'status'});
  const panel = el('div', {class: 'secret-once', id: 'token-created', role: 'alert'},
    el('strong', {}, `Token "${created.name}" (${created.role}) created.`),
    el('p', {}, 'Copy it now: it is shown only this once. The server keeps only its hash; '
      + 'if it is lost, revoke it and create another. Whoever holds it acts with its role.'),
    box,
    el('div', {}, button('Copy', async (e) => {
      said.textContent = (await copy(created.token, box)) ? 'Copied.' : 'Copy it by hand.';
      e.currentTarget.focus();
    }, {id: 'token-copy'}), ' ',
    button('I have saved it', () => { box.value = ''; panel.remove(); onDone(); },
      {id: 'token-done'}), ' ', said));
  return panel;
}

export async function render(root, ctx) {
  useStyles();
  const st = status();
  const holder = el('div', {id: 'tokens'});
  const once = el('div', {id: 'token-once'});

  async function load() {
    let tokens;
    try {
      tokens = await ctx.api.get('/api/v1/tokens');
    } catch (err) {
      if (err.status === 401) throw err;
      clear(holder).append(errorBox(err));
      return;
    }
    clear(holder).append(table([
      {title: 'Name', value: (t) => t.name},
      {title: 'Role', value: (t) => t.role},
      {title: 'Tenant', value: (t) => t.tenant || el('span', {class: 'muted'}, 'every tenant')},
      {title: 'Created', value: (t) => fmtUnix(t.created_at)},
      {title: 'Expires', value: (t) => (t.expires_at ? fmtUnix(t.expires_at) : 'never')},
      {title: 'State', value: (t) => el('span', {class: `token-${t.state}`}, t.state)},
      {title: '', value: (t) => (t.state === 'active' ? button('Revoke', async (e) => {
        if (!window.confirm(`Revoke token ${t.name}? Clients using it are refused at once.`)) return;
        const ok = await act(e.currentTarget, st, () => ctx.api.send('POST',
          `/api/v1/tokens/${t.id}/revoke`));
        if (ok !== undefined) { st.ok(`Token ${t.name} revoked.`); load(); }
      }, {class: 'danger revoke-token', dataset: {id: t.id}}) : '')},
    ], tokens, {empty: 'no API token', rowAttrs: (t) => ({class: 'token-row',
      dataset: {id: t.id, name: t.name}})}));
  }

  const name = el('input', {id: 'token-name', autocomplete: 'off', placeholder: 'ci-pipeline'});
  const role = select('token-role', TOKEN_ROLES, 'viewer');
  const tenant = el('input', {id: 'token-tenant', placeholder: 'empty: every tenant',
    value: ctx.session.tenant || '', disabled: !isGlobal(ctx)});
  const ttl = select('token-ttl', TTLS, '2592000');
  const add = el('button', {type: 'submit', id: 'token-add'}, 'Create token');
  const form = el('form', {class: 'form-card', id: 'token-form', onsubmit: async (e) => {
    e.preventDefault();
    st.clear();
    const body = {name: name.value.trim(), role: role.value,
      tenant: isGlobal(ctx) ? (tenant.value.trim() || null) : ctx.session.tenant,
      ttl_seconds: ttl.value ? Number(ttl.value) : null};
    const created = await act(add, st, () => ctx.api.send('POST', '/api/v1/tokens', body));
    if (created) {
      name.value = '';
      clear(once).append(shownOnce(created, () => clear(once)));
      load();
    }
  }},
  el('h2', {}, 'Create an API token'),
  el('div', {class: 'toolbar'}, field('Name', name), field('Role', role), field('Tenant', tenant),
    field('Expires', ttl), add), st.node);
  root.append(form, once, el('h2', {}, 'Tokens'), holder);
  await load();
}
