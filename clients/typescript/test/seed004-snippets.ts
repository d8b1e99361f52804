// Seed 004's snippets, as the seed writes them; only the import line differs
// ('@shared-infra/event-bus' → '@herald/client'). Each is wrapped in a function so that the
// test can run it; the bodies are the seed's text.

import { eventBus } from '@herald/client';
import { EventBusClient } from '@herald/client';

/** "Basic Setup" */
export async function basicSetup() {
  // That's it! The library handles connection automatically
  const result = await eventBus.publish('user.registered', {
    userId: '123',
    email: 'user@example.com'
  });
  return result;
}

/** "Getting Started: 2. Start using it" */
export async function gettingStarted() {
  // Publish events
  await eventBus.publish('user.registered', { userId: '123' });

  // Subscribe to events
  await eventBus.subscribe('user.*', (event) => {
    console.log('User event received:', event);
  });

  // Send real-time updates to users
  await eventBus.sendToUser('user-123', 'notification.new', {
    message: 'Your photo is ready!'
  });
}

/** "2. Real-time User Notifications", first half */
export async function notifyUser() {
  // Send to specific user
  await eventBus.publishToUser('user-123', 'notification.new', {
    title: 'Photo processed',
    message: 'Your vacation photo is ready!',
    photoId: '456'
  });
}

/** "2. Real-time User Notifications", second half */
export async function notifySessionRoom() {
  // Send to user's current session room
  await eventBus.publishToRoom('session:abc123', 'notification.new', {
    title: 'Welcome back!',
    message: 'We missed you!'
  });
}

/** "3. System-wide Broadcasts" */
export async function systemBroadcasts() {
  // Send to all connected clients
  await eventBus.broadcast('system.maintenance', {
    scheduled: '2024-01-15T02:00:00Z',
    duration: '30 minutes',
    message: 'Routine maintenance scheduled'
  });

  // Send to all services
  await eventBus.publish('system.config.updated', {
    configKey: 'upload.limits',
    newValue: '50MB',
    updatedBy: 'admin-789'
  });
}

/** "Check Service Health" */
export async function checkServiceHealth() {
  const health = await eventBus.healthCheck();
  console.log('Event Bus Health:', health.status); // 'healthy', 'degraded', 'unhealthy'

  const stats = await eventBus.getStats();
  console.log('Events published:', stats.eventsPublished);
  console.log('Active subscriptions:', stats.activeSubscriptions);
}

/** "Debug Event Flow" */
export async function debugEventFlow() {
  // Add trace ID to track events through the system
  await eventBus.publish('photo.uploaded', {
    photoId: '123',
    userId: 'user-456'
  }, {
    traceId: 'trace-abc-123',
    source: 'photo-api-service'
  });
}

/** "Advanced Configuration" */
export function advancedConfiguration() {
  const eventBus = new EventBusClient({
    // Connection settings
    eventBusUrl: process.env.EVENT_BUS_URL || 'http://localhost:3003',

    // Authentication
    serviceName: 'photo-api-service',
    authToken: process.env.EVENT_BUS_TOKEN,

    // Performance
    maxRetries: 3,
    timeout: 5000,
    batchSize: 10,

    // Monitoring
    enableMetrics: true,
    logLevel: 'info'
  });
  return eventBus;
}
