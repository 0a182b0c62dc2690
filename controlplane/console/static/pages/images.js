// Images: the scanned images with their verdicts, by reference, a page at a time
// (GET /api/v1/images?page=1: {"images", "next"}; name and verdict filtered by the
// server); an image's detail
// (#/images?digest=sha256:...): the verdict with its failed controls, vulnerabilities
// (sortable, filterable by severity), secrets (rule, file, line: the API never returns
// the matched text and this page renders none), malware, and the CycloneDX SBOM download.
import {el, clear, table, fmtUnix, errorBox} from '../dom.js';
import {SEVERITIES, severityBadge, verdictBadge, select, field, useStyles, perPage} from './uikit.js';

export const title = 'Images';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

const RANK = Object.fromEntries(SEVERITIES.map((s, i) => [s, i]));
const PAGE = 50;      // images a page (keyset pages: GET /api/v1/images?page=1&after=)

function short(digest) {
  return String(digest || '').replace(/^sha256:/, '').slice(0, 12);
}

function counts(severities) {
  const parts = SEVERITIES.filter((s) => severities && severities[s])
    .map((s) => el('span', {class: `sev sev-${s}`, title: s}, `${s[0].toUpperCase()} ${severities[s]}`));
  return parts.length ? parts : el('span', {class: 'muted'}, 'none');
}

async function renderList(root, ctx) {
  const filter = el('input', {type: 'search', id: 'image-filter', placeholder: 'image name'});
  const verdict = select('verdict-filter', [['', 'any verdict'], ['pass', 'compliant'],
    ['fail', 'non-compliant']]);
  const holder = el('div', {id: 'image-list'});
  // keyset pages from the server (by reference): `after` is the last digest of the page
  // before; `back` holds the cursors of the pages before this one (for "Previous")
  const per = perPage(ctx.params, PAGE);
  let after = null;
  let back = [];
  let seq = 0;
  async function draw() {
    const mine = ++seq;
    const res = await ctx.api.get('/api/v1/images', {page: 1, limit: per, after,
      name: filter.value.trim(), verdict: verdict.value});
    if (mine !== seq || ctx.signal.aborted) return;     // a newer request was made
    const rows = res.images || [];
    const pager = el('div', {class: 'pager'},
      el('button', {type: 'button', id: 'images-prev', disabled: back.length === 0,
        onclick: () => { after = back.pop() ?? null; draw().catch(shown); }}, '← Previous'),
      el('span', {class: 'muted'}, `page ${back.length + 1} · ${rows.length} images`
        + (res.next ? ` (${per} a page)` : '')),
      el('button', {type: 'button', id: 'images-next', disabled: !res.next,
        onclick: () => { back.push(after); after = res.next; draw().catch(shown); }},
      'Next →'));
    clear(holder).append(pager, table([
      {title: 'Image', value: (i) => el('a', {href: `#/images?digest=${encodeURIComponent(i.digest)}`,
        class: 'image-link'}, i.image)},
      {title: 'Digest', value: (i) => el('code', {title: i.digest}, short(i.digest))},
      {title: 'Verdict', value: (i) => verdictBadge(i.passed)},
      {title: 'Vulnerabilities', value: (i) => counts(i.severities)},
      {title: 'Secrets', value: (i) => String(i.secrets)},
      {title: 'Malware', value: (i) => String(i.malware)},
      {title: 'Scanned', value: (i) => fmtUnix(i.scanned)},
    ], rows, {empty: 'no scanned image yet (register a registry or image to scan)'}));
  }
  function shown(err) {
    if (err.status === 401) throw err;
    clear(holder).append(errorBox(err));
  }
  function restart() { after = null; back = []; draw().catch(shown); }
  let typing = null;
  filter.addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(restart, 250); });
  verdict.addEventListener('change', restart);
  root.append(el('div', {class: 'toolbar'}, field('Filter', filter), field('Verdict', verdict)),
    holder);
  await draw();
}

function vulnTable(vulns) {
  const sev = select('severity-filter', [['', 'every severity'], ...SEVERITIES]);
  const text = el('input', {type: 'search', id: 'vuln-filter', placeholder: 'id or package'});
  const holder = el('div', {id: 'vulnerabilities'});
  let sortKey = 'severity';
  let sortDir = 1;
  const cols = [
    ['id', 'ID', (v) => el('span', {title: (v.aliases || []).join(', ')}, v.id)],
    ['package', 'Package', (v) => v.package],
    ['version', 'Installed', (v) => v.version],
    ['fixed_version', 'Fixed in', (v) => v.fixed_version || el('span', {class: 'muted'}, 'no fix')],
    ['severity', 'Severity', (v) => severityBadge(v.severity)],
  ];
  function key(v, k) {
    return k === 'severity' ? (RANK[String(v.severity).toLowerCase()] ?? 99) : String(v[k] || '');
  }
  function draw() {
    const q = text.value.trim().toLowerCase();
    const rows = vulns.filter((v) => (!sev.value || String(v.severity).toLowerCase() === sev.value)
      && (!q || v.id.toLowerCase().includes(q) || v.package.toLowerCase().includes(q)
        || (v.aliases || []).some((a) => a.toLowerCase().includes(q))))
      .sort((a, b) => {
        const x = key(a, sortKey);
        const y = key(b, sortKey);
        return (x < y ? -1 : x > y ? 1 : 0) * sortDir || a.id.localeCompare(b.id);
      });
    const head = el('tr', {}, cols.map(([k, t]) => el('th', {class: 'sortable', dataset: {key: k},
      'aria-sort': sortKey === k ? (sortDir > 0 ? 'ascending' : 'descending') : 'none',
      onclick: () => { sortDir = sortKey === k ? -sortDir : 1; sortKey = k; draw(); }},
    t + (sortKey === k ? (sortDir > 0 ? ' ▲' : ' ▼') : ''))));
    const body = rows.length ? rows.map((v) => el('tr', {class: 'vuln'},
      cols.map(([, , f]) => el('td', {}, f(v)))))
      : el('tr', {}, el('td', {colspan: cols.length, class: 'empty'}, 'no vulnerability'));
    clear(holder).append(el('p', {class: 'muted', id: 'vuln-count'},
      `${rows.length} of ${vulns.length}`),
    el('table', {class: 'grid'}, el('thead', {}, head), el('tbody', {}, body)));
  }
  sev.addEventListener('change', draw);
  text.addEventListener('input', draw);
  draw();
  return [el('div', {class: 'toolbar'}, field('Severity', sev), field('Search', text)), holder];
}

