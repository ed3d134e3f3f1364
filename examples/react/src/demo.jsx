// The React demo page of examples/app.rs (served at /react): the same backend mints the
// connect token and verifies the result token; QrLinkButton does the rest.
import { useEffect, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { QrLinkButton } from './QrLinkButton.jsx';

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

function Demo() {
  const [me, setMe] = useState(null);
  const [message, setMessage] = useState('');
  const verifying = useRef(Promise.resolve());
  // Signed out (here or in another tab): the button unmounts, and with it any open modal.
  const refresh = () => api('GET', '/api/me').then(setMe, (e) => {
    setMe(null);
    setMessage(e.message);
  });
  useEffect(() => {
    refresh();
    // The webhook may come after the modal closed.
    const timer = setInterval(refresh, 3000);
    return () => clearInterval(timer);
  }, []);

  if (!me) return <p>{message} <a href="/">Sign in</a></p>;
  return (
    <main data-ready="true">
      <h1>React example</h1>
      <p>
        Signed in as <b>{me.user}</b>.{' '}
        <button id="sign-out" onClick={() => api('POST', '/api/logout').finally(refresh)}>Sign out</button>
      </p>
      <QrLinkButton
        id="link"
        gateway={me.gateway}
        provider="whatsapp"
        token={() => api('POST', '/api/connect-token', { provider: 'whatsapp' }).then((r) => r.token)}
        onSuccess={(account, { result }) => {
          verifying.current = api('POST', '/api/link-result', { result })
            .catch((e) => setMessage(`Our backend refused the result: ${e.message}`));
        }}
        onExit={async (error) => {
          if (error) setMessage(`Not linked: ${error.message || error.code}`);
          await verifying.current;
          refresh();
        }}
      >
        Link WhatsApp
      </QrLinkButton>
      <p role="status">{message}</p>
      <h2>Linked accounts</h2>
      <ul id="accounts">
        {me.accounts.map((a) => (
          <li key={a.account_id} data-account-id={a.account_id}
            data-by-result={String(a.by_result)} data-by-webhook={String(a.by_webhook)}>
            {a.name || a.account_id} ({a.provider})
            {a.by_result && ' · result token verified'}{a.by_webhook && ' · webhook verified'}
          </li>
        ))}
      </ul>
      <p><a href="/">Back to the plain page</a></p>
    </main>
  );
}

createRoot(document.getElementById('root')).render(<Demo />);
