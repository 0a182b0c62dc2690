// Registries: scheduled registry scans (GET/POST/DELETE /api/v1/scan-registries, "scan
// now": POST .../{id}/run) and single images (/api/v1/scan-images), with the scan jobs'
// progress (GET /api/v1/scan-jobs, polled while the page is shown). Credentials are a
// reference ('env:NAME' or 'file:/path' read by the workers), never a secret.
import {el, clear, table, fmtUnix, ago, errorBox} from '../dom.js';
import {WRITERS, can, isGlobal, status, field, button, act, every, fmtSeconds, useStyles}
  from './uikit.js';

export const title = 'Registries';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

const POLL_MS = 2000;

// The tenant a new target belongs to: a global principal names one (empty: 'default');
// a tenant's principal makes its own tenant's (the server decides, the field is shown
// disabled).
function tenantInput(ctx, id) {
  return el('input', {id, placeholder: 'default', value: ctx.session.tenant || '',
    disabled: !isGlobal(ctx)});
}

function tenantOf(ctx, input) {
  return isGlobal(ctx) ? (input.value.trim() || null) : null;
}

function addRegistryForm(ctx, reload) {
  const st = status();
  const registry = el('input', {name: 'registry', id: 'reg-host', required: true,
    placeholder: 'registry.example.com:5000'});
  const repos = el('input', {name: 'repositories', id: 'reg-repos',
    placeholder: 'team/app, team/db (empty: the whole catalog)'});
  const creds = el('input', {name: 'credentials', id: 'reg-creds',
    placeholder: 'env:NAME or file:/path (optional)'});
  const interval = el('input', {name: 'interval', id: 'reg-interval', type: 'number', min: 1,
    value: 3600});
  const insecure = el('input', {type: 'checkbox', id: 'reg-insecure'});
  const policy = el('textarea', {id: 'reg-policy', class: 'yaml',
    placeholder: 'ImageAssurancePolicy (YAML), optional'});
  const tenant = tenantInput(ctx, 'reg-tenant');
  const add = button('Add registry', async () => {
    st.clear();
    const body = {registry: registry.value.trim(),
      repositories: repos.value.split(',').map((s) => s.trim()).filter(Boolean),
      credentials: creds.value.trim(), insecure: insecure.checked,
      interval_seconds: Number(interval.value) || 3600, policy: policy.value,
      tenant: tenantOf(ctx, tenant)};
    const reg = await act(add, st, () => ctx.api.send('POST', '/api/v1/scan-registries', body));
    if (reg) {
      st.ok(`Registry ${reg.registry} added (id ${reg.id}); its first scan is due now.`);
      registry.value = ''; repos.value = ''; policy.value = '';
      reload();
    }
  }, {id: 'reg-add'});
  return el('form', {class: 'form-card', id: 'registry-form', onsubmit: (e) => e.preventDefault()},
    el('h2', {}, 'Add a registry'),
    el('div', {class: 'toolbar'}, field('Registry (host[:port])', registry),
      field('Repositories', repos), field('Credentials reference', creds),
      field('Every (seconds)', interval), field('Tenant', tenant),
      el('label', {class: 'field'}, el('span', {}, 'Plain HTTP (loopback only)'), insecure)),
    field('Policy', policy), el('div', {}, add), st.node);
}

function addImageForm(ctx, reload) {
  const st = status();
  const image = el('input', {id: 'img-ref', placeholder: 'registry.example.com/team/app:1.0'});
  const interval = el('input', {id: 'img-interval', type: 'number', min: 1, value: 86400});
  const policy = el('textarea', {id: 'img-policy', class: 'yaml',
    placeholder: 'ImageAssurancePolicy (YAML), optional'});
  const tenant = tenantInput(ctx, 'img-tenant');
  const add = button('Add image', async () => {
    st.clear();
    const img = await act(add, st, () => ctx.api.send('POST', '/api/v1/scan-images', {
      image: image.value.trim(), interval_seconds: Number(interval.value) || 86400,
      policy: policy.value, tenant: tenantOf(ctx, tenant)}));
    if (img) { st.ok(`Image ${img.image} added (id ${img.id}).`); image.value = ''; reload(); }
  }, {id: 'img-add'});
  return el('form', {class: 'form-card', onsubmit: (e) => e.preventDefault()},
    el('h2', {}, 'Add an image'),
    el('div', {class: 'toolbar'}, field('Image', image), field('Every (seconds)', interval),
      field('Tenant', tenant)),
    field('Policy', policy), el('div', {}, add), st.node);
}

function progress(jobs) {
  const n = {queued: 0, running: 0, done: 0, failed: 0};
  for (const j of jobs) n[j.status] = (n[j.status] || 0) + 1;
  const total = jobs.length;
  const finished = n.done + n.failed;
  const pct = total ? Math.round((finished / total) * 10) * 10 : 100;
  return el('div', {id: 'scan-progress'},
    el('span', {class: 'progress', title: `${finished} of ${total}`},
      el('span', {class: `w${pct}`})),
    ` ${n.queued} queued · ${n.running} running · ${n.done} done · ${n.failed} failed`);
}

