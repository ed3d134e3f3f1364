// The example app's page: sign in by name, link an account with qrlink.js, list the accounts.
// It shows what the backend verified (GET /api/me), never what the browser was told.
'use strict';

const GATEWAY = document.body.dataset.gateway;
const $ = (id) => document.getElementById(id);
const say = (text) => { $('message').textContent = text; };

/** Calls this app's backend; a refusal throws with its `error`. */
async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body && JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || `${method} ${path}: ${res.status}`);
  return data;
}

/** Redraws the page from what the backend knows. */
async function refresh() {
  const me = await api('GET', '/api/me').catch(() => null);
  $('login').hidden = !!me;
  $('signed-in').hidden = !me;
  if (me) {
    $('user').textContent = me.user;
    $('accounts').replaceChildren(...me.accounts.map((a) => {
      const li = document.createElement('li');
      li.dataset.accountId = a.account_id;
      li.dataset.byResult = a.by_result;
      li.dataset.byWebhook = a.by_webhook;
      const proofs = [a.by_result && 'result token verified', a.by_webhook && 'webhook verified'];
      const proof = document.createElement('span');
      proof.className = 'proof';
      proof.textContent = proofs.filter(Boolean).join(', ');
      li.append(`${a.name || a.account_id} (${a.provider})`, proof);
      return li;
    }));
    $('webhooks').replaceChildren(...me.webhooks.map((w) => {
      const li = document.createElement('li');
      li.textContent = `${w.type} (${w.provider})`;
      return li;
    }));
  }
  document.body.dataset.ready = 'true';
}

$('login').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await api('POST', '/api/login', { name: $('name').value });
  } catch (e) {
    say(e.message);
  }
  refresh();
});

$('sign-out').addEventListener('click', () => api('POST', '/api/logout').finally(refresh));

// Steps 1 to 3: a connect token from our backend, the gateway's modal, the result token back
// to our backend to verify.
async function linkAccount(provider) {
  say('');
  if (!window.QrLink) {
    say(`qrlink.js did not load from ${GATEWAY}: is the gateway running?`);
    return;
  }
  const { token } = await api('POST', '/api/connect-token', { provider });
  let verifying = Promise.resolve();
  const link = QrLink.create({
    gateway: GATEWAY,
    token,
    provider,
    onSuccess(account, { result }) {
      verifying = api('POST', '/api/link-result', { result })
        .catch((e) => say(`Our backend refused the result: ${e.message}`));
    },
    async onExit(error) {
      link.destroy();
      if (error) say(`Not linked: ${error.message || error.code}`);
      await verifying;
      refresh();
    },
  });
  link.open();
}

for (const button of document.querySelectorAll('button[data-provider]')) {
  button.addEventListener('click', () => linkAccount(button.dataset.provider).catch((e) => say(e.message)));
}

refresh();
// The webhook may arrive after the modal closed: look again now and then (a real app might
// push changes to its pages instead).
setInterval(refresh, 3000);
