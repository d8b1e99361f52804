// Every example in examples/ run against a real herald, with what its seed shows checked.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { SERVICE_TOKEN, startServer, token, type Server } from './support.js';

import * as photoPipeline from '../examples/photo-pipeline/index.js';

let server: Server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server.dispose();
});

const connection = () => ({ eventBusUrl: server.url, authToken: SERVICE_TOKEN });

test('photo pipeline (seed 004): upload → worker → progress and thumbnails in the browser, notifications for both outcomes', async () => {
  const report = await photoPipeline.main({ ...connection(), browserToken: (userId) => token(userId) });
  const { vacation, broken } = report.uploads;
  assert.equal(vacation.success, true);
  assert.equal(vacation.message, 'Upload received - processing started');
  assert.deepEqual(report.screen.progress[vacation.photoId], [25, 50, 75]);
  assert.deepEqual(report.screen.thumbnails[vacation.photoId], ['small', 'medium', 'large']);
  assert.deepEqual(report.screen.progress[broken.photoId], [25]);
  assert.equal(report.screen.thumbnails[broken.photoId], undefined);
  const byPhoto = Object.fromEntries(report.screen.notifications.map((n) => [n.photoId, n]));
  assert.equal(byPhoto[vacation.photoId]!.title, 'Your photo is ready!');
  assert.equal(byPhoto[broken.photoId]!.message, 'Failed to process your photo: not a JPEG file');
});
