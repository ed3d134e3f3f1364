// The do-it-yourself baseline of issue #6: a minimal Express proxy in the shape of Unipile's QR
// code sample. The browser calls POST /api/intent, gets the QR *string* (it draws the QR itself
// with a JS library), then long-polls POST /api/checkpoint until the account is linked or the
// provider gives up. The proxy only adds the API key and passes bodies through.
//
// Like the sample, it keeps the upstream long poll open after its browser has gone: nothing ties
// the upstream request to the client connection. That is the behaviour being measured; do not
// "fix" it here.
//
//   UNIPILE_API_URL=http://127.0.0.1:3100 UNIPILE_API_KEY=k PORT=3200 node server.js
'use strict';

const express = require('express');

const UNIPILE_API_URL = (process.env.UNIPILE_API_URL || 'http://127.0.0.1:3100').replace(/\/+$/, '');
const UNIPILE_API_KEY = process.env.UNIPILE_API_KEY || 'demo';
const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 3200);

const app = express();
app.use(express.json());

// POSTs one Unipile call and passes its status and body through unchanged.
async function unipile(path, body, res) {
  try {
    const upstream = await fetch(`${UNIPILE_API_URL}/v2/auth/${path}`, {
      method: 'POST',
      headers: {
        'X-API-KEY': UNIPILE_API_KEY,
        'Content-Type': 'application/json',
        Accept: 'application/json',
      },
      body: JSON.stringify(body),
    });
    const text = await upstream.text();
    res.status(upstream.status).type('application/json').send(text);
  } catch (err) {
    res.status(502).json({ object: 'Error', type: 'proxy/upstream_unreachable', status: 502, detail: String(err) });
  }
}

// Start Auth Intent: answers {"object":"AuthenticationQrCode","qrcode","intent_id"}.
app.post('/api/intent', (req, res) => {
  const { provider = 'whatsapp' } = req.body || {};
  unipile('intent', { provider, credentials: { qrcode: true } }, res);
});

// Solve a Checkpoint, the long poll: a new QR, the Account, a checkpoint or an error.
app.post('/api/checkpoint', (req, res) => {
  const { intent_id, code = '' } = req.body || {};
  unipile('checkpoint', { code, intent_id }, res);
});

// The browser side, reduced to its loop (the real sample draws `qrcode` with a QR library).
app.get('/', (_req, res) => {
  res.type('html').send(`<!doctype html><meta charset="utf-8"><title>peer-express</title>
<button id="go">Link WhatsApp</button><pre id="out"></pre>
<script>
const out = document.getElementById('out');
const post = (p, b) => fetch(p, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(b)}).then(r => r.json());
document.getElementById('go').onclick = async () => {
  let r = await post('/api/intent', {provider: 'whatsapp'});
  const id = r.intent_id;
  while (r.object === 'AuthenticationQrCode') {
    out.textContent = 'QR to draw: ' + r.qrcode;
    r = await post('/api/checkpoint', {intent_id: id});
  }
  out.textContent = JSON.stringify(r, null, 2);
};
</script>`);
});

const server = app.listen(PORT, HOST, () => {
  console.log(`peer-express on http://${HOST}:${PORT} -> ${UNIPILE_API_URL}`);
});

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
