// Small SVG charts drawn here (no chart library): bars over time, horizontal bars.
import {svg, el} from './dom.js';

// points: [{t: ms, count: n}] in time order -> an SVG bar chart with hour labels
export function barChart(points, {width = 720, height = 180, label = 'alerts'} = {}) {
  const pad = {left: 36, right: 8, top: 10, bottom: 22};
  const w = width - pad.left - pad.right;
  const h = height - pad.top - pad.bottom;
  const max = Math.max(1, ...points.map((p) => Number(p.count) || 0));
  const step = points.length ? w / points.length : w;
  const root = svg('svg', {viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img',
    'aria-label': `${label} over time`});
  root.append(svg('title', {}, `${label} over time (max ${max} per bucket)`));
  for (const frac of [0, 0.5, 1]) {
    const y = pad.top + h - frac * h;
    root.append(svg('line', {x1: pad.left, x2: pad.left + w, y1: y, y2: y, class: 'gridline'}),
      svg('text', {x: pad.left - 4, y: y + 4, class: 'axis', 'text-anchor': 'end'},
        String(Math.round(frac * max))));
  }
  points.forEach((p, i) => {
    const count = Number(p.count) || 0;
    const bh = (count / max) * h;
    const x = pad.left + i * step;
    const bar = svg('rect', {x: x + 1, y: pad.top + h - bh, width: Math.max(1, step - 2),
      height: bh, class: count ? 'bar' : 'bar zero'});
    bar.append(svg('title', {}, `${new Date(p.t).toISOString().slice(0, 13)}:00Z: ${count}`));
    root.append(bar);
    if (i % Math.max(1, Math.ceil(points.length / 8)) === 0) {
      root.append(svg('text', {x: x + step / 2, y: height - 6, class: 'axis',
        'text-anchor': 'middle'}, `${new Date(p.t).toISOString().slice(11, 13)}h`));
    }
  });
  return root;
}

// items: [{label, count, href?}] -> horizontal bars as HTML (a <meter>-like bar per row)
export function hbars(items, {empty = 'none'} = {}) {
  if (!items.length) return el('p', {class: 'muted'}, empty);
  const max = Math.max(1, ...items.map((i) => Number(i.count) || 0));
  const width = 300;
  return el('ul', {class: 'hbars'}, items.map((item) => el('li', {},
    el('span', {class: 'hbar-label', title: item.label},
      item.href ? el('a', {href: item.href}, item.label) : item.label),
    svg('svg', {class: 'hbar', viewBox: `0 0 ${width} 12`, preserveAspectRatio: 'none'},
      svg('rect', {x: 0, y: 0, height: 12, width: (Number(item.count) / max) * width,
        class: 'bar'})),
    el('span', {class: 'hbar-count'}, String(item.count)))));
}
