// Every example in examples/ run against a real herald (a fresh one each), with what its seed
// shows checked.

import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';

import { SERVICE_TOKEN, startServer, token, type Server } from './support.js';

import * as achievements from '../examples/achievements/index.js';
import * as leaderboard from '../examples/leaderboard/index.js';
import * as orderSaga from '../examples/order-saga/index.js';
import * as photoPipeline from '../examples/photo-pipeline/index.js';
import * as userRegistration from '../examples/user-registration/index.js';

let server: Server;

beforeEach(async () => {
  server = await startServer();
});

afterEach(async () => {
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

test('order saga (seed 003): a paid order ships; a declined payment cancels the order and releases its stock', async () => {
  const report = await orderSaga.main(connection());
  assert.deepEqual(report.outcomes, { 'order-1001': 'completed', 'order-1002': 'cancelled' });
  assert.deepEqual(
    report.history['order-1001']!.map((step) => step.status),
    ['pending', 'reserved', 'paid', 'completed'],
  );
  assert.deepEqual(
    report.history['order-1002']!.map((step) => step.status),
    ['pending', 'reserved', 'cancelled'],
  );
  assert.equal(report.history['order-1002']![2]!.event, 'payment.failed');
  // Only the shipped order's stock is gone: the declined order's reservation was released.
  assert.deepEqual(report.initialStock, { widget: 10, gadget: 5 });
  assert.deepEqual(report.stock, { widget: 8, gadget: 5 });
});

test('leaderboard (seed 000): one producer, several consumer groups; cache.invalidate clears the cached ranking', async () => {
  const report = await leaderboard.main(connection());
  assert.deepEqual(report.before, [{ username: 'player1', score: 15000 }]);
  assert.deepEqual(report.after, [{ username: 'player1', score: 20000 }]);
  assert.deepEqual(report.cachedAgain, report.after);
  assert.deepEqual(report.cache, { hits: 1, misses: 2, invalidated: 1 });
  assert.deepEqual(report.users, { 123: { username: 'player1', email: 'player1@example.com' } });
  assert.deepEqual(report.notifications, ['player1 scored 15000 in doom', 'player1 improved from 15000 to 20000 in doom']);
});

test('user registration (seed 002): DomainEvent envelope, fan-out to independent groups, replay for a late consumer', async () => {
  const report = await userRegistration.main(connection());
  assert.equal(report.published.length, 3);
  for (const result of report.published) assert.match(result.id, /^evt_/);
  assert.deepEqual(
    report.emails.map((email) => [email.to, email.correlationId]),
    [
      ['ada@example.com', 'req_1'],
      ['grace@example.com', 'req_2'],
      ['linus@example.com', 'req_3'],
    ],
  );
  assert.equal(report.index.usr_2!.role, 'FREELANCER', 'user.updated reached search');
  assert.equal(report.index.usr_1!.email, 'ada@example.com');
  assert.deepEqual(report.replayed, ['user.created usr_1', 'user.created usr_2', 'user.created usr_3', 'user.updated usr_2']);
});

test("achievements (seed 001): the seed's retry policy as the group's, then dead letters, then redrive", async () => {
  const report = await achievements.main({ ...connection(), retryInitialMs: 50 });
  assert.deepEqual(report.attempts['achievement-123'], [1, 2, 3], 'two transient failures, then success');
  assert.deepEqual(report.attempts['achievement-999'], [1, 2, 3, 4, 1], '3 retries, dead-lettered, redriven once');
  assert.deepEqual(report.deadLetters, [{ achievementId: 'achievement-999', attempts: 4, lastError: 'Error: no definition for achievement-999' }]);
  assert.equal(report.redriven, 1);
  assert.deepEqual(report.points, { 'user-456': 600 });
  assert.equal(report.metrics.publishedEvents, 2);
  assert.equal(report.metrics.consumedEvents, 2);
  assert.equal(report.metrics.retryCount, 5);
  assert.equal(report.metrics.failedEvents, 6);
  assert.equal(report.health.herald.queues[0]!.consumerCount, 1);
  assert.equal(report.health.herald.queues[0]!.deadLetters, 1);
  assert.equal(report.status, 'healthy');
});
