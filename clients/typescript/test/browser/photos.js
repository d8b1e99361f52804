// Seed 004's "Frontend Client", as written there but for the URL and the user's token, which
// the page's query gives (the app's login would).
const params = new URLSearchParams(location.search);

// Connects via WebSocket for real-time updates
const socket = io(params.get('herald'), { auth: { token: params.get('token') } });

socket.on('photo.processing.progress', (event) => {
  updateProgressBar(event.photoId, event.progress);
});

socket.on('photo.processing.completed', (event) => {
  showThumbnails(event.photoId, event.thumbnails);
});

socket.on('notification.new', (notification) => {
  const item = document.createElement('li');
  item.textContent = `${notification.title} ${notification.message}`;
  document.getElementById('notifications').appendChild(item);
});

socket.on('connect', () => {
  document.getElementById('status').textContent = 'connected';
});

function photoRow(photoId) {
  let row = document.getElementById(photoId);
  if (!row) {
    row = document.createElement('div');
    row.id = photoId;
    row.className = 'photo';
    row.innerHTML = '<span class="name"></span> <progress max="100" value="0"></progress> ' +
      '<span class="percent"></span> <span class="thumbnails"></span>';
    row.querySelector('.name').textContent = photoId;
    document.getElementById('photos').appendChild(row);
  }
  return row;
}

function updateProgressBar(photoId, progress) {
  const row = photoRow(photoId);
  row.querySelector('progress').value = progress;
  row.querySelector('.percent').textContent = `${progress}%`;
}

function showThumbnails(photoId, thumbnails) {
  const row = photoRow(photoId);
  row.querySelector('progress').value = 100;
  row.querySelector('.percent').textContent = '100%';
  row.querySelector('.thumbnails').textContent = `thumbnails: ${thumbnails.join(', ')}`;
}
