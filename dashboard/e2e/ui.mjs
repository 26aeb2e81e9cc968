// Drives Pylon's web dashboard in a real headless Chromium (Debian's, through
// playwright-core) against a running node: logs in (a wrong token first), checks that
// the numbers on the page are the admin API's, visits every page, cancels one disconnect
// and confirms another, and saves a screenshot.
//
// Run by pylon/tests/dashboard_ui.rs: `node dashboard/e2e/ui.mjs` with a JSON spec on
// stdin (the token is not put on the command line, where `ps` shows it):
//   { "url": "http://127.0.0.1:PORT/", "token": "…", "screenshot": "/path.png",
//     "chromium": "/usr/bin/chromium",
//     "expect": { "peer_id", "roles": [..], "connections", "connected_peers",
//                 "keep": "<PeerId to find, then cancel its disconnect>",
//                 "disconnect": "<PeerId to disconnect through the page>" } }
// Prints one JSON line on stdout ({"ok": true, "screenshot", "seen"}); progress and
// failures on stderr, exit 1 on failure. Every wait is bounded.

import { chromium } from 'playwright-core';

const STEP_MS = 20_000; // any one wait
const ALL_MS = 150_000; // the whole run

function log(...args) {
  console.error('[ui]', ...args);
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

const spec = await readStdin();
// A directory for a screenshot of every page (for looking at them), if set.
const shots = process.env.DASHBOARD_UI_SHOTS;
const { url, token, screenshot, expect } = spec;
const executablePath = spec.chromium || process.env.DASHBOARD_CHROMIUM || '/usr/bin/chromium';

let browser = null;
const watchdog = setTimeout(async () => {
  console.error(`[ui] FAILED: the run took longer than ${ALL_MS} ms`);
  try { await browser?.close(); } catch { /* exiting anyway */ }
  process.exit(1);
}, ALL_MS);

// What the page complained about: script errors, CSP violations, failed loads.
const problems = [];

async function run() {
  log(`launching ${executablePath}`);
  browser = await chromium.launch({
    executablePath,
    headless: true,
    timeout: 60_000,
    // CI runs as root, where Chromium's sandbox cannot start.
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 }, colorScheme: 'light' });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    const text = m.text();
    // The wrong token on purpose below: its 401 is logged by Chromium as a failed load.
    if (m.type() === 'error' && !/status of 401/.test(text)) problems.push(`console: ${text}`);
  });
  page.on('requestfailed', (r) => {
    // Fetches cut short on purpose when a page is left.
    if (!/ERR_ABORTED/.test(r.failure()?.errorText ?? '')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });

  // The API, as the page itself would ask it, to compare against.
  const apiNow = (path) => page.evaluate(async ([p, t]) => {
    const r = await fetch(`/api/v1${p}`, { headers: { Authorization: `Bearer ${t}` } });
    return { status: r.status, json: await r.json() };
  }, [path, token]);
  const textOf = (sel) => page.locator(sel).innerText();
  const shoot = async (name) => {
    if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
  };
  const waitText = async (sel, want, what) => {
    try {
      await page.waitForFunction(([s, w]) => document.querySelector(s)?.textContent.trim() === w, [sel, String(want)], { timeout: STEP_MS });
    } catch {
      throw new Error(`${what}: ${sel} shows ${JSON.stringify(await page.locator(sel).textContent().catch(() => null))}, expected ${JSON.stringify(String(want))}`);
    }
  };

  log(`opening ${url}`);
  const response = await page.goto(url, { waitUntil: 'load' });
  const headers = response.headers();
  check(response.status() === 200, `GET / answered ${response.status()}`);
  check((headers['content-security-policy'] || '').startsWith("default-src 'self'"), `CSP header: ${headers['content-security-policy']}`);
  check(headers['x-content-type-options'] === 'nosniff', 'nosniff header');
  await page.getByLabel('Admin token').waitFor({ state: 'visible' });

  log('a wrong token is refused, with the API\'s reason');
  await shoot('login');
  await page.getByLabel('Admin token').fill('0123456789abcdef-not-the-token');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#login-error').filter({ hasText: 'refused the token' }).waitFor();
  const refused = await textOf('#login-error');
  check(refused.includes('wrong token'), `login error: ${refused}`);
  check(await page.locator('#top').isHidden(), 'still logged out');

  log('logging in');
  await page.getByLabel('Admin token').fill(token);
  await page.getByLabel('Admin token').press('Enter');
  await waitText('#peer-id', expect.peer_id, 'the PeerId');
  check((await page.content()).indexOf(token) === -1, 'the token is nowhere in the page');
  check(await page.evaluate(() => sessionStorage.length) === 1, 'the token is kept in sessionStorage');

  log('overview: the numbers are the API\'s');
  await waitText('#connections', expect.connections, 'connections');
  await waitText('#connected-peers', expect.connected_peers, 'connected peers');
  const shownRoles = await page.locator('#roles li').allInnerTexts();
  check(JSON.stringify([...shownRoles].sort()) === JSON.stringify([...expect.roles].sort()), `roles shown ${shownRoles}, expected ${expect.roles}`);
  const id = (await apiNow('/identity')).json;
  check(id.peer_id === expect.peer_id, 'API PeerId');
  check(String(id.connections) === (await textOf('#connections')), `page ${await textOf('#connections')} vs API ${id.connections} connections`);
  check(String(id.connected_peers) === (await textOf('#connected-peers')), 'connected peers vs API');
  check((await textOf('#reachability')) === id.reachability, 'reachability vs API');
  for (const a of id.listen_addrs) check((await textOf('#listen-addrs')).includes(a), `listen address ${a} shown`);
  // The chart shows the history's last sample (taken every 5 s), as the API has it.
  await page.locator('#chart-connections svg').waitFor();
  const chartLabel = await page.locator('#chart-connections svg').getAttribute('aria-label');
  const hist = (await apiNow('/history')).json.samples;
  const shown = hist.filter((x) => chartLabel.includes(`connections ${x.connections}, peers ${x.connected_peers}`));
  check(hist.length > 0 && shown.length > 0, `connections chart: ${chartLabel}; history ${JSON.stringify(hist.slice(-2))}`);
  const res = (await apiNow('/resources')).json;
  check((await textOf('#res-connections')).startsWith(`${res.connections.in_use} of ${res.connections.limit}`), 'resources');

  for (const role of expect.roles) {
    log(`role page: ${role}`);
    await page.getByRole('link', { name: `Role: ${role}` }).click();
    await page.locator('#role-status table').first().waitFor();
    const status = (await apiNow('/roles')).json.roles.find((r) => r.name === role).status;
    // The previous role's table may still be on screen for a moment after the click: wait
    // (bounded) until this role's keys are, then check.
    const words = Object.keys(status).map((k) => k.replaceAll('_', ' '));
    await page
      .waitForFunction((ws) => ws.every((w) => (document.querySelector('#role-status')?.innerText || '').includes(w)), words, { timeout: 10000 })
      .catch(() => {});
    const text = await textOf('#role-status');
    // Every key of the role's status is shown, as words.
    for (const key of Object.keys(status)) check(text.includes(key.replaceAll('_', ' ')), `${role}: ${key} shown in ${JSON.stringify(text)}`);
    await shoot(`role-${role}`);
    if (role === 'relay') {
      check(status.reservations.length === (await page.locator('#role-status table.sub').first().locator('tbody tr').count()), 'relay reservations rows');
      for (const r of status.reservations) check(text.includes(r.peer), `reservation of ${r.peer} shown`);
    }
  }

  log('DHT page');
  await page.getByRole('link', { name: 'DHT' }).click();
  const buckets = (await apiNow('/kad/buckets')).json;
  await waitText('#kad-peers', buckets.peers, 'DHT table size');
  check(await page.locator('#buckets-table tbody tr').count() === buckets.buckets.length, 'one row per bucket');
  await page.locator('#buckets-table details summary').first().click();
  await shoot('dht');

  log('peers page: search, a cancelled disconnect, a confirmed one');
  await page.getByRole('link', { name: 'Peers' }).click();
  await page.locator('#peers-table tbody tr').first().waitFor();
  const search = page.getByRole('searchbox', { name: 'Search peers' });
  await search.fill(expect.keep.slice(-12));
  const keepRow = page.locator(`tr[data-peer="${expect.keep}"]`);
  await keepRow.waitFor();
  await page.locator('#peers-summary').filter({ hasText: 'of 1 peers' }).waitFor();
  check((await keepRow.locator('td.connected').innerText()) === 'yes', 'the kept peer shows connected');
  await keepRow.getByRole('button', { name: `Disconnect ${expect.keep}` }).click();
  const dialog = page.getByRole('dialog', { name: 'Disconnect a peer' });
  await dialog.waitFor();
  check((await dialog.innerText()).includes(expect.keep), 'the confirmation names the peer');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await page.locator('#status').filter({ hasText: 'Disconnect cancelled.' }).waitFor();
  check((await apiNow(`/connections?peer=${expect.keep}`)).json.total >= 1, 'cancelled: still connected');

  await search.fill(expect.disconnect);
  const row = page.locator(`tr[data-peer="${expect.disconnect}"]`);
  await row.waitFor();
  await row.getByRole('button', { name: `Disconnect ${expect.disconnect}` }).click();
  await dialog.waitFor();
  check((await dialog.innerText()).includes(expect.disconnect), 'the confirmation names the peer');
  await shoot('confirm');
  await dialog.getByRole('button', { name: 'Disconnect' }).click();
  await page.locator('#status').filter({ hasText: `Disconnected ${expect.disconnect}: 1 connection(s) closed.` }).waitFor();
  await row.locator('td.connected').filter({ hasText: /^no$/ }).waitFor();
  check(await page.locator('#alert').isHidden(), 'no error shown');
  await search.fill('');
  await page.locator('#peers-summary').filter({ hasText: /of [0-9]+ peers\.$/ }).waitFor();
  await shoot('peers');

  log('overview again: one connection fewer, then the screenshot');
  await page.getByRole('link', { name: 'Overview' }).click();
  await waitText('#connections', expect.connections - 1, 'connections after the disconnect');
  // Rates need two samples (5 s apart): the charts draw them once the page has them.
  await page.locator('#chart-bandwidth svg').waitFor({ timeout: 30_000 });
  await page.locator('#chart-requests svg').waitFor();
  const legend = await page.locator('#chart-requests .legend li').allInnerTexts();
  check(legend.length === expect.roles.length && expect.roles.every((r) => legend.some((l) => l.startsWith(`${r}:`))), `requests chart legend: ${legend}`);
  await page.screenshot({ path: screenshot, fullPage: true });
  const seen = {
    peer_id: await textOf('#peer-id'),
    connections_before: expect.connections,
    connections_after: Number(await textOf('#connections')),
    connected_peers: Number(await textOf('#connected-peers')),
    roles: shownRoles,
    dht_peers: buckets.peers,
  };
  check(problems.length === 0, `the page reported problems:\n${problems.join('\n')}`);
  await browser.close();
  return seen;
}

try {
  const seen = await run();
  clearTimeout(watchdog);
  console.log(JSON.stringify({ ok: true, screenshot, seen }));
} catch (e) {
  console.error(`[ui] FAILED: ${e.stack || e}`);
  if (problems.length) console.error(`[ui] the page reported:\n${problems.join('\n')}`);
  try { await browser?.close(); } catch { /* exiting anyway */ }
  process.exit(1);
}
