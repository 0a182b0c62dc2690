// DOM helpers: the only way the console puts values into the page. Text goes in as text
// nodes (textContent), attributes through setAttribute; never as HTML markup. Container names,
// process arguments, paths and labels come from agents and images: attacker-controlled.

const SVG_NS = 'http://www.w3.org/2000/svg';
const URL_ATTRS = new Set(['href', 'src', 'action', 'formaction', 'xlink:href']);

// Only links within the console or to this origin; anything else (javascript:, data:
// HTML, other origins) is dropped.
function safeUrl(value) {
  const s = String(value);
  return s.startsWith('#') || (s.startsWith('/') && !s.startsWith('//')) ? s : null;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) {
      // event handlers are functions, never strings (the CSP forbids inline handlers)
      if (typeof value !== 'function') throw new TypeError(`handler ${key} must be a function`);
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === 'style') {
      throw new TypeError('inline styles are refused by the CSP: use a class');
    } else if (key === 'dataset') {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    } else if (key === 'value' && 'value' in node) {
      node.value = String(value);
    } else if (key === 'checked' && 'checked' in node) {
      node.checked = Boolean(value);
    } else if (URL_ATTRS.has(key)) {
      const url = safeUrl(value);
      if (url !== null) node.setAttribute(key, url);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
}

export function append(node, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// el('a', {href: '#/agents', class: 'x', onclick: fn}, 'text', otherNode, [more])
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  return append(node, ...children);
}

// the same for SVG elements (charts)
export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  return append(node, ...children);
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function text(node, value) {
  node.textContent = value === null || value === undefined ? '' : String(value);
  return node;
}

// -- formatting (pure) ------------------------------------------------------------------

export function fmtTime(ms) {
  if (ms === null || ms === undefined || ms === '') return '—';
  const d = new Date(Number(ms));
  if (Number.isNaN(d.getTime())) return '—';
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function fmtUnix(seconds) {
  return seconds === null || seconds === undefined ? '—' : fmtTime(Number(seconds) * 1000);
}

export function ago(seconds, now = Date.now() / 1000) {
  if (seconds === null || seconds === undefined) return 'never';
  const d = Math.max(0, Math.round(now - Number(seconds)));
  if (d < 60) return `${d}s ago`;
  if (d < 3600) return `${Math.floor(d / 60)}m ago`;
  if (d < 86400) return `${Math.floor(d / 3600)}h ago`;
  return `${Math.floor(d / 86400)}d ago`;
}

// A table: columns = [{title, value: row => string|Node, class?}]
export function table(columns, rows, {empty = 'nothing to show', rowAttrs} = {}) {
  const head = el('thead', {}, el('tr', {}, columns.map((c) => el('th', {}, c.title))));
  const body = el('tbody', {}, rows.length === 0
    ? el('tr', {}, el('td', {colspan: columns.length, class: 'empty'}, empty))
    : rows.map((row) => el('tr', rowAttrs ? rowAttrs(row) : {},
      columns.map((c) => el('td', c.class ? {class: c.class} : {}, c.value(row))))));
  return el('table', {class: 'grid'}, head, body);
}

export function badge(value, kind = '') {
  return el('span', {class: `badge ${kind}`.trim()}, value);
}

export function errorBox(err) {
  const detail = err && err.detail !== undefined ? err.detail : String(err);
  return el('div', {class: 'error', role: 'alert'}, typeof detail === 'string'
    ? detail : JSON.stringify(detail));
}