async function renderDetail(root, ctx, digest) {
  const enc = encodeURIComponent(digest);
  const [vulns, verdicts, findings] = await Promise.all([
    ctx.api.get(`/api/v1/images/${enc}/vulnerabilities`),
    ctx.api.get(`/api/v1/images/${enc}/verdicts`),
    ctx.api.get(`/api/v1/images/${enc}/findings`).catch((err) => {
      if (err.status === 404) return null;
      throw err;
    }),
  ]);
  const image = verdicts.length ? {image: verdicts[0].image} : null;
  root.append(el('p', {}, el('a', {href: '#/images', id: 'back'}, '← all images')));
  if (!image && verdicts.length === 0) {
    // never scanned, or another tenant's image: the server answers alike
    root.append(el('p', {class: 'empty', id: 'image-missing'}, `No scanned image ${digest}.`));
    return;
  }
  root.append(el('h2', {id: 'image-name'}, image ? image.image : digest),
    el('p', {}, el('code', {id: 'image-digest'}, digest)));
  const passed = verdicts.length > 0 && verdicts.every((v) => v.passed);
  root.append(el('section', {id: 'verdicts'}, el('h3', {}, 'Verdict ', verdicts.length
    ? verdictBadge(passed) : el('span', {class: 'muted'}, 'none')),
  verdicts.map((v) => el('div', {class: 'verdict-row'},
    el('strong', {}, `policy ${v.policy}: `), verdictBadge(v.passed),
    v.stale ? el('span', {class: 'muted'}, ' (stale: newer vulnerability data, rescan queued)') : null,
    ` · ${fmtUnix(v.created)}`,
    v.reasons.length ? el('ul', {class: 'reasons failed-controls'},
      v.reasons.map((r) => el('li', {}, r))) : null))));
  root.append(el('section', {}, el('h3', {}, `Vulnerabilities (${vulns.length})`),
    vulnTable(vulns)));
  if (findings === null) {
    root.append(el('p', {class: 'muted'}, 'No secret/malware report or SBOM for this image '
      + '(scanned before the server kept them): rescan it.'));
    return;
  }
  // secrets: rule, file and line only. The API stores no matched text; render none.
  root.append(el('section', {id: 'secrets'}, el('h3', {}, `Secrets (${findings.secrets.length})`),
    table([
      {title: 'Rule', value: (s) => el('span', {title: s.rule}, s.title || s.rule)},
      {title: 'Severity', value: (s) => severityBadge(s.severity)},
      {title: 'File', value: (s) => el('code', {}, `/${s.path}`)},
      {title: 'Line', value: (s) => String(s.line)},
      {title: 'Deleted later', value: (s) => (s.deleted_later ? 'yes (still in a layer)' : 'no')},
    ], findings.secrets, {empty: 'no secret found'})));
  root.append(el('section', {id: 'malware'}, el('h3', {}, `Malware (${findings.malware.length})`),
    table([
      {title: 'Rule', value: (m) => m.rule},
      {title: 'File', value: (m) => el('code', {}, `/${m.path}`)},
      {title: 'SHA-256', value: (m) => el('code', {}, String(m.sha256 || '').slice(0, 16))},
      {title: 'Deleted later', value: (m) => (m.deleted_later ? 'yes' : 'no')},
    ], findings.malware, {empty: 'no malware found'})));
  root.append(el('section', {id: 'sbom'}, el('h3', {}, 'SBOM'), findings.sbom
    ? el('a', {href: `/api/v1/images/${enc}/sbom`, download: `${short(digest)}.cdx.json`,
      id: 'sbom-download', class: 'button'}, 'Download CycloneDX (JSON)')
    : el('p', {class: 'muted'}, 'no SBOM kept (larger than the server keeps)')));
}

export async function render(root, ctx) {
  useStyles();
  try {
    if (ctx.params.digest) await renderDetail(root, ctx, ctx.params.digest);
    else await renderList(root, ctx);
  } catch (err) {
    if (err.status === 401) throw err;
    root.append(errorBox(err));
  }
}
