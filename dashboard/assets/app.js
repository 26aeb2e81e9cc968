// Pylon's web dashboard: a login screen for the admin token, then pages (the hash picks
// one: #/overview, #/peers, #/dht, #/bans, #/roles/NAME) that read the admin API and act
// through it, each action after a confirmation. No framework, no build step.

import { api, token, setToken, forget, whenUnauthorized } from './api.js';
import { h, replace, bytes, duration, ago, rate, label } from './dom.js';
import { chart, draw } from './charts.js';

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 5000;
const PAGE_SIZE = 50;

let page = null; // the page shown: { stop() }
let roles = []; // the node's roles, from /identity

// ---- Messages ----------------------------------------------------------------------------

// What an action did (read out politely).
function notify(text) {
  $('alert').replaceChildren();
  $('alert').hidden = true;
  $('status').textContent = text;
}

// What went wrong, as the API said it (read out at once).
function showError(what, err) {
  const status = err.status ? ` (HTTP ${err.status})` : '';
  replace($('alert'), h('strong', {}, `${what} failed${status}: `), err.message);
  $('alert').hidden = false;
}

function clearMessages() {
  $('status').textContent = '';
  $('alert').replaceChildren();
  $('alert').hidden = true;
}

// ---- Confirmation ------------------------------------------------------------------------

// Asks before an action: resolves to null when cancelled, else to { value } (the text
// field's, when `field` was given).
function confirmAction({ title, text, confirmLabel, field }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = confirmLabel;
  const extra = $('confirm-field');
  let input = null;
  if (field) {
    input = h('input', { id: 'confirm-input', type: 'text', value: field.value ?? '', spellcheck: 'false', autocomplete: 'off' });
    replace(extra, h('label', { for: 'confirm-input' }, field.label), input,
      field.hint ? h('p', { class: 'hint' }, field.hint) : null);
  } else {
    extra.replaceChildren();
  }
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok' ? { value: input ? input.value.trim() : null } : null);
    }, { once: true });
    dialog.showModal();
    // Cancel has the focus: Enter or Escape right away changes nothing.
    $('confirm-cancel').focus();
  });
}

// ---- Page plumbing -----------------------------------------------------------------------

// Runs `f(signal)` now and every `ms` after it finished, until stopped; its errors are
// shown, and the next round tries again.
function poll(f, ms, what) {
  let timer = null;
  let stopped = false;
  const ctl = new AbortController();
  const round = async () => {
    try {
      await f(ctl.signal);
      if (!$('alert').hidden && $('alert').dataset.source === what) clearMessages();
    } catch (e) {
      if (e.name === 'AbortError' || stopped) return;
      showError(what, e);
      $('alert').dataset.source = what;
    }
    if (!stopped) timer = setTimeout(round, ms);
  };
  round();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      ctl.abort();
    },
  };
}

