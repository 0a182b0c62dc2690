// The console shell: the session (GET /api/v1/session; signed out -> the sign-in form),
// the navigation (pages filtered by the session's role) and a router on location.hash:
// `#/<page>?key=value` renders pages/<page>.js with ctx = {api, session, params,
// navigate, signal}. `params` is the hash's query as an object; `signal` is aborted when
// the user leaves the page (pages that poll stop then).
import {el, clear, errorBox} from './dom.js';
import {createApi, ApiError, query} from './api.js';
import {PAGES} from './pages/index.js';
import {renderLogin} from './login.js';

const root = document.getElementById('app');
let session = null;
let pages = [];          // [{name, mod}] loaded page modules
let current = null;      // AbortController of the page shown
let pageRoot = null;
let navLinks = new Map();

const api = createApi({
  csrf: () => (session ? session.csrf_token : null),
  onUnauthorized: () => {
    if (session) {          // the session expired or was revoked: sign in again
      session = null;
      if (current) current.abort();
      signedOut('Your session has ended: sign in again.');
    }
  },
});

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, q = ''] = hash.split('?', 2);
  const params = Object.fromEntries(new URLSearchParams(q));
  return {name: path.split('/')[0], params};
}

export function navigate(name, params = {}) {
  const target = `#/${name}${query(params)}`;
  if (location.hash === target) show();
  else location.hash = target;
}

function visiblePages() {
  return pages.filter(({mod}) => !mod.roles || mod.roles.includes(session.role));
}

async function loadPages() {
  const loaded = await Promise.all(PAGES.map((name) => import(`./pages/${name}.js`)
    .then((mod) => ({name, mod}))
    .catch((err) => { console.warn(`console page ${name} not loaded:`, err); return null; })));
  pages = loaded.filter(Boolean);
}

async function signOut() {
  try {
    await api.send('DELETE', '/api/v1/session');
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
  }
  session = null;
  if (current) current.abort();
  signedOut('Signed out.');
}

function signedOut(message = '') {
  renderLogin(root, {api, message, onLogin: (s) => { session = s; renderShell(); }});
}

function renderShell() {
  navLinks = new Map();
  const nav = el('nav', {class: 'nav', 'aria-label': 'pages'},
    visiblePages().map(({name, mod}) => {
      const link = el('a', {href: `#/${name}`, id: `nav-${name}`}, mod.title);
      navLinks.set(name, link);
      return link;
    }));
  const who = el('span', {class: 'who', id: 'session-user'}, session.user,
    el('span', {class: 'role'}, session.role),
    session.tenant ? el('span', {class: 'tenant'}, session.tenant) : null);
  const header = el('header', {class: 'top'},
    el('a', {class: 'brand', href: '#/overview'}, 'moray'), nav,
    el('div', {class: 'session'}, who,
      el('button', {type: 'button', id: 'sign-out', class: 'link', onclick: signOut},
        'Sign out')));
  pageRoot = el('main', {id: 'page'});
  root.className = 'shell';
  clear(root).append(header, pageRoot);
  show();
}

async function show() {
  if (!session || !pageRoot) return;
  if (current) current.abort();
  const ctrl = new AbortController();
  current = ctrl;
  const {name, params} = parseHash();
  const visible = visiblePages();
  const entry = visible.find((p) => p.name === name);
  if (!entry) {
    if (visible.length) navigate(visible[0].name);
    else clear(pageRoot).append(el('p', {}, 'No page is available to your role.'));
    return;
  }
  for (const [n, link] of navLinks) link.classList.toggle('active', n === name);
  document.title = `${entry.mod.title} · moray`;
  const body = el('div', {class: 'page-body', id: `page-${name}`});
  clear(pageRoot).append(el('h1', {}, entry.mod.title), body);
  const ctx = {api, session, params, navigate, signal: ctrl.signal};
  try {
    await entry.mod.render(body, ctx);
  } catch (err) {
    if (ctrl.signal.aborted || (err instanceof ApiError && err.status === 401)) return;
    console.error(err);
    body.append(errorBox(err));
  }
}

async function start() {
  try {
    session = await api.get('/api/v1/session');
  } catch (err) {
    session = null;
    if (!(err instanceof ApiError)) throw err;
    const message = err.status === 401 || err.status === 404 ? ''
      : `The server answered ${err.status}: ${err.message}`;
    signedOut(message);
    return;
  }
  renderShell();
}

window.addEventListener('hashchange', show);
await loadPages();
await start();
