// Line charts as inline SVG, drawn from the node's history (GET /api/v1/history): time
// on x, one line per series, 0 at the bottom, the largest value rounded up at the top.

import { h, s, replace } from './dom.js';

// The drawing's own units; it is scaled to the box's width, so text stays readable at
// about a third of a wide screen.
const W = 400;
const H = 170;
const PAD = { left: 62, right: 10, top: 10, bottom: 22 };

// A round number at least `v` (1, 2, 5 × 10^n).
function ceilNice(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' });
}

// Draws into `figure` (a <figure> made by `chart`): `series` = [{name, points: [[ms, v]]}],
// `format` turns a value into text.
export function draw(figure, { title, series, format, empty }) {
  const body = figure.querySelector('.chart-body');
  const all = series.flatMap((x) => x.points);
  if (all.length === 0) {
    replace(body, h('p', { class: 'muted' }, empty || 'No samples yet.'));
    figure.querySelector('svg')?.remove();
    return;
  }
  let t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(...all.map((p) => p[0]));
  // One sample: a point at the right end of a short span.
  if (t1 - t0 < 1000) t0 = t1 - 5000;
  const top = ceilNice(Math.max(...all.map((p) => p[1])));
  const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);

  const last = series.map((x) => `${x.name} ${x.points.length ? format(x.points.at(-1)[1]) : '—'}`);
  const svg = s('svg', {
    viewBox: `0 0 ${W} ${H}`,
    role: 'img',
    'aria-label': `${title}, from ${clock(t0)} to ${clock(t1)}; last: ${last.join(', ')}`,
    class: 'chart',
  });
  for (const v of [0, top / 2, top]) {
    svg.appendChild(s('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: 'grid' }));
    svg.appendChild(s('text', { x: PAD.left - 6, y: y(v) + 4, 'text-anchor': 'end', class: 'tick' }, format(v)));
  }
  svg.appendChild(s('text', { x: PAD.left, y: H - 6, class: 'tick' }, clock(t0)));
  svg.appendChild(s('text', { x: W - PAD.right, y: H - 6, 'text-anchor': 'end', class: 'tick' }, clock(t1)));
  series.forEach((ser, i) => {
    if (ser.points.length === 0) return;
    const d = ser.points.map((p, j) => `${j ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
    svg.appendChild(s('path', { d, class: `line s${i % 6}` }));
    if (ser.points.length === 1) {
      const [t, v] = ser.points[0];
      svg.appendChild(s('circle', { cx: x(t), cy: y(v), r: 3, class: `dot s${i % 6}` }));
    }
  });
  const legend = h('ul', { class: 'legend' },
    series.map((ser, i) => h('li', {},
      h('span', { class: `swatch s${i % 6}`, 'aria-hidden': 'true' }),
      `${ser.name}: `,
      h('strong', {}, ser.points.length ? format(ser.points.at(-1)[1]) : '—'))));
  figure.querySelector('svg')?.remove();
  replace(body, legend);
  body.before(svg);
}

// An empty chart with its caption.
export function chart(title, id) {
  return h('figure', { class: 'chart-box', id },
    h('figcaption', {}, title),
    h('div', { class: 'chart-body' }, h('p', { class: 'muted' }, 'Loading…')));
}
