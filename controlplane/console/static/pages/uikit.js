// Shared helpers of the pages images, registries, audit, users, tokens and tenants (not a
// page itself: it is not listed in pages/index.js). Values go into the DOM through
// dom.js's el()/text nodes only: image names, paths and audit details are untrusted.
import {el, errorBox} from '../dom.js';

export const ROLES = ['admin', 'operator', 'auditor', 'viewer'];
export const WRITERS = ['admin', 'operator'];
export const SEVERITIES = ['critical', 'high', 'medium', 'low', 'unknown'];

// the pages' stylesheet (style-src 'self': a <link> to our own file, never a style attribute)
export function useStyles() {
  if (document.getElementById('uipages-css')) return;
  document.head.append(el('link', {id: 'uipages-css', rel: 'stylesheet',
    href: '/ui/pages/uikit.css'}));
}

export function can(ctx, roles) {
  return Boolean(ctx.session && roles.includes(ctx.session.role));
}

export function isGlobal(ctx) {
  return ctx.session && (ctx.session.tenant === null || ctx.session.tenant === undefined);
}

// A status line under a form: ok / error messages as text.
export function status() {
  const node = el('div', {class: 'status', role: 'status'});
  return {
    node,
    ok(message) { node.className = 'status ok'; node.replaceChildren(message); },
    error(err) { node.className = 'status'; node.replaceChildren(errorBox(err)); },
    clear() { node.className = 'status'; node.replaceChildren(); },
  };
}

// A labelled form field.
export function field(label, input) {
  return el('label', {class: 'field'}, el('span', {}, label), input);
}

export function select(name, options, value = '') {
  return el('select', {name, id: name},
    options.map((o) => {
      const [v, t] = Array.isArray(o) ? o : [o, o];
      return el('option', {value: v, selected: v === value}, t);
    }));
}

export function button(label, onclick, attrs = {}) {
  return el('button', {type: 'button', onclick, ...attrs}, label);
}

export function severityBadge(severity) {
  const s = String(severity || 'unknown').toLowerCase();
  return el('span', {class: `sev sev-${SEVERITIES.includes(s) ? s : 'unknown'}`}, s);
}

export function verdictBadge(passed) {
  return el('span', {class: `verdict ${passed ? 'pass' : 'fail'}`},
    passed ? 'compliant' : 'non-compliant');
}

// Run an async action from a button: disables it meanwhile, reports errors in `st`.
export async function act(btn, st, action) {
  btn.disabled = true;
  try {
    return await action();
  } catch (err) {
    if (st) st.error(err); else throw err;
    return undefined;
  } finally {
    btn.disabled = false;
  }
}

// Poll `fn` every `ms` until the page's signal aborts (the user left the page).
export function every(ctx, ms, fn) {
  const id = setInterval(() => {
    if (ctx.signal && ctx.signal.aborted) { clearInterval(id); return; }
    fn();
  }, ms);
  if (ctx.signal) ctx.signal.addEventListener('abort', () => clearInterval(id));
  return id;
}

export function fmtSeconds(s) {
  const n = Number(s);
  if (!Number.isFinite(n)) return '—';
  if (n % 86400 === 0) return `${n / 86400}d`;
  if (n % 3600 === 0) return `${n / 3600}h`;
  if (n % 60 === 0) return `${n / 60}m`;
  return `${n}s`;
}

// rows a list page shows: `fallback`, or the URL's ?per= (1 to 1000, as the server's limit)
export function perPage(params, fallback) {
  const n = Number.parseInt(params.per, 10);
  return Number.isInteger(n) && n >= 1 ? Math.min(n, 1000) : fallback;
}
