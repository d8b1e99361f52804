// The notification service (seed 004, "In your notification service"): tells the user, in
// their browsers, that a photo is ready or failed.

import type { EventBusClient } from '@herald/client';

import { serviceClient, type ExampleOptions } from '../shared.js';

export async function startNotificationService(options: ExampleOptions): Promise<EventBusClient> {
  const eventBus = serviceClient('notification-service', options);

  async function sendNotification(userId: string, notification: Record<string, unknown>) {
    await eventBus.publishToUser(userId, 'notification.new', notification);
  }

  // Subscribe to important events
  await eventBus.subscribe(
    'photo.processing.completed',
    async (event) => {
      const { photoId, userId } = event.data;

      // Send notification to user
      await sendNotification(userId, {
        type: 'photo_processed',
        title: 'Your photo is ready!',
        message: 'Photo processing completed successfully',
        photoId: photoId,
      });
    },
    { group: 'notify-completed' },
  );

  await eventBus.subscribe(
    'photo.processing.failed',
    async (event) => {
      const { photoId, userId, error } = event.data;

      // Send error notification
      await sendNotification(userId, {
        type: 'photo_processing_failed',
        title: 'Photo processing failed',
        message: `Failed to process your photo: ${error.message}`,
        photoId: photoId,
      });
    },
    { group: 'notify-failed' },
  );

  return eventBus;
}
