// Text helpers of the policy pages (pure): a YAML writer for stored policy documents
// (the server keeps documents as JSON; this writes them back as block YAML the server's
// loader reads the same), and a line diff (longest common subsequence).

const PLAIN = /^[A-Za-z_/.][A-Za-z0-9_ ./@*+-]*$/;
const RESERVED = /^(true|false|yes|no|on|off|null|y|n|~)$/i;

function scalar(value) {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  const s = String(value);
  if (PLAIN.test(s) && !RESERVED.test(s) && !s.endsWith(' ') && !s.includes(': ')
      && !s.includes(' #')) return s;
  return JSON.stringify(s);      // a JSON string is a YAML double-quoted scalar
}

function isEmpty(value) {
  return (Array.isArray(value) && value.length === 0)
    || (value && typeof value === 'object' && !Array.isArray(value)
      && Object.keys(value).length === 0);
}

function emit(value, indent, lines) {
  const pad = ' '.repeat(indent);
  if (Array.isArray(value)) {
    for (const item of value) {
      if (item && typeof item === 'object' && !isEmpty(item)) {
        const sub = [];
        emit(item, indent + 2, sub);
        lines.push(`${pad}- ${sub[0].slice(indent + 2)}`, ...sub.slice(1));
      } else {
        lines.push(`${pad}- ${isEmpty(item) ? JSON.stringify(item) : scalar(item)}`);
      }
    }
    return;
  }
  for (const [key, item] of Object.entries(value)) {
    const k = scalar(key);
    if (item && typeof item === 'object' && !isEmpty(item)) {
      lines.push(`${pad}${k}:`);
      emit(item, Array.isArray(item) ? indent : indent + 2, lines);
    } else {
      lines.push(`${pad}${k}: ${isEmpty(item) ? JSON.stringify(item) : scalar(item)}`);
    }
  }
}

export function toYaml(document) {
  const lines = [];
  emit(document, 0, lines);
  return `${lines.join('\n')}\n`;
}

// a, b: arrays of lines -> [{op: ' '|'-'|'+', line}]
export function lineDiff(a, b) {
  const n = a.length;
  const m = b.length;
  const lcs = Array.from({length: n + 1}, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push({op: ' ', line: a[i]}); i += 1; j += 1; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) { out.push({op: '-', line: a[i]}); i += 1; }
    else { out.push({op: '+', line: b[j]}); j += 1; }
  }
  while (i < n) { out.push({op: '-', line: a[i]}); i += 1; }
  while (j < m) { out.push({op: '+', line: b[j]}); j += 1; }
  return out;
}
