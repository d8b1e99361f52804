// The photo API (seed 004, "In your photo-upload API service"): an upload publishes
// photo.uploaded and answers at once; the processing happens elsewhere.

import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';

import { serviceClient, type ExampleOptions } from '../shared.js';

let photos = 0;

async function processUpload(file: { originalname: string; size: number }, userId: string) {
  photos += 1;
  return { id: `photo-${Date.now().toString(36)}-${photos}`, userId, file };
}

async function readJson(req: IncomingMessage): Promise<any> {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 64 * 1024) throw new Error('body too large');
  }
  return JSON.parse(body);
}

export async function startApiService(options: ExampleOptions) {
  const eventBus = serviceClient('photo-api-service', options);
  const server = createServer(async (req, res) => {
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'POST' || req.url !== '/photos/upload') return reply(404, { error: 'not found' });
    try {
      // Stands in for a multipart upload: { filename, size }; the user from the session.
      const upload = await readJson(req);
      const file = { originalname: String(upload.filename), size: Number(upload.size) };
      const userId = String(req.headers['x-user-id']);

      // Process the upload
      const photo = await processUpload(file, userId);

      // Publish event to notify the system
      await eventBus.publish(
        'photo.uploaded',
        {
          photoId: photo.id,
          userId: userId,
          filename: file.originalname,
          size: file.size,
          uploadedAt: new Date().toISOString(),
        },
        { userId, correlationId: String(req.headers['x-request-id'] ?? photo.id) },
      );

      reply(200, { success: true, photoId: photo.id, message: 'Upload received - processing started' });
    } catch (error) {
      reply(500, { success: false, error: (error as Error).message });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    async close() {
      await new Promise((resolve) => server.close(resolve));
      await eventBus.close();
    },
  };
}