function section(title, ...children) {
  const id = `h-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return h('section', { 'aria-labelledby': id }, h('h2', { id }, title), ...children);
}

// A <dl> of facts: [[term, dd-element-or-text], ...].
function facts(rows) {
  return h('dl', { class: 'facts' }, rows.map(([t, d]) => [h('dt', {}, t), d instanceof Node ? d : h('dd', {}, d)]));
}

function list(items, cls) {
  if (!items || items.length === 0) return h('span', { class: 'muted' }, 'none');
  return h('ul', { class: cls || 'plain' }, items.map((i) => h('li', {}, i)));
}

// ---- Overview ----------------------------------------------------------------------------

function overview(root) {
  const dd = (id, cls) => h('dd', { id, class: cls });
  const f = {
    peer: dd('peer-id', 'mono'),
    version: dd('version'),
    roles: dd('roles'),
    reach: dd('reachability'),
    uptime: dd('uptime'),
    conns: dd('connections', 'num'),
    peers: dd('connected-peers', 'num'),
    state: dd('state'),
    listen: dd('listen-addrs', 'mono'),
    advertised: dd('advertised-addrs', 'mono'),
  };
  const r = {
    conns: dd('res-connections'),
    streams: dd('res-streams'),
    peerstore: dd('res-peerstore'),
    fds: dd('res-fds'),
    memory: dd('res-memory'),
    threads: dd('res-threads'),
  };
  const charts = {
    conns: chart('Connections and peers', 'chart-connections'),
    bw: chart('Bandwidth: stream payload per second', 'chart-bandwidth'),
    req: chart('Requests per role, per second', 'chart-requests'),
  };
  const drain = h('button', { type: 'button', class: 'danger', id: 'drain' }, 'Drain the node…');
  drain.addEventListener('click', async () => {
    const ok = await confirmAction({
      title: 'Drain the node',
      text: 'The node stops accepting connections, lets the open ones finish (up to connections.shutdown_grace), then exits. It does not come back by itself.',
      confirmLabel: 'Drain',
    });
    if (!ok) return notify('Drain cancelled.');
    try {
      const a = await api('/drain', { method: 'POST' });
      notify(`Draining: the node stops within ${a.grace_secs} s.`);
    } catch (e) {
      showError('Drain', e);
    }
  });

  replace(root,
    h('h1', {}, 'Overview'),
    section('Identity', facts([
      ['Peer ID', f.peer], ['Version', f.version], ['Roles', f.roles],
      ['Reachability', f.reach], ['Uptime', f.uptime], ['Connections', f.conns],
      ['Connected peers', f.peers], ['State', f.state],
      ['Listen addresses', f.listen], ['Advertised addresses', f.advertised],
    ])),
    section('Activity', h('p', { class: 'hint' }, 'Read from the node every 5 s; the last hour is kept in its memory.'),
      h('div', { class: 'charts' }, charts.conns, charts.bw, charts.req)),
    section('Resources', facts([
      ['Connections', r.conns], ['Streams', r.streams], ['Peerstore', r.peerstore],
      ['File descriptors', r.fds], ['Resident memory', r.memory], ['Threads', r.threads],
    ])),
    section('Node', h('p', {}, drain)));

  let hist = { samples: [], capacity: 720, roles: [] };
  const p = poll(async (signal) => {
    const [id, res] = await Promise.all([api('/identity', { signal }), api('/resources', { signal })]);
    replace(f.peer, id.peer_id);
    replace(f.version, `${id.version} (agent ${id.agent_version})`);
    replace(f.roles, list(id.roles, 'tags'));
    replace(f.reach, h('span', { class: `badge ${id.reachability}` }, id.reachability));
    replace(f.uptime, duration(id.uptime_secs));
    replace(f.conns, String(id.connections));
    replace(f.peers, String(id.connected_peers));
    replace(f.state, id.draining ? h('span', { class: 'badge private' }, 'draining') : 'running');
    replace(f.listen, list(id.listen_addrs));
    replace(f.advertised, list(id.advertised_addrs));
    const c = res.connections;
    replace(r.conns, `${c.in_use} of ${c.limit} (${c.inbound} in, ${c.outbound} out; ${c.per_peer_limit} per peer)`);
    replace(r.streams, `${res.streams.in_use} (${res.streams.per_connection_limit} per connection)`);
    replace(r.peerstore, `${res.peerstore.peers} of ${res.peerstore.limit} peers`);
    replace(r.fds, res.fds.open === null ? '—' : `${res.fds.open} of ${res.fds.limit ?? '?'}`);
    replace(r.memory, bytes(res.memory.resident_bytes));
    replace(r.threads, res.threads ?? '—');
    drain.disabled = id.draining;

    const last = hist.samples.at(-1);
    const fresh = await api(last ? `/history?since=${last.unix_ms}` : '/history', { signal });
    hist = { ...fresh, samples: hist.samples.concat(fresh.samples).slice(-fresh.capacity) };
    drawHistory(charts, hist);
  }, REFRESH_MS, 'Reading the node');
  return p;
}

function drawHistory(charts, hist) {
  const s = hist.samples;
  const gauge = (k) => s.map((x) => [x.unix_ms, x[k]]);
  // Counts over the span before each sample, per second; the first sample has none.
  const per = (f) => s.filter((x) => x.span_ms > 0).map((x) => [x.unix_ms, f(x) / (x.span_ms / 1000)]);
  const waiting = 'No samples yet: the node is read every 5 s.';
  draw(charts.conns, {
    title: 'Connections and peers',
    series: [{ name: 'connections', points: gauge('connections') },
      { name: 'peers', points: gauge('connected_peers') },
      { name: 'streams', points: gauge('streams') }],
    format: (v) => String(Math.round(v * 10) / 10),
    empty: waiting,
  });
  draw(charts.bw, {
    title: 'Bandwidth',
    series: [{ name: 'received', points: per((x) => x.bytes_received) },
      { name: 'sent', points: per((x) => x.bytes_sent) }],
    format: (v) => `${bytes(v)}/s`,
    empty: 'Two samples are needed for a rate: within 10 s.',
  });
  draw(charts.req, {
    title: 'Requests per role',
    series: hist.roles.map((role) => ({ name: role, points: per((x) => x.requests[role] ?? 0) })),
    format: (v) => `${rate(v)}/s`,
    empty: hist.roles.length ? 'Two samples are needed for a rate: within 10 s.' : 'No role is running.',
  });
}

// ---- Peers -------------------------------------------------------------------------------

function peers(root) {
  const q = h('input', { id: 'peer-q', type: 'search', name: 'q', autocomplete: 'off', spellcheck: 'false', placeholder: 'PeerId, agent, address or protocol' });
  const form = h('form', { role: 'search', class: 'inline' },
    h('label', { for: 'peer-q' }, 'Search peers'), q, h('button', { type: 'submit' }, 'Search'));
  const summary = h('p', { id: 'peers-summary', 'aria-live': 'polite' }, 'Loading…');
  const body = h('tbody');
  const table = h('table', { id: 'peers-table' },
    h('caption', {}, 'Peers, connected first'),
    h('thead', {}, h('tr', {}, ['Peer ID', 'Connected', 'Agent', 'Addresses', 'Protocols', 'Last seen', 'Actions']
      .map((t) => h('th', { scope: 'col' }, t)))),
    body);
  const prev = h('button', { type: 'button' }, 'Previous page');
  const next = h('button', { type: 'button' }, 'Next page');
  const refresh = h('button', { type: 'button' }, 'Refresh');
  let offset = 0;
  let ctl = new AbortController();

  async function load() {
    ctl.abort();
    ctl = new AbortController();
    const query = new URLSearchParams({ offset: String(offset), limit: String(PAGE_SIZE) });
    if (q.value.trim()) query.set('q', q.value.trim());
    let a;
    try {
      a = await api(`/peers?${query}`, { signal: ctl.signal });
    } catch (e) {
      if (e.name !== 'AbortError') {
        showError('Listing peers', e);
        summary.textContent = 'The list could not be read.';
      }
      return;
    }
    const rows = a.peers.map((p) => {
      const acts = h('td', { class: 'actions' });
      if (p.connected) {
        acts.appendChild(h('button', { type: 'button', 'aria-label': `Disconnect ${p.peer_id}`, onclick: () => disconnect(p.peer_id) }, 'Disconnect'));
      }
      acts.appendChild(h('button', { type: 'button', 'aria-label': `Ban ${p.peer_id}`, onclick: () => ban(p.peer_id) }, 'Ban…'));
      return h('tr', { dataset: { peer: p.peer_id } },
        h('td', { class: 'mono peer' }, p.peer_id),
        h('td', { class: 'connected' }, p.connected ? h('span', { class: 'badge public' }, 'yes') : 'no'),
        h('td', {}, p.agent_version ?? h('span', { class: 'muted' }, 'not identified')),
        h('td', { class: 'mono' }, list(p.addrs)),
        h('td', {}, p.protocols.length
          ? h('details', {}, h('summary', {}, `${p.protocols.length} protocols`), list(p.protocols, 'plain mono'))
          : h('span', { class: 'muted' }, 'none')),
        h('td', {}, p.connected ? 'now' : ago(p.last_seen_unix_ms)),
        acts);
    });
    if (rows.length === 0) {
      rows.push(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, q.value.trim() ? 'No peer matches.' : 'No peers.')));
    }
    replace(body, rows);
    const first = a.total === 0 ? 0 : a.offset + 1;
    summary.textContent = `Showing ${first}–${a.offset + a.peers.length} of ${a.total} peers${q.value.trim() ? ` matching “${q.value.trim()}”` : ''}.`;
    prev.disabled = a.offset === 0;
    next.disabled = a.offset + a.peers.length >= a.total;
  }

  async function disconnect(peer) {
    const ok = await confirmAction({
      title: 'Disconnect a peer',
      text: `Close every connection to ${peer}? It may connect again (ban it to keep it out).`,
      confirmLabel: 'Disconnect',
    });
    if (!ok) return notify('Disconnect cancelled.');
    try {
      const a = await api(`/peers/${encodeURIComponent(peer)}/disconnect`, { method: 'POST' });
      notify(`Disconnected ${a.peer_id}: ${a.connections_closed} connection(s) closed.`);
    } catch (e) {
      showError('Disconnect', e);
    }
    await load();
  }

  async function ban(peer) {
    const ok = await banWithConfirmation({ peer }, peer);
    if (ok) await load();
  }

  let typing = null;
  q.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { offset = 0; load(); }, 300);
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    clearTimeout(typing);
    offset = 0;
    load();
  });
  prev.addEventListener('click', () => { offset = Math.max(0, offset - PAGE_SIZE); load(); });
  next.addEventListener('click', () => { offset += PAGE_SIZE; load(); });
  refresh.addEventListener('click', () => load());

  replace(root, h('h1', {}, 'Peers'), form, summary,
    h('div', { class: 'table-wrap' }, table),
    h('p', { class: 'pager' }, prev, next, refresh));
  load();
  return { stop() { ctl.abort(); clearTimeout(typing); } };
}

// Bans `target` ({peer} or {cidr}) after asking for how long; true when banned.
async function banWithConfirmation(target, shown) {
  const ok = await confirmAction({
    title: 'Ban',
    text: `Ban ${shown}? Its connections close and it is refused until the ban ends.`,
    confirmLabel: 'Ban',
    field: { label: 'For how long', value: '1h', hint: 'Like 10m, 1h, 7d; empty: until lifted (or the node restarts).' },
  });
  if (!ok) {
    notify('Ban cancelled.');
    return false;
  }
  const body = { ...target };
  if (ok.value) body.duration = ok.value;
  try {
    const b = await api('/bans', { method: 'POST', body });
    notify(`Banned ${b.kind} ${b.target} (ban ${b.id}, ${b.expires_in_secs === null ? 'until lifted' : `for ${duration(b.expires_in_secs)}`}).`);
    return true;
  } catch (e) {
    showError('Ban', e);
    return false;
  }
}

// ---- Bans --------------------------------------------------------------------------------

function bans(root) {
  const target = h('input', { id: 'ban-target', type: 'text', required: true, spellcheck: 'false', autocomplete: 'off', placeholder: '12D3KooW… or 203.0.113.0/24' });
  const form = h('form', { class: 'inline' },
    h('label', { for: 'ban-target' }, 'PeerId or IP prefix'), target, h('button', { type: 'submit' }, 'Ban…'));
  const body = h('tbody');
  const table = h('table', { id: 'bans-table' },
    h('caption', {}, 'Bans in force'),
    h('thead', {}, h('tr', {}, ['Id', 'Kind', 'Target', 'From', 'Ends', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
    body);

  async function load() {
    let a;
    try {
      a = await api('/bans');
    } catch (e) {
      return showError('Listing bans', e);
    }
    const rows = a.bans.map((b) => h('tr', {},
      h('td', {}, b.id), h('td', {}, b.kind), h('td', { class: 'mono' }, b.target), h('td', {}, b.origin),
      h('td', {}, b.expires_in_secs === null ? 'when lifted' : `in ${duration(b.expires_in_secs)}`),
      h('td', { class: 'actions' }, h('button', { type: 'button', 'aria-label': `Lift ban ${b.id} on ${b.target}`, onclick: () => unban(b) }, 'Lift…'))));
    if (rows.length === 0) rows.push(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No bans.')));
    replace(body, rows);
  }

  async function unban(b) {
    const ok = await confirmAction({ title: 'Lift a ban', text: `Lift ban ${b.id} on ${b.target}?`, confirmLabel: 'Lift' });
    if (!ok) return notify('Cancelled.');
    try {
      await api(`/bans/${b.id}`, { method: 'DELETE' });
      notify(`Lifted ban ${b.id} on ${b.target}.`);
    } catch (e) {
      showError('Lifting the ban', e);
    }
    load();
  }

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const t = target.value.trim();
    // PeerIds are base58 (no '.', ':' or '/'); anything else is an IP prefix.
    const what = /[.:/]/.test(t) ? { cidr: t } : { peer: t };
    if (await banWithConfirmation(what, t)) target.value = '';
    load();
  });
  replace(root, h('h1', {}, 'Bans'),
    h('p', { class: 'hint' }, 'A ban closes matching connections and refuses their dials and handshakes. Bans set here live in memory; connections.deny in the config file survives restarts.'),
    form, h('div', { class: 'table-wrap' }, table));
  load();
  return { stop() {} };
}

// ---- DHT ---------------------------------------------------------------------------------

function dht(root) {
  const out = h('div', {}, h('p', {}, 'Loading…'));
  const refresh = h('button', { type: 'button' }, 'Refresh');
  async function load() {
    let a;
    try {
      a = await api('/kad/buckets');
    } catch (e) {
      if (e.status === 404) return replace(out, h('p', { class: 'notice' }, e.message));
      return showError('Reading the routing table', e);
    }
    const rows = a.buckets.map((b) => h('tr', {},
      h('th', { scope: 'row' }, b.index),
      h('td', {}, h('meter', { min: 0, max: a.k, value: b.size, 'aria-label': `bucket ${b.index}: ${b.size} of ${a.k}` }), ` ${b.size} of ${a.k}`),
      h('td', {}, h('details', {}, h('summary', {}, `${b.peers.length} peers`),
        h('ul', { class: 'plain' }, b.peers.map((p) => h('li', {},
          h('span', { class: 'mono' }, p.peer_id), ' ',
          p.connected ? h('span', { class: 'badge public' }, 'connected') : null,
          ` seen ${duration(p.last_seen_secs_ago)} ago`)))))));
    if (rows.length === 0) rows.push(h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'The routing table is empty.')));
    replace(out,
      section('Table', facts([['Protocol', a.protocol], ['Mode', a.mode], ['k (bucket size)', String(a.k)], ['Peers in the table', h('dd', { id: 'kad-peers' }, String(a.peers))]])),
      section('Buckets', h('div', { class: 'table-wrap' }, h('table', { id: 'buckets-table' },
        h('caption', {}, 'Non-empty buckets, by distance (the bucket index: the higher, the farther)'),
        h('thead', {}, h('tr', {}, ['Bucket', 'Filled', 'Peers'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, rows)))));
  }
  refresh.addEventListener('click', load);
  replace(root, h('h1', {}, 'DHT routing table'), out, h('p', {}, refresh));
  load();
  return { stop() {} };
}

// ---- Roles -------------------------------------------------------------------------------

// A role's status, whatever its shape: scalars in a two-column table, lists of objects as
// tables of their own, objects nested.
function value(v) {
  if (v === null || v === undefined) return h('span', { class: 'muted' }, '—');
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v !== 'object') return String(v);
  if (Array.isArray(v)) {
    if (v.length === 0) return h('span', { class: 'muted' }, 'none');
    if (v.every((x) => x && typeof x === 'object' && !Array.isArray(x))) {
      const cols = [...new Set(v.flatMap((x) => Object.keys(x)))];
      return h('div', { class: 'table-wrap' }, h('table', { class: 'sub' },
        h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, label(c))))),
        h('tbody', {}, v.map((x) => h('tr', {}, cols.map((c) => h('td', {}, value(x[c]))))))));
    }
    return list(v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))));
  }
  const keys = Object.keys(v);
  if (keys.length === 0) return h('span', { class: 'muted' }, 'none');
  return h('table', { class: 'kv' }, h('tbody', {}, keys.map((k) => h('tr', {}, h('th', { scope: 'row' }, label(k)), h('td', {}, value(v[k]))))));
}

function role(root, name) {
  const out = h('div', { id: 'role-status' }, h('p', {}, 'Loading…'));
  replace(root, h('h1', {}, `Role: ${name}`),
    section('Status', h('p', { class: 'hint' }, 'As the role reports it (GET /api/v1/roles), read every 5 s.'), out));
  return poll(async (signal) => {
    const a = await api('/roles', { signal });
    const r = a.roles.find((x) => x.name === name);
    if (!r) return replace(out, h('p', { class: 'notice' }, `No role ${name} runs on this node.`));
    replace(out, value(r.status));
  }, REFRESH_MS, `Reading the ${name} role`);
}

// ---- Navigation and login ----------------------------------------------------------------

const PAGES = {
  overview: (root) => overview(root),
  peers: (root) => peers(root),
  dht: (root) => dht(root),
  bans: (root) => bans(root),
};

function navigate() {
  if (!token()) return;
  const [, name = 'overview', arg] = (location.hash || '#/overview').split('/');
  page?.stop();
  clearMessages();
  const root = $('page');
  if (name === 'roles' && arg) page = role(root, decodeURIComponent(arg));
  else page = (PAGES[name] ?? PAGES.overview)(root);
  for (const a of $('nav').querySelectorAll('a')) {
    if (a.getAttribute('href') === (location.hash || '#/overview')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  root.focus({ preventScroll: true });
}

function showNav() {
  const nav = $('nav');
  for (const li of nav.querySelectorAll('li.role')) li.remove();
  for (const r of roles) {
    nav.appendChild(h('li', { class: 'role' }, h('a', { href: `#/roles/${encodeURIComponent(r)}` }, `Role: ${r}`)));
  }
}

function showLogin(message) {
  page?.stop();
  page = null;
  $('top').hidden = true;
  $('page').hidden = true;
  $('page').replaceChildren();
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

function showApp(identity) {
  roles = identity.roles;
  $('login').hidden = true;
  $('token').value = '';
  $('login-error').textContent = '';
  $('top').hidden = false;
  $('page').hidden = false;
  $('node-id').textContent = identity.peer_id;
  showNav();
  navigate();
}

async function login(t) {
  $('login-error').textContent = '';
  try {
    const identity = await api('/identity', { tokenOverride: t });
    setToken(t);
    showApp(identity);
  } catch (e) {
    if (e.status === 401) forget();
    $('login-error').textContent = e.status === 401
      ? `The node refused the token: ${e.message}.`
      : `Could not log in: ${e.message}`;
    $('token').focus();
  }
}

function start() {
  whenUnauthorized((e) => {
    forget();
    showLogin(`Logged out: the node refused the token (${e.message}).`);
  });
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token').value.trim();
    if (t) login(t);
  });
  $('logout').addEventListener('click', () => {
    forget();
    showLogin('Logged out.');
  });
  window.addEventListener('hashchange', navigate);
  const t = token();
  if (t) login(t);
  else showLogin();
}

start();
