// The browser side (seed 004, "Frontend Client"): the stock socket.io-client, connected with
// the user's token; Herald's forwarding rule sends it the user's photo.processing.* events,
// and the notification service's publishToUser its notifications.

import { io, type Socket } from 'socket.io-client';

export interface Screen {
  progress: Record<string, number[]>;
  thumbnails: Record<string, string[]>;
  notifications: { type: string; title: string; message: string; photoId: string }[];
}

export function openBrowser(url: string, token: string, onChange: (screen: Screen) => void): { socket: Socket; screen: Screen } {
  const screen: Screen = { progress: {}, thumbnails: {}, notifications: [] };
  const updateProgressBar = (photoId: string, progress: number) => {
    (screen.progress[photoId] ??= []).push(progress);
    onChange(screen);
  };
  const showThumbnails = (photoId: string, thumbnails: string[]) => {
    screen.thumbnails[photoId] = thumbnails;
    onChange(screen);
  };

  // Connects via WebSocket for real-time updates
  const socket = io(url, { auth: { token } });

  socket.on('photo.processing.progress', (event) => {
    updateProgressBar(event.photoId, event.progress);
  });

  socket.on('photo.processing.completed', (event) => {
    showThumbnails(event.photoId, event.thumbnails);
  });

  socket.on('notification.new', (notification) => {
    screen.notifications.push(notification);
    onChange(screen);
  });

  return { socket, screen };
}
