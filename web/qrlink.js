/*
 * qrlink.js: the gateway's link page in a modal on your own page (DESIGN.md section 11).
 *
 *   const link = QrLink.create({ gateway: 'https://link.example.com', token, provider: 'whatsapp',
 *     onSuccess(account, { result, state, session }) {}, onExit(error, { session }) {},
 *     onEvent(name, data) {} });
 *   button.onclick = () => link.open();      // later: link.exit(); link.destroy();
 *
 * Plain script, no build step, no dependency. One source, two forms:
 *   - Classic script: <script src="https://link.example.com/qrlink.js"></script> defines
 *     window.QrLink. `gateway` then defaults to where this file was loaded from.
 *     `import('https://link.example.com/qrlink.js')` also works (an import for its side
 *     effect: it sets globalThis.QrLink), but then `gateway` must be given.
 *   - ES module: `import QrLink from 'https://link.example.com/qrlink.mjs'` (also
 *     `import { QrLink }`). The gateway makes /qrlink.mjs from this file at compile time: it
 *     puts `const QRLINK_MODULE_URL = import.meta.url;` before it (the default gateway) and
 *     `export default QrLink; export { QrLink };` after it, and the module form leaves
 *     window alone. Both are served with Access-Control-Allow-Origin: *.
 * Typed in /qrlink.d.ts (QrLinkOptions, QrLinkHandle, QrLinkError, and the messages below).
 *
 * A host page with a CSP of its own lets the gateway in three places: script-src (this
 * file), connect-src (embed.json) and frame-src (the page). The modal is styled through the
 * CSSOM (element.style), which style-src does not restrict, so it needs no 'unsafe-inline'.
 *
 * What open() does
 *   1. Shows the modal at once (role=dialog, aria-modal, labelled; a visible Close button),
 *      moves focus into it, makes everything else under <body> `inert` (restored exactly as
 *      it was on close) and stops the page behind from scrolling.
 *   2. Asks the gateway whether this page's origin may frame it (GET {gateway}/embed.json,
 *      decided by QRLINK_FRAME_ANCESTORS, or 'self' and QRLINK_ALLOWED_ORIGINS when that is
 *      unset). If not: one console.error naming this origin and the setting, no frame, and
 *      onExit({code: 'embed/forbidden'}).
 *   3. Frames {gateway}/?embed=1&origin={this origin}[&provider=…]. The connect token is not
 *      in that URL (URLs end up in history, logs and Referer headers): the page says `ready`
 *      and this script answers `start` with the token, by postMessage to the gateway's
 *      origin only. No `ready` within READY_TIMEOUT_MS → onExit({code: 'embed/unavailable'}).
 *
 * Callbacks (a callback that throws is reported with reportError and changes nothing here)
 *   onEvent(name, data): 'open' {provider} · 'qr' {rotation, expires_at} (never the code's
 *     contents) · 'checkpoint' {kind} (e.g. '2FA', 'OTP') · 'resumed' {phase} · 'error'
 *     {error} (the page shows it; Retry may follow) · 'success' {account} · 'exit' {error}.
 *     Every data object also carries `session` (null until the gateway has named one).
 *   onSuccess(account, {result, state, session, provider}): linked. `result` is the result
 *     token (when the gateway has QRLINK_TOKEN_SECRET): send it to your backend, which
 *     verifies it; do not trust `account` on its own.
 *   onExit(error | null, {session}): the modal has closed. Exactly once per open():
 *     - after success: onSuccess, then the modal closes, then onExit(null);
 *     - Esc, the Close button, exit() or destroy(): onExit(null), or onExit(error) when the
 *       page was showing an error at that moment;
 *     - an error or a timeout does NOT close the modal (as Plaid Link does): the page shows
 *       what happened and, when it can help, a Retry button; onExit(error) fires when the
 *       person closes it. error = {code, message, retryable, detail?, req_id?} with the
 *       gateway's codes ('api/proxy_error', …; a timeout is 'provider/timeout'), or this
 *       script's own: 'embed/forbidden', 'embed/unreachable' (embed.json could not be read),
 *       'embed/unavailable' (the frame never said ready).
 *
 * Closing ends the attempt, it does not leave it detached: exit() posts `exit` to the page,
 * which cancels its attempt (so the session ends in /api/sessions at once) and answers
 * `exited`; the frame is removed then, or after EXIT_ACK_MS. destroy() removes everything at
 * once: the page, told it is being taken down (`pagehide` in embedded mode), cancels too.
 * After destroy(): no element, listener, timer or socket is left; destroy() again does
 * nothing; open() logs a warning and does nothing. open() while open does nothing.
 *
 * Messages (window.postMessage; each side checks event.origin and event.source)
 *   page → host (only to the `origin` named in the frame's URL): {source: 'qrlink',
 *     version: 1, type, session, provider, …} with type one of
 *     'ready' {demo, token_required} · 'qr' {rotation, expires_at} · 'checkpoint' {kind} ·
 *     'resumed' {phase} · 'account' {account, state, result} · 'timeout' {rotations} ·
 *     'error' {code, message, retryable, detail, req_id} · 'exited' (after `exit`) ·
 *     'close' (Esc pressed inside the frame)
 *   host → page: {source: 'qrlink-host', version: 1, type} with type
 *     'start' {token, provider} (answer to ready) · 'exit' (cancel, then say exited) ·
 *     'focus' {at: 'first' | 'last'} (Shift+Tab wrapping into the frame lands on its last
 *     control)
 */
