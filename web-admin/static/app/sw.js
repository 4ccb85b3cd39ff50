// The guardian app's service worker. Keeps the offline page and the app's files (named
// by their digests, so a new version is a new cache), shows push notifications, and
// opens the message a notification names.
'use strict';
var CACHE = 'tidings-app-__VERSION__';
var KEPT = ['/app/offline', '__CSS__', '__JS__', '/app/icon-192.png'];

self.addEventListener('install', function (event) {
  event.waitUntil(caches.open(CACHE).then(function (cache) {
    return cache.addAll(KEPT);
  }).then(function () { return self.skipWaiting(); }));
});

self.addEventListener('activate', function (event) {
  event.waitUntil(caches.keys().then(function (names) {
    return Promise.all(names.filter(function (name) {
      return name.indexOf('tidings-app-') === 0 && name !== CACHE;
    }).map(function (name) { return caches.delete(name); }));
  }).then(function () { return self.clients.claim(); }));
});

self.addEventListener('fetch', function (event) {
  var request = event.request;
  if (request.method !== 'GET') return;
  if (request.mode === 'navigate') {
    // Pages are always fresh (they carry the guardian's messages): the network, and
    // the offline page only when there is none.
    event.respondWith(fetch(request).catch(function () {
      return caches.match('/app/offline');
    }));
    return;
  }
  event.respondWith(caches.match(request).then(function (kept) {
    return kept || fetch(request);
  }));
});

self.addEventListener('push', function (event) {
  var message = {};
  try { message = event.data ? event.data.json() : {}; } catch (e) { message = {}; }
  event.waitUntil(self.registration.showNotification(message.title || 'Tidings', {
    body: message.body || '',
    lang: message.lang || '',
    tag: message.message_id || 'tidings',
    renotify: true,
    requireInteraction: Boolean(message.emergency),
    icon: '/app/icon-192.png',
    data: { url: message.url || '/app/' }
  }));
});

self.addEventListener('notificationclick', function (event) {
  event.notification.close();
  // The app's page the payload names, on this origin whatever host the payload says
  // (the server may be reached by more than one name), and only a page of the app.
  var named = new URL((event.notification.data && event.notification.data.url) || '/app/', self.location.origin);
  var url = new URL(named.pathname.indexOf('/app/') === 0 ? named.pathname : '/app/', self.location.origin).href;
  event.waitUntil(self.clients.matchAll({ type: 'window' }).then(function (windows) {
    // The app open already (in the background, say): its window shows the message.
    for (var i = 0; i < windows.length; i++) {
      if (windows[i].url === url) return windows[i].focus();
    }
    if (windows.length && 'navigate' in windows[0]) {
      return windows[0].navigate(url).then(function (opened) {
        return opened ? opened.focus() : self.clients.openWindow(url);
      });
    }
    return self.clients.openWindow(url);
  }));
});
