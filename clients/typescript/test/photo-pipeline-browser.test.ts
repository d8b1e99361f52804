// Seed 004's photo pipeline with a real browser: the API, worker and notification services of
// examples/photo-pipeline on @herald/client, and the seed's frontend code in a page that
// headless Chromium (Debian's, driven by playwright-core) loads from the app's own origin. The
// page connects with the stock socket.io-client bundle; Herald's forwarding rule and the
// notification service's publishToUser are all that reach it.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdirSync, readFileSync } from 'node:fs';
import { createServer, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium, type Browser } from 'playwright-core';

import { startApiService } from '../examples/photo-pipeline/api-service.js';
import { startNotificationService } from '../examples/photo-pipeline/notification-service.js';
import { startWorkerService } from '../examples/photo-pipeline/worker-service.js';
import { SERVICE_TOKEN, WAIT_MS, config, startServer, token, type Server } from './support.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// Compiled into build/test/; the page's files stay in the sources.
const packageRoot = path.join(here, '..', '..');
const CHROMIUM = process.env.TEST_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS =
  process.env.TEST_ARTIFACTS_DIR ?? path.join(packageRoot, '..', '..', 'target', 'test-artifacts');

/** The web app's origin: its page, its script and the socket.io-client browser bundle. */
async function serveApp(): Promise<{ server: HttpServer; origin: string }> {
  const files: Record<string, [string, string]> = {
    '/': ['text/html', path.join(packageRoot, 'test', 'browser', 'photos.html')],
    '/photos.js': ['text/javascript', path.join(packageRoot, 'test', 'browser', 'photos.js')],
    '/socket.io.min.js': [
      'text/javascript',
      path.join(packageRoot, 'node_modules', 'socket.io-client', 'dist', 'socket.io.min.js'),
    ],
  };
  const server = createServer((request, response) => {
    const file = files[new URL(request.url ?? '/', 'http://app').pathname];
    if (!file) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': file[0] }).end(readFileSync(file[1]));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

let app: { server: HttpServer; origin: string };
let herald: Server;
let browser: Browser;

before(async () => {
  app = await serveApp();
  herald = await startServer(config('', `[realtime]\ncors_origins = ["${app.origin}"]`));
  // The flags keep Chromium off the network it reaches for at start (closed here).
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
  await herald?.dispose();
  app?.server.close();
});

test('photo pipeline (seed 004) in Chromium: progress, thumbnails and notifications reach the page', async () => {
  const connection = { eventBusUrl: herald.url, authToken: SERVICE_TOKEN };
  const worker = await startWorkerService(connection);
  const notifications = await startNotificationService(connection);
  const api = await startApiService(connection);
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  try {
    const userId = 'user-456';
    const query = new URLSearchParams({ herald: herald.url, token: token(userId) });
    await page.goto(`${app.origin}/?${query}`);
    await page.locator('#status', { hasText: /^connected$/ }).waitFor({ timeout: WAIT_MS });

    const upload = async (filename: string) => {
      const response = await fetch(`${api.url}/photos/upload`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-user-id': userId },
        body: JSON.stringify({ filename, size: 2_048_000 }),
      });
      assert.equal(response.status, 200);
      return (await response.json()) as { success: boolean; photoId: string };
    };
    const vacation = await upload('vacation.jpg');
    const broken = await upload('corrupt.jpg');

    const notes = page.locator('#notifications li');
    await notes.nth(1).waitFor({ timeout: WAIT_MS });
    const done = page.locator(`[id="${vacation.photoId}"] .thumbnails`);
    await done.filter({ hasText: 'thumbnails: small, medium, large' }).waitFor({ timeout: WAIT_MS });

    assert.equal(await page.locator(`[id="${vacation.photoId}"] .percent`).textContent(), '100%');
    // The broken photo got as far as its first progress event, then failed. (Its progress is a
    // stored event forwarded by rule, the notification a direct send: either may arrive first.)
    const brokenPercent = page.locator(`[id="${broken.photoId}"] .percent`);
    await brokenPercent.filter({ hasText: '25%' }).waitFor({ timeout: WAIT_MS });
    assert.equal(await page.locator(`[id="${broken.photoId}"] .thumbnails`).textContent(), '');
    assert.deepEqual((await notes.allTextContents()).sort(), [
      'Photo processing failed Failed to process your photo: not a JPEG file',
      'Your photo is ready! Photo processing completed successfully',
    ]);
    assert.deepEqual(pageErrors, []);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'photo-pipeline.png') });
  } finally {
    await page.close();
    await api.close();
    await Promise.all([worker.close(), notifications.close()]);
  }
});
