// Seed 004's photo pipeline on Herald: the API publishes photo.uploaded; a worker (in the
// group photo-workers) processes it and publishes started / progress / completed or failed;
// the notification service tells the user; the user's browser, on the stock socket.io-client,
// shows progress and thumbnails that Herald forwards to it (herald.toml's forwarding rule).
//
//   EVENT_BUS_URL=http://127.0.0.1:3003 EVENT_BUS_TOKEN=… REALTIME_JWT_SECRET=… \
//     node build/examples/photo-pipeline/index.js

import { outcome, runIfMain, signBrowserToken, type ExampleOptions } from '../shared.js';
import { startApiService } from './api-service.js';
import { openBrowser, type Screen } from './browser.js';
import { startNotificationService } from './notification-service.js';
import { startWorkerService } from './worker-service.js';

export interface PhotoPipelineOptions extends ExampleOptions {
  /** Signs the browser's token, as the app's login would. */
  browserToken?: (userId: string) => string;
}

export async function main(options: PhotoPipelineOptions = {}) {
  const eventBusUrl = options.eventBusUrl ?? process.env.EVENT_BUS_URL ?? 'http://localhost:3003';
  const connection = { eventBusUrl, authToken: options.authToken ?? process.env.EVENT_BUS_TOKEN };
  const browserToken =
    options.browserToken ?? ((userId: string) => signBrowserToken(userId, process.env.REALTIME_JWT_SECRET ?? ''));

  const worker = await startWorkerService(connection);
  const notifications = await startNotificationService(connection);
  const api = await startApiService(connection);

  const userId = 'user-456';
  const settled = outcome<Screen>('the browser to show both photos');
  const { socket, screen } = openBrowser(eventBusUrl, browserToken(userId), (now) => {
    if (Object.keys(now.thumbnails).length === 1 && now.notifications.length === 2) settled.done(now);
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('connect_error', reject);
  });

  try {
    const upload = async (filename: string) => {
      const response = await fetch(`${api.url}/photos/upload`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-user-id': userId },
        body: JSON.stringify({ filename, size: 2_048_000 }),
      });
      return (await response.json()) as { success: boolean; photoId: string; message: string };
    };
    const vacation = await upload('vacation.jpg');
    const broken = await upload('corrupt.jpg');
    await settled.promise;
    return { uploads: { vacation, broken }, screen };
  } finally {
    socket.close();
    await api.close();
    await Promise.all([worker.close(), notifications.close()]);
  }
}

runIfMain(import.meta.url, main);