var QrLink = (function () {
  'use strict';

  /** The frame must say `ready` by then (it loads the page and /config.json). */
  var READY_TIMEOUT_MS = 15000;
  /** How long exit() waits for the page to confirm it cancelled before removing the frame. */
  var EXIT_ACK_MS = 1500;
  var Z_INDEX = '2147483000';

  /**
   * The folder this file came from (https://link.example.com/, or …/prefix/ behind a proxy
   * that mounts the gateway under a path): the default gateway.
   */
  var scriptBase = (function () {
    try {
      if (typeof QRLINK_MODULE_URL === 'string') return new URL('./', QRLINK_MODULE_URL).href;
    } catch (err) {
      // fall through
    }
    try {
      var s = typeof document !== 'undefined' ? document.currentScript : null;
      if (s && s.src) return new URL('./', new URL(s.src, document.baseURI)).href;
    } catch (err) {
      // fall through
    }
    return null;
  })();

  function parseGateway(value) {
    var text = value == null ? scriptBase : String(value);
    if (!text) {
      throw new TypeError('QrLink.create: `gateway` is required (the origin of your qrlink gateway, e.g. "https://link.example.com") when qrlink.js is imported rather than loaded by a <script> tag');
    }
    var url;
    try {
      url = new URL(text);
    } catch (err) {
      throw new TypeError('QrLink.create: `gateway` must be an http(s) origin such as "https://link.example.com", got ' + JSON.stringify(text));
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') {
      throw new TypeError('QrLink.create: `gateway` must be an http(s) origin, got ' + JSON.stringify(text));
    }
    // A path prefix is kept (a gateway behind /qrlink/ on a shared host); query and hash are not.
    var path = url.pathname.replace(/\/+$/, '') + '/';
    return { origin: url.origin, base: url.origin + path };
  }

  function report(err) {
    if (typeof window.reportError === 'function') {
      window.reportError(err);
    } else {
      console.error(err);
    }
  }

  function css(el, styles) {
    // CSSOM, not a style attribute or a <style> element: works under a strict host CSP.
    for (var k in styles) el.style.setProperty(k, styles[k]);
  }

  function create(options) {
    var o = options || {};
    var gw = parseGateway(o.gateway);
    ['onSuccess', 'onExit', 'onEvent'].forEach(function (name) {
      if (o[name] != null && typeof o[name] !== 'function') {
        throw new TypeError('QrLink.create: `' + name + '` must be a function');
      }
    });
    if (o.provider != null && typeof o.provider !== 'string') {
      throw new TypeError('QrLink.create: `provider` must be a string such as "whatsapp"');
    }
    if (o.token != null && typeof o.token !== 'string') {
      throw new TypeError('QrLink.create: `token` must be a string (a connect token)');
    }
    var token = o.token || null;
    var provider = o.provider || null;
    var destroyed = false;
    /** The current open(), or null: everything it created, to take down on close. */
    var run = null;

    function call(name, args) {
      var fn = o[name];
      if (typeof fn !== 'function') return;
      try {
        fn.apply(null, args);
      } catch (err) {
        report(err);
      }
    }

    function emit(r, name, data) {
      var d = Object.assign({ session: r.session }, data || {});
      call('onEvent', [name, d]);
    }

    function open() {
      if (destroyed) {
        console.warn('qrlink: open() after destroy() does nothing; call QrLink.create() again');
        return;
      }
      if (run) return;
      var r = (run = {
        session: null,
        phase: 'checking',
        error: null,
        overlay: null,
        dialog: null,
        frame: null,
        closeButton: null,
        sentinels: [],
        inerted: [],
        rootOverflow: null,
        returnFocus: document.activeElement,
        abort: typeof AbortController === 'function' ? new AbortController() : null,
        readyTimer: 0,
        exitTimer: 0,
        onMessage: null,
        onKeydown: null,
        onFocusin: null,
      });
      build(r);
      emit(r, 'open', { provider: provider });
      check(r);
    }

    /** The modal: overlay > dialog > [sentinel, bar (title, Close), frame slot, sentinel]. */
    function build(r) {
      // The framed page follows prefers-color-scheme; the dialog's bar matches it.
      var dark = typeof window.matchMedia === 'function' && window.matchMedia('(prefers-color-scheme: dark)').matches;
      var theme = dark
        ? { scheme: 'dark', card: '#171b21', text: '#e7e9ec', muted: '#9ba4ae', border: '#2a3038' }
        : { scheme: 'light', card: '#ffffff', text: '#1b1f24', muted: '#59616b', border: '#e2e5e9' };
      var overlay = document.createElement('div');
      overlay.setAttribute('data-qrlink', 'overlay');
      css(overlay, {
        position: 'fixed', inset: '0', 'z-index': Z_INDEX, display: 'flex',
        'align-items': 'center', 'justify-content': 'center', padding: '16px',
        'box-sizing': 'border-box', background: 'rgba(15, 18, 22, 0.55)',
      });
      var dialog = document.createElement('div');
      dialog.setAttribute('role', 'dialog');
      dialog.setAttribute('aria-modal', 'true');
      dialog.setAttribute('aria-label', 'Link an account');
      dialog.setAttribute('data-qrlink', 'dialog');
      css(dialog, {
        position: 'relative', display: 'flex', 'flex-direction': 'column',
        width: '100%', 'max-width': '480px', height: '100%', 'max-height': '760px',
        background: theme.card, color: theme.text, 'color-scheme': theme.scheme,
        'border-radius': '14px', overflow: 'hidden',
        'box-shadow': '0 24px 64px rgba(0, 0, 0, 0.35)',
        font: '500 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
      });
      var bar = document.createElement('div');
      css(bar, {
        display: 'flex', 'align-items': 'center', 'justify-content': 'space-between',
        gap: '8px', padding: '6px 6px 6px 16px', 'border-bottom': '1px solid ' + theme.border,
        flex: 'none',
      });
      var title = document.createElement('span');
      title.textContent = 'Link an account';
      css(title, { color: theme.muted });
      var close = document.createElement('button');
      close.type = 'button';
      close.setAttribute('aria-label', 'Close');
      close.setAttribute('data-qrlink', 'close');
      close.textContent = '\u00d7';
      css(close, {
        width: '36px', height: '36px', border: '0', 'border-radius': '8px', background: 'transparent',
        color: theme.text, font: '400 26px/1 system-ui, sans-serif', cursor: 'pointer', padding: '0',
      });
      close.addEventListener('click', function () {
        if (run === r) exitRun(r);
      });
      var slot = document.createElement('div');
      css(slot, { position: 'relative', flex: '1', 'min-height': '0', display: 'flex' });
      var spinner = document.createElement('div');
      spinner.setAttribute('aria-hidden', 'true');
      spinner.setAttribute('data-qrlink', 'loading');
      spinner.textContent = 'Loading…';
      css(spinner, { margin: 'auto', color: theme.muted });
      slot.append(spinner);
      bar.append(title, close);
      var start = sentinel(r, 'start');
      var end = sentinel(r, 'end');
      dialog.append(start, bar, slot, end);
      overlay.append(dialog);

      // Everything else under <body> leaves the accessibility tree and the tab order.
      for (var i = 0; i < document.body.children.length; i++) {
        var el = document.body.children[i];
        if (el === overlay) continue;
        r.inerted.push([el, el.hasAttribute('inert'), el.getAttribute('inert')]);
        el.setAttribute('inert', '');
      }
      var root = document.documentElement;
      r.rootOverflow = [root.style.getPropertyValue('overflow'), root.style.getPropertyPriority('overflow')];
      root.style.setProperty('overflow', 'hidden');
      document.body.append(overlay);
      r.overlay = overlay;
      r.dialog = dialog;
      r.slot = slot;
      r.spinner = spinner;
      r.closeButton = close;

      r.onKeydown = function (event) {
        if (run !== r || r.phase === 'closing') return;
        if (event.key === 'Escape') {
          event.preventDefault();
          event.stopPropagation();
          exitRun(r);
        }
      };
      r.onFocusin = function (event) {
        if (run !== r || r.phase === 'closing') return;
        if (!r.overlay.contains(event.target)) close.focus();
      };
      r.onMessage = function (event) {
        onMessage(r, event);
      };
      window.addEventListener('keydown', r.onKeydown, true);
      window.addEventListener('focusin', r.onFocusin, true);
      window.addEventListener('message', r.onMessage);
      close.focus();
    }

    /**
     * Focus trap: a focusable, invisible element at each end of the dialog. Tabbing onto the
     * end one (past the frame's last control) wraps to Close; Shift+Tab onto the start one
     * wraps into the frame, on its last control.
     */
    function sentinel(r, where) {
      var s = document.createElement('span');
      s.tabIndex = 0;
      s.setAttribute('data-qrlink', 'sentinel-' + where);
      s.setAttribute('aria-hidden', 'true');
      css(s, { position: 'absolute', width: '1px', height: '1px', overflow: 'hidden', opacity: '0' });
      s.addEventListener('focus', function () {
        if (run !== r) return;
        if (where === 'end' || !r.frame || r.phase !== 'live') {
          r.closeButton.focus();
        } else {
          r.frame.focus();
          post(r, { type: 'focus', at: 'last' });
        }
      });
      return s;
    }

    function check(r) {
      var init = { method: 'GET', mode: 'cors', credentials: 'omit', cache: 'no-store' };
      if (r.abort) init.signal = r.abort.signal;
      fetch(gw.base + 'embed.json', init).then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.json();
      }).then(function (body) {
        if (run !== r || r.phase !== 'checking') return;
        if (!body || body.allowed !== true) {
          console.error('qrlink: the gateway ' + gw.origin + ' does not allow ' + window.location.origin +
            ' to embed its link page; add ' + window.location.origin +
            ' to its QRLINK_ALLOWED_ORIGINS (or to QRLINK_FRAME_ANCESTORS, if that is set).');
          finish(r, { code: 'embed/forbidden', message: 'This site may not embed the link page of ' + gw.origin + '.', retryable: false });
          return;
        }
        frame(r);
      }, function (err) {
        if (run !== r || r.phase !== 'checking') return;
        console.error('qrlink: cannot reach ' + gw.base + 'embed.json (' + err + '); is `gateway` right and the gateway up?');
        finish(r, { code: 'embed/unreachable', message: 'The link service at ' + gw.origin + ' cannot be reached.', retryable: true });
      });
    }

    function frame(r) {
      var url = new URL(gw.base);
      url.searchParams.set('embed', '1');
      url.searchParams.set('origin', window.location.origin);
      if (provider) url.searchParams.set('provider', provider);
      var f = document.createElement('iframe');
      f.src = url.href;
      f.title = 'Link an account';
      f.setAttribute('data-qrlink', 'frame');
      // No top navigation, no popups: the page only needs its scripts, its origin and a form.
      f.setAttribute('sandbox', 'allow-scripts allow-same-origin allow-forms');
      f.setAttribute('referrerpolicy', 'no-referrer');
      css(f, { border: '0', width: '100%', height: '100%', flex: '1', display: 'block', background: 'transparent' });
      r.phase = 'loading';
      r.frame = f;
      r.slot.append(f);
      r.readyTimer = window.setTimeout(function () {
        r.readyTimer = 0;
        if (run !== r || r.phase !== 'loading') return;
        console.error('qrlink: the link page of ' + gw.origin + ' did not answer within ' + READY_TIMEOUT_MS / 1000 +
          ' s; check that ' + window.location.origin + ' may embed it (QRLINK_ALLOWED_ORIGINS or QRLINK_FRAME_ANCESTORS) and that the gateway is up.');
        finish(r, { code: 'embed/unavailable', message: 'The link page did not load.', retryable: true });
      }, READY_TIMEOUT_MS);
    }

    function post(r, message) {
      if (!r.frame || !r.frame.contentWindow) return;
      try {
        r.frame.contentWindow.postMessage(Object.assign({ source: 'qrlink-host', version: 1 }, message), gw.origin);
      } catch (err) {
        // The frame is going away.
      }
    }

    function onMessage(r, event) {
      if (run !== r || !r.frame || event.source !== r.frame.contentWindow || event.origin !== gw.origin) return;
      var m = event.data;
      if (!m || typeof m !== 'object' || m.source !== 'qrlink' || m.version !== 1 || typeof m.type !== 'string') return;
      if (typeof m.session === 'string' && m.session) r.session = m.session;
      switch (m.type) {
        case 'ready':
          if (r.phase !== 'loading') return;
          r.phase = 'live';
          window.clearTimeout(r.readyTimer);
          r.readyTimer = 0;
          if (r.spinner) r.spinner.remove();
          post(r, { type: 'start', token: token, provider: provider });
          break;
        case 'qr':
          r.error = null;
          emit(r, 'qr', { rotation: m.rotation, expires_at: m.expires_at });
          break;
        case 'checkpoint':
          r.error = null;
          emit(r, 'checkpoint', { kind: m.kind });
          break;
        case 'resumed':
          emit(r, 'resumed', { phase: m.phase });
          break;
        case 'account':
          // Also while closing: linked just as the person closed the modal is still linked.
          if (r.phase !== 'live' && r.phase !== 'closing') return;
          r.error = null;
          emit(r, 'success', { account: m.account });
          call('onSuccess', [m.account, { result: m.result || null, state: m.state || null, session: r.session, provider: m.provider || provider }]);
          // The attempt is over: nothing to cancel, the modal closes at once.
          if (run === r) finish(r, null);
          break;
        case 'timeout':
        case 'error': {
          var error = m.type === 'timeout'
            ? { code: 'provider/timeout', message: 'Nobody scanned the code in time.', retryable: true, rotations: m.rotations }
            : { code: m.code, message: m.message, retryable: m.retryable === true, detail: m.detail, req_id: m.req_id };
          r.error = error;
          emit(r, 'error', { error: error });
          break;
        }
        case 'exited':
          if (r.phase === 'closing') finish(r, r.error);
          break;
        case 'close':
          exitRun(r);
          break;
        default:
          // Unknown messages are ignored: a newer page may say more.
          break;
      }
    }

    /** Esc, Close, exit(): hide at once, let the page cancel, then take the frame down. */
    function exitRun(r) {
      if (run !== r || r.phase === 'closing') return;
      if (r.phase !== 'live') {
        finish(r, r.error);
        return;
      }
      r.phase = 'closing';
      css(r.overlay, { display: 'none' });
      release(r);
      post(r, { type: 'exit' });
      r.exitTimer = window.setTimeout(function () {
        r.exitTimer = 0;
        if (run === r) finish(r, r.error);
      }, EXIT_ACK_MS);
    }

    /** Gives the page behind back: inert, scrolling and focus as they were. Idempotent. */
    function release(r) {
      if (r.released) return;
      r.released = true;
      r.inerted.forEach(function (entry) {
        if (entry[1]) entry[0].setAttribute('inert', entry[2]);
        else entry[0].removeAttribute('inert');
      });
      r.inerted = [];
      var root = document.documentElement;
      if (r.rootOverflow[0]) root.style.setProperty('overflow', r.rootOverflow[0], r.rootOverflow[1]);
      else root.style.removeProperty('overflow');
      var back = r.returnFocus;
      if (back && typeof back.focus === 'function' && back.isConnected && back !== document.body) {
        try {
          back.focus();
        } catch (err) {
          // An element that cannot take focus any more.
        }
      }
    }

    /** Takes everything of this open() down, then onEvent('exit') and onExit, once. */
    function finish(r, error) {
      if (run !== r) return;
      run = null;
      window.removeEventListener('keydown', r.onKeydown, true);
      window.removeEventListener('focusin', r.onFocusin, true);
      window.removeEventListener('message', r.onMessage);
      window.clearTimeout(r.readyTimer);
      window.clearTimeout(r.exitTimer);
      if (r.abort) r.abort.abort();
      release(r);
      r.overlay.remove();
      r.frame = null;
      emit(r, 'exit', { error: error });
      call('onExit', [error, { session: r.session }]);
    }

    return {
      open: open,
      /** Closes the modal as the Close button does (onExit follows); nothing when closed. */
      exit: function () {
        if (run) exitRun(run);
      },
      destroy: function () {
        if (destroyed) return;
        destroyed = true;
        var r = run;
        if (!r) return;
        // The page cancels its attempt on the way out (embedded mode); say it too, in case
        // the message still gets there first.
        post(r, { type: 'exit' });
        finish(r, r.error);
      },
    };
  }

  var api = Object.freeze({ create: create, version: 1 });
  if (typeof QRLINK_MODULE_URL === 'undefined') globalThis.QrLink = api;
  return api;
})();
