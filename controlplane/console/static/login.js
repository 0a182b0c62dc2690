// The sign-in form: POST /api/v1/session with the user's name and password. The answer
// sets the HttpOnly session cookie (never readable here) and carries the CSRF token the
// console keeps in memory only (not in localStorage: a reload asks GET /api/v1/session).
import {el, clear} from './dom.js';
import {ApiError} from './api.js';

export function renderLogin(root, {api, onLogin, message = ''}) {
  const username = el('input', {id: 'login-username', name: 'username', autocomplete: 'username',
    required: true, autocapitalize: 'none', spellcheck: 'false'});
  const password = el('input', {id: 'login-password', name: 'password', type: 'password',
    autocomplete: 'current-password', required: true});
  const status = el('p', {class: message ? 'login-message error' : 'login-message',
    role: 'status', id: 'login-status'}, message);
  const button = el('button', {type: 'submit', id: 'login-submit'}, 'Sign in');

  async function submit(event) {
    event.preventDefault();
    button.disabled = true;
    status.textContent = '';
    status.className = 'login-message';
    try {
      const session = await api.send('POST', '/api/v1/session',
        {username: username.value, password: password.value});
      password.value = '';
      onLogin(session);
    } catch (err) {
      password.value = '';
      status.className = 'login-message error';
      const after = err instanceof ApiError && err.headers ? err.headers.get('Retry-After') : null;
      if (err instanceof ApiError && (err.status === 429 || err.status === 503)) {
        const why = err.status === 429 ? 'Too many attempts' : 'The server is busy';
        status.textContent = after ? `${why}: try again in ${after} s.`
          : `${why}: try again later.`;
      } else if (err instanceof ApiError && err.status === 401) {
        status.textContent = 'Invalid username or password.';
      } else {
        status.textContent = `Cannot sign in: ${err.message || err}`;
      }
      password.focus();
    } finally {
      button.disabled = false;
    }
  }

  // method=post: were the script to fail, the browser would not put the password in a URL
  const form = el('form', {class: 'login', method: 'post', onsubmit: submit},
    el('h1', {}, 'moray'),
    el('p', {class: 'muted'}, 'Runtime security console'),
    el('label', {for: 'login-username'}, 'Username'), username,
    el('label', {for: 'login-password'}, 'Password'), password,
    button, status);
  clear(root).append(el('div', {class: 'login-wrap'}, form));
  root.className = '';
  username.focus();
}
