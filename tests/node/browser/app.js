// A web app's use of Herald, as seed 004's frontend does it: io(url) with the user's token,
// then socket.on(type, ...) for each event it shows. The page's query names Herald and the token.
const params = new URLSearchParams(location.search);
const socket = io(params.get('herald'), { auth: { token: params.get('token') } });
const status = document.getElementById('status');
const list = document.getElementById('notifications');

socket.on('connect', () => {
  status.textContent = 'connected';
});
socket.on('connect_error', (error) => {
  status.textContent = `refused: ${error.message}`;
});
socket.on('notification.new', (data, meta) => {
  const item = document.createElement('li');
  item.textContent = `${data.title}: ${data.message} (from ${meta.source})`;
  list.appendChild(item);
});
