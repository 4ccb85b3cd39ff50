// The guardian app's one script: shows times in the device's time zone, registers the
// service worker (offline page, push notifications) and, where the browser can, offers to
// turn notifications on. Every page works without it.
(function () {
  'use strict';
  // Times in the device's own time zone (the page says them in UTC).
  var lang = document.documentElement.lang;
  Array.prototype.forEach.call(document.querySelectorAll('time[datetime]'), function (time) {
    var at = new Date(time.getAttribute('datetime'));
    if (!isNaN(at)) time.textContent = at.toLocaleString(lang, { dateStyle: 'medium', timeStyle: 'short' });
  });

  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.register('/app/sw.js', { scope: '/app/' });

  var section = document.getElementById('push');
  if (!section || !('PushManager' in window) || !('Notification' in window)) return;
  var button = section.querySelector('button');
  var status = section.querySelector('[role=status]');
  var say = function (key) { status.textContent = section.dataset[key]; };

  function key(base64url) {
    var padded = (base64url + '===').slice(0, base64url.length + (4 - base64url.length % 4) % 4);
    var raw = atob(padded.replace(/-/g, '+').replace(/_/g, '/'));
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function register(subscription) {
    return fetch('/app/devices', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-csrf-token': section.dataset.csrf },
      body: JSON.stringify(subscription)
    }).then(function (answer) {
      if (!answer.ok) throw new Error(answer.status);
    });
  }

  navigator.serviceWorker.ready.then(function (ready) {
    return ready.pushManager.getSubscription().then(function (existing) {
      section.hidden = false;
      if (existing && Notification.permission === 'granted') {
        // Registered again on each visit: a renewed subscription replaces the old one.
        return register(existing.toJSON()).then(function () { say('on'); button.hidden = true; });
      }
      if (Notification.permission === 'denied') { say('blocked'); button.hidden = true; }
      button.addEventListener('click', function () {
        button.disabled = true;
        Notification.requestPermission().then(function (permission) {
          if (permission !== 'granted') { say('blocked'); return; }
          return ready.pushManager.subscribe({
            userVisibleOnly: true,
            applicationServerKey: key(section.dataset.key)
          }).then(function (subscription) {
            return register(subscription.toJSON());
          }).then(function () { say('on'); button.hidden = true; });
        }).catch(function () { say('failed'); button.disabled = false; });
      });
    });
  });
})();
