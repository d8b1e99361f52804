// A real browser: headless Chromium (Debian's package, driven by playwright-core) loads a web
// app page from its own origin, connects to Herald with the stock socket.io-client bundle, and
// shows a user-targeted event that a service sent through the HTTP API.

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

import { GRANTS, WAIT_MS, call, config, startServer, token } from './support.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.TEST_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = process.env.TEST_ARTIFACTS_DIR ?? path.join(here, '..', '..', 'target', 'test-artifacts');

/** The web app: its page, its script and the socket.io-client bundle, on an origin of its own. */
async function serveApp() {
  const files = {
    '/': ['text/html', path.join(here, 'browser', 'index.html')],
    '/app.js': ['text/javascript', path.join(here, 'browser', 'app.js')],
    '/socket.io.min.js': [
      'text/javascript',
      path.join(here, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js'),
    ],
  };
  const server = createServer((request, response) => {
    const file = files[new URL(request.url, 'http://app').pathname];
    if (!file) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': file[0] }).end(readFileSync(file[1]));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

let app;
let herald;
let browser;

before(async () => {
  app = await serveApp();
  herald = await startServer(config({ corsOrigins: [app.origin] }));
  // The flags keep Chromium off the network it would reach for at start (closed here).
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  await herald?.stop();
  app?.server.close();
});

test('a page receives a user-targeted event published through the HTTP API and shows it', async () => {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  const query = new URLSearchParams({ herald: herald.url, token: token('grace', GRANTS) });
  await page.goto(`${app.origin}/?${query}`);
  const status = page.locator('#status');
  await status.filter({ hasText: /^connected$/ }).waitFor({ timeout: WAIT_MS });

  // An event for another user first: the page must never show it.
  const other = await call(herald.url, 'POST', '/v1/realtime/users/henry', {
    type: 'notification.new',
    data: { title: 'Not yours', message: 'for henry' },
  });
  assert.equal(other.status, 200, JSON.stringify(other.body));
  const sent = await call(herald.url, 'POST', '/v1/realtime/users/grace', {
    type: 'notification.new',
    data: { title: 'Photo ready', message: 'sunset.jpg was processed' },
  });
  assert.equal(sent.status, 200, JSON.stringify(sent.body));
  assert.equal(sent.body.delivered, 1);

  const items = page.locator('#notifications li');
  await items.first().waitFor({ timeout: WAIT_MS });
  assert.deepEqual(await items.allTextContents(), ['Photo ready: sunset.jpg was processed (from api)']);
  assert.equal(await status.textContent(), 'connected');
  assert.deepEqual(pageErrors, []);

  mkdirSync(ARTIFACTS, { recursive: true });
  const screenshot = path.join(ARTIFACTS, 'browser-user-event.png');
  await page.screenshot({ path: screenshot });
  assert.ok(readFileSync(screenshot).length > 0);
  await page.close();
});
