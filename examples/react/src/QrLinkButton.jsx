// QrLinkButton: links an account through qrlink's drop-in script, in a modal over the page.
// It replaces the long-poll component of Unipile's sample: no QR to draw, no polling, no proxy;
// the gateway's page does all of it. The account is not linked until your backend says so:
// send `result` from onSuccess to it and verify it there (README, "Embed it in your app").
import { useEffect, useRef } from 'react';

const scripts = new Map();

/** Loads `${gateway}/qrlink.js` once; resolves to window.QrLink. */
export function loadQrLink(gateway) {
  if (window.QrLink) return Promise.resolve(window.QrLink);
  if (!scripts.has(gateway)) {
    scripts.set(gateway, new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = `${gateway}/qrlink.js`;
      script.onload = () => resolve(window.QrLink);
      script.onerror = () => {
        scripts.delete(gateway);
        script.remove();
        reject(new Error(`cannot load ${script.src}: is the gateway running?`));
      };
      document.head.append(script);
    }));
  }
  return scripts.get(gateway);
}

/**
 * A button that opens the gateway's modal. `token` is a connect token, or a function that
 * returns one (or a promise of one): it is called on each click, since tokens are short-lived.
 * onSuccess(account, {result, state}), onExit(error | null, {session}) and onEvent(name, data)
 * are qrlink.js's callbacks. Unmounting closes the modal and leaves nothing behind.
 */
export function QrLinkButton({ gateway, token, provider, onSuccess, onExit, onEvent, children, ...rest }) {
  const link = useRef(null); // the open link's handle
  const busy = useRef(false); // from the click until the modal has closed
  const mounted = useRef(true);
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
      link.current?.destroy();
      link.current = null;
    };
  }, []);

  async function open() {
    if (busy.current) return;
    busy.current = true;
    try {
      const [QrLink, connectToken] = await Promise.all([
        loadQrLink(gateway),
        typeof token === 'function' ? token() : token,
      ]);
      if (!mounted.current) return;
      link.current = QrLink.create({
        gateway, token: connectToken, provider, onSuccess, onEvent,
        onExit(error, meta) {
          link.current?.destroy();
          link.current = null;
          busy.current = false;
          onExit?.(error, meta);
        },
      });
      link.current.open();
    } catch (error) {
      busy.current = false;
      onExit?.(error, { session: null });
    }
  }

  return <button type="button" onClick={open} {...rest}>{children ?? 'Link an account'}</button>;
}