export async function render(root, ctx) {
  useStyles();
  const writer = can(ctx, WRITERS);
  const st = status();
  const regHolder = el('div', {id: 'registries'});
  const imgHolder = el('div', {id: 'scan-images'});
  const jobHolder = el('div', {id: 'scan-jobs'});

  async function loadTargets() {
    try {
      const [regs, imgs] = await Promise.all([ctx.api.get('/api/v1/scan-registries'),
        ctx.api.get('/api/v1/scan-images')]);
      const regCols = [
        {title: 'Registry', value: (r) => r.registry},
        {title: 'Tenant', value: (r) => r.tenant || 'default'},
        {title: 'Repositories', value: (r) => (r.repositories.length
          ? r.repositories.join(', ') : el('span', {class: 'muted'}, 'catalog'))},
        {title: 'Schedule', value: (r) => `every ${fmtSeconds(r.interval_seconds)}`},
        {title: 'Next run', value: (r) => fmtUnix(r.next_run)},
        {title: 'Last run', value: (r) => (r.last_run ? `${ago(r.last_run)}, ${r.last_images} images`
          : 'never')},
        {title: 'Last error', value: (r) => r.last_error || '—'},
        {title: 'Policy', value: (r) => (r.has_policy ? 'yes' : 'no')},
      ];
      if (writer) {
        regCols.push({title: '', value: (r) => [
          button('Scan now', async (e) => {
            const ok = await act(e.currentTarget, st, () => ctx.api.send('POST',
              `/api/v1/scan-registries/${r.id}/run`));
            if (ok) { st.ok(`Scan of ${r.registry} queued.`); loadTargets(); loadJobs(); }
          }, {class: 'scan-now', dataset: {id: r.id}}),
          button('Remove', async (e) => {
            if (!window.confirm(`Remove registry ${r.registry}?`)) return;
            const ok = await act(e.currentTarget, st, () => ctx.api.send('DELETE',
              `/api/v1/scan-registries/${r.id}`));
            if (ok) { st.ok(`Registry ${r.registry} removed.`); loadTargets(); }
          }, {class: 'danger', dataset: {id: r.id}}),
        ]});
      }
      clear(regHolder).append(table(regCols, regs, {empty: 'no registry registered'}));
      const imgCols = [
        {title: 'Image', value: (i) => i.image},
        {title: 'Tenant', value: (i) => i.tenant || 'default'},
        {title: 'Schedule', value: (i) => `every ${fmtSeconds(i.interval_seconds)}`},
        {title: 'Next run', value: (i) => fmtUnix(i.next_run)},
        {title: 'Last run', value: (i) => ago(i.last_run)},
      ];
      if (writer) {
        imgCols.push({title: '', value: (i) => button('Remove', async (e) => {
          if (!window.confirm(`Remove image ${i.image}?`)) return;
          const ok = await act(e.currentTarget, st, () => ctx.api.send('DELETE',
            `/api/v1/scan-images/${i.id}`));
          if (ok) loadTargets();
        }, {class: 'danger'})});
      }
      clear(imgHolder).append(table(imgCols, imgs, {empty: 'no single image registered'}));
    } catch (err) {
      if (err.status === 401) throw err;
      clear(regHolder).append(errorBox(err));
    }
  }

  async function loadJobs() {
    try {
      const jobs = await ctx.api.get('/api/v1/scan-jobs', {limit: 200});
      const recent = jobs.slice(-50).reverse();
      clear(jobHolder).append(progress(jobs), table([
        {title: 'Job', value: (j) => String(j.id)},
        {title: 'Image', value: (j) => (j.digest
          ? el('a', {href: `#/images?digest=${encodeURIComponent(j.digest)}`}, j.image) : j.image)},
        {title: 'Status', value: (j) => el('span', {class: `job-${j.status}`}, j.status)},
        {title: 'Tenant', value: (j) => j.tenant || 'default'},
        {title: 'Worker', value: (j) => j.worker || '—'},
        {title: 'Attempts', value: (j) => String(j.attempts)},
        {title: 'Updated', value: (j) => ago(j.updated)},
        {title: 'Error', value: (j) => j.error || ''},
      ], recent, {empty: 'no scan job yet'}));
    } catch (err) {
      if (err.status === 401) return;
      clear(jobHolder).append(errorBox(err));
    }
  }

  root.append(st.node);
  if (writer) root.append(addRegistryForm(ctx, loadTargets));
  root.append(el('h2', {}, 'Registries'), regHolder, el('h2', {}, 'Images scanned on a schedule'),
    imgHolder);
  if (writer) root.append(addImageForm(ctx, loadTargets));
  root.append(el('h2', {}, 'Scan progress (the last 200 jobs)'), jobHolder);
  await Promise.all([loadTargets(), loadJobs()]);
  every(ctx, POLL_MS, loadJobs);
}
