// The photo worker (seed 004, "In your photo-processing worker"). Workers share the uploads
// through the consumer group `photo-workers`: each photo is processed by one of them, and
// one that crashes mid-photo has the photo handed to another.

import type { EventBusClient } from '@herald/client';

import { serviceClient, type ExampleOptions } from '../shared.js';

const STAGES: [number, string][] = [
  [25, 'validation'],
  [50, 'resizing'],
  [75, 'thumbnails'],
];

/** Stands in for the image work; a file named *corrupt* fails validation. */
async function processStage(filename: string, stage: string): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 5));
  if (stage === 'validation' && filename.includes('corrupt')) throw new Error('not a JPEG file');
}

export async function startWorkerService(options: ExampleOptions): Promise<EventBusClient> {
  const eventBus = serviceClient('photo-worker-service', options);

  // Subscribe to photo upload events
  await eventBus.subscribe(
    'photo.uploaded',
    async (event) => {
      const { photoId, userId, filename } = event.data;

      // Send processing started event
      await eventBus.publish('photo.processing.started', {
        photoId,
        userId,
        startedAt: new Date().toISOString(),
      });

      try {
        for (const [progress, stage] of STAGES) {
          // Update progress (userId lets Herald's forwarding rule reach the user's browsers)
          await eventBus.publish('photo.processing.progress', { photoId, userId, progress, stage });
          await processStage(filename, stage);
        }

        // Send completion event
        await eventBus.publish('photo.processing.completed', {
          photoId,
          userId,
          thumbnails: ['small', 'medium', 'large'],
          completedAt: new Date().toISOString(),
        });
      } catch (error) {
        await eventBus.publish('photo.processing.failed', {
          photoId,
          userId,
          error: { message: (error as Error).message },
        });
      }
    },
    { group: 'photo-workers' },
  );

  // Subscribe to specific user events
  await eventBus.subscribe('user.*', async (event) => {
    // Handle all user-related events
    console.log(`User event: ${event.type}`, event.data);
  });

  return eventBus;
}
