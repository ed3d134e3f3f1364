/*
 * qrlink link page: pick an app, scan a QR code, get the account linked.
 *
 * Plain script, no build step, no external resources. It runs under the gateway's CSP
 * (default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;
 * connect-src 'self'; frame-ancestors from the configuration), so: no inline scripts, no
 * style attributes; dynamic values go through classes, `hidden`, and CSS custom properties
 * set with el.style.setProperty (CSSOM, which CSP allows).
 *
 * URL parameters
 *   provider  start linking this app at once (`/?provider=whatsapp`); otherwise show the picker
 *   token     connect token, passed on to the WebSocket as `?token=`
 *   origin    the embedding page's origin (`https://app.example.com`); see "Messages to the host"
 *   embed     `1`: embedded mode, framed by /qrlink.js (needs `origin`); see "Embedded mode"
 *
 * Embedded mode (`?embed=1&origin=…`, and framed; what /qrlink.js shows in its modal)
 *   - Nothing starts until the host says `start` (it brings the connect token, so the token
 *     stays out of the frame's URL); the page says `ready` first, once config.json is in.
 *   - With `provider` in the URL there is no picker and no "Choose another app"; without it,
 *     the picker as usual. "Link another account" is hidden (the host closes the modal on
 *     success), and so is the demo banner's dashboard link (the banner itself stays).
 *   - Choosing an app replaces the frame's history entry instead of adding one (the host's
 *     Back button would otherwise step through the frame).
 *   - No resume after a reload, and leaving the page (the host closing or destroying the
 *     modal, which removes the frame) cancels the attempt instead of detaching it: nothing
 *     would come back for it. Reconnecting after a network drop works as usual.
 *   - Esc anywhere in the page asks the host to close the modal (`close`).
 *   - html.is-embedded: style.css fits the card to a 360–480 px frame.
 *
 * Talks to (all same origin, resolved relative to this page so a path prefix works):
 *   GET  config.json                      protocol, demo flag, simulator path, providers,
 *                                         resume_grace_secs
 *   WS   ws/link/{provider}[?token=…]     protocol v1 frames (DESIGN.md section 4)
 *   WS   ws/link/{provider}?resume=…      v1.1: re-attach to a detached attempt (section 8)
 *   POST {simulator}/scan/{intent_id}     demo mode only: "Simulate scan"
 *
 * State machine. main#app carries data-state, one of
 *   idle → connecting → qr ⇄ qr (rotation) → checkpoint → account
 *                                          ↘ timeout | error | disconnected | expired
 *   qr | checkpoint → reconnecting → (the replayed qr or checkpoint) | expired | elsewhere
 * and data-provider (the app being linked). render(state) shows the section whose
 * data-view lists the state and nothing else (while reconnecting, also the view of the
 * state it came from, dimmed); the enter*() functions fill a view's content and then call
 * render. Every socket handler first checks that its attempt and socket are still the
 * current ones, so a late frame from an old socket can never repaint the page.
 *
 * Resume (protocol v1.1). `qr` and `checkpoint` frames carry `resume`, a token that
 * re-attaches to the same attempt for `resume_grace_secs` after its socket is lost. The page
 * keeps it in sessionStorage (RESUME_KEY: token, provider, session, when it was stored, when
 * the socket dropped) and:
 *   - when the socket closes without a terminal frame (1006, 1012, a network error, anything
 *     but the final codes below), shows "reconnecting" (the last code stays, dimmed and not
 *     scannable; a checkpoint form stays, its button disabled) and reconnects with
 *     ?resume= after about 0.25, 0.5, 1, 2 s and then every 5 s, until the grace since the
 *     drop has passed ("expired"). The gateway first replays the last qr or checkpoint frame
 *     (`replay: true`); a replayed qr whose expiry has passed is never shown as scannable.
 *   - after a reload (or a return from the back/forward cache) within the grace, resumes
 *     straight away, without the picker. Leaving the page does not cancel: the attempt
 *     detaches, so a reload finds it again.
 *   - close 4000: another tab or window resumed this attempt; say so calmly, no reconnect.
 *   - `error` `session/expired`: the attempt is gone; the token is forgotten, "expired".
 *   - the token is forgotten on every terminal frame, on cancel and when the grace passes.
 * Close codes 1003, 1007, 1008 and 1009 are final: reconnecting would only repeat them.
 *
 * DOM hooks (stable, used by the browser tests)
 *   main#app[data-state][data-provider], and [data-ready="true"] once config.json is applied
 *     and the page has started from its URL
 *   #picker: button[data-provider="whatsapp|google_messages|telegram"]
 *   #link (connecting, qr): #qr (role=img, holds exactly one <svg> once a code is shown, none
 *     in any other state), #rotation, #countdown, #simulate-scan (demo only),
 *     #demo-twofa-hint (Telegram in demo)
 *   #checkpoint: #twofa-form (aria-busy="true" while checking), #twofa-code, #twofa-submit,
 *     #twofa-demo
 *   #success: #account-name, #account-provider, #account-id, #link-another
 *   #error (timeout, error, disconnected, expired): #error-message, #error-hint, #retry (hidden
 *     when not retryable; "Start again" when expired), #error-details
 *   #reconnecting (reconnecting): #reconnecting-text; main#app[data-reconnect-from="qr|checkpoint"]
 *     names the view kept on screen behind it (absent after a reload: nothing to keep);
 *     #qr.is-paused while the code is dimmed for it
 *   #elsewhere (elsewhere, after close 4000): #continue-here (resumes here, taking it back)
 *   #qr[data-expired="true"]: the code shown (or replayed) has expired and must not be
 *     scanned; #expiry-label then says "Expired, a new code is on its way"
 *   main#app[data-resumes]: how many times this page re-attached (a replayed frame arrived)
 *   #status (role=status, aria-live=polite): one sentence per state change
 *   #demo-banner, #choose-another
 *
 * What the page assumes of the gateway
 *   - No WebSocket subprotocol is requested (Chrome fails a handshake whose requested
 *     subprotocol the server does not echo).
 *   - config.json providers may carry `max_rotations` (or `qr_rotations`): then the page says
 *     "Code 2 of up to 5"; without it, "Code 2".
 *   - A QR SVG whose viewBox counts modules (e.g. "0 0 37 37", quiet zone included) is drawn
 *     at a whole number of device pixels per module; a viewBox in pixels is just scaled.
 *
 * Messages to the host (window.opener, or window.parent when framed)
 *   On each terminal frame the page posts one message:
 *     {source:"qrlink", version:1, type:"account", provider, session, account, state, result}
 *   `result` is the result token (connect tokens on): a JWT the host passes to its backend,
 *   which verifies it (README, "Tell your backend") instead of trusting this message.
 *     {source:"qrlink", version:1, type:"timeout", provider, session, rotations}
 *     {source:"qrlink", version:1, type:"error",   provider, session, code, message,
 *      retryable, detail, req_id}
 *   The target origin: a page that opened us can be any site, so nothing it should not see
 *   goes to "*".
 *   - With `?origin=https://host.example` (a valid http(s) origin) the message is posted with
 *     that targetOrigin, so the browser delivers it only to that origin, and it carries
 *     everything: the full upstream `account` object, `state` (the connect token's subject),
 *     `result`, and the error's `detail` and `req_id`.
 *   - Without it, the targetOrigin is "*" and the message is reduced to what is not secret:
 *     `account` is only {id, provider, name}; `state`, `result`, `detail` and `req_id` are
 *     left out (a result token is a credential for one use: only the named host gets it).
 *   Hosts should check event.data.source === "qrlink" and, when they can, event.origin.
 *   (Who may frame this page is the CSP's frame-ancestors: QRLINK_FRAME_ANCESTORS, or 'self'
 *   and QRLINK_ALLOWED_ORIGINS; a popup opened by window.open works from any origin.)
 *
 *   In embedded mode only (so to the framing host named by `?origin=`, never to "*" nor to a
 *   popup's opener), the page also says, all with {source:"qrlink", version:1, provider,
 *   session}:
 *     {type:"ready", demo, token_required}  embedded mode: loaded, waiting for `start`
 *     {type:"qr", rotation, expires_at}      a new code is on screen (never its contents, and
 *                                            no resume token); not for a replay
 *     {type:"checkpoint", kind}              the app asks for more: kind is the checkpoint's
 *                                            type ("2FA", "OTP", …)
 *     {type:"resumed", phase}                re-attached after a drop ("qr" | "checkpoint")
 *     {type:"exited"}                        embedded mode: the answer to `exit`, after the
 *                                            attempt was cancelled
 *     {type:"close"}                         embedded mode: Esc pressed in the page
 *   What the host may say (embedded mode; accepted only from window.parent at `origin`):
 *     {source:"qrlink-host", version:1, type:"start", token}  begin (the connect token, or null)
 *     {source:"qrlink-host", version:1, type:"exit"}          cancel the attempt, say `exited`
 *     {source:"qrlink-host", version:1, type:"focus", at}     focus the "first" or "last"
 *                                                              control (the host's focus trap)
 *
 * The QR SVG comes from the gateway; it is still parsed as image/svg+xml with DOMParser,
 * reduced to a short allowlist of elements and attributes, then imported: never innerHTML.
 */
(function () {
  'use strict';

  /** What the page says about each app; config.json decides which apps exist. */
  const PROVIDERS = {
    whatsapp: {
      name: 'WhatsApp',
      steps: [
        ['Open ', { b: 'WhatsApp' }, ' on your phone.'],
        ['Tap ', { b: 'Settings' }, ' (iPhone) or the ', { b: '⋮\u00a0menu' }, ' (Android), then ', { b: 'Linked devices' }, '.'],
        ['Tap ', { b: 'Link a device' }, ' and point your phone at this code.'],
      ],
    },
    google_messages: {
      name: 'Google Messages',
      steps: [
        ['Open ', { b: 'Messages' }, ' on your phone.'],
        ['Tap your ', { b: 'profile picture' }, ' or the ', { b: '⋮\u00a0menu' }, ', then ', { b: 'Device pairing' }, '.'],
        ['Tap ', { b: 'QR code scanner' }, ' and point your phone at this code.'],
      ],
    },
    telegram: {
      name: 'Telegram',
      steps: [
        ['Open ', { b: 'Telegram' }, ' on your phone.'],
        ['Go to ', { b: 'Settings' }, ' → ', { b: 'Devices' }, '.'],
        ['Tap ', { b: 'Link Desktop Device' }, ' and point your phone at this code.'],
      ],
      twofaHelp: 'It is the password you set in Telegram → Settings → Privacy and Security → Two-Step Verification.',
    },
  };

  /** Used when config.json cannot be read: the page still works against a default gateway. */
  const FALLBACK_CONFIG = {
    protocol: 1,
    demo: false,
    token_required: false,
    simulator: null,
    demo_twofa_password: null,
    providers: [
      { id: 'whatsapp', name: 'WhatsApp', qr_ttl_secs: 60 },
      { id: 'google_messages', name: 'Google Messages', qr_ttl_secs: 60 },
      { id: 'telegram', name: 'Telegram', qr_ttl_secs: 30 },
    ],
  };

  /**
   * Per error code: [sentence, what to do next, title?, Retry label?]; "{app}" is the app's
   * name. Sentences avoid jargon; the code itself goes under "Technical details" for support.
   * Whether Retry shows is the frame's `retryable`, not this table.
   */
  const ASK_OWNER = 'Please tell whoever sent you this link; there is nothing you can fix from here.';
  const SUPPORT = 'Try again. If it keeps happening, contact support with the technical details below.';
  const ERRORS = {
    'api/proxy_auth_error': ['The connection proxy refused its username or password.', 'The proxy settings for this link need fixing. ' + ASK_OWNER],
    'api/proxy_error': ['The connection proxy is not working right now.', 'Try again in a moment. If it keeps happening, the proxy needs attention.'],
    'api/proxy_timeout': ['The connection proxy did not answer in time.', 'Try again in a moment.'],
    'api/already_exists': ['This {app} account is already linked.', 'There is nothing more to do. To link it again, remove the existing link first.', 'Already linked'],
    'api/account_restricted': ['This account cannot be linked.', 'The linking service does not allow it for this account. ' + ASK_OWNER],
    'api/missing_authorization': ['This link service is not set up correctly: its API key is missing.', ASK_OWNER],
    'api/expired_authorization': ['This link service is not set up correctly: its API key is invalid or expired.', ASK_OWNER],
    'api/inactive_subscription': ['This link service’s subscription is not active.', ASK_OWNER],
    'api/insufficient_permissions': ['This link service is not allowed to link accounts.', ASK_OWNER],
    'api/invalid_parameters': ['The link request was rejected as invalid.', SUPPORT],
    'provider/invalid_parameters': ['{app} rejected the link request as invalid.', SUPPORT],
    'provider/invalid_checkpoint_code': ['That password or code is not correct.', 'Start again: scan a new code, then enter your {app} password or code carefully. Passwords are case-sensitive.', 'Wrong password', 'Start again'],
    'api/resource_not_found': ['This link attempt has expired.', 'Start again to get a fresh code.'],
    'api/too_many_requests': ['There have been too many link attempts.', 'Wait a minute, then try again.'],
    'provider/too_many_requests': ['{app} has seen too many link attempts.', 'Wait a few minutes, then try again.'],
    'api/internal_error': ['The linking service had a temporary problem.', 'Try again in a moment.'],
    'provider/server_error': ['{app} had a temporary problem.', 'Try again in a moment.'],
    'request/unknown_provider': ['{app} cannot be linked here.', 'Choose another app.'],
    'request/unauthorized': ['This link is not valid, or it has expired.', 'Ask for a new link.', 'Link not valid'],
    'request/invalid_message': ['This page and the link service did not understand each other.', 'Reload the page and try again.'],
    'gateway/overloaded': ['The link service is busy right now.', 'Try again in a minute.', 'Service busy'],
    'gateway/shutting_down': ['The link service is restarting.', 'Try again in a few seconds.', 'Service restarting'],
    'gateway/upstream_unavailable': ['The linking service cannot be reached right now.', 'Try again in a moment.'],
    'gateway/upstream_invalid': ['The linking service sent an answer this page could not use.', SUPPORT],
    'gateway/unsupported_step': ['{app} asked for a step this page cannot handle.', 'Try again. If it keeps happening, this account has to be linked another way.'],
    'session/cancelled': ['This link attempt was cancelled.', 'Start again when you are ready.', 'Cancelled'],
    'session/expired': ['This link attempt has expired.', 'Start again to get a new code.', 'Link attempt expired', 'Start again'],
    'request/rate_limited': ['There have been too many link attempts from this network.', 'Wait a minute, then try again.'],
  };

  /** Elements and attributes a QR SVG may keep; everything else is dropped before import. */
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const SVG_ELEMENTS = new Set(['svg', 'g', 'path', 'rect', 'polygon']);
  const SVG_ATTRIBUTES = new Set([
    'viewBox', 'width', 'height', 'version', 'shape-rendering', 'preserveAspectRatio',
    'fill', 'fill-rule', 'stroke', 'stroke-width', 'd', 'x', 'y', 'points', 'transform',
  ]);
  /** A QR is at most 177 modules plus the quiet zone; bigger viewBoxes are in pixels, not modules. */
  const MAX_MODULE_VIEWBOX = 200;
  /** A QR SVG is a few KiB; refuse anything absurd rather than parse it. */
  const MAX_SVG_CHARS = 512 * 1024;

  /** How long before "Still preparing…" is said: Start Auth Intent usually takes about a second. */
  const SLOW_START_MS = 8000;
  /** The cross-fade length between two codes; keep in sync with --fade in style.css. */
  const FADE_MS = 220;
  const TICK_MS = 250;

  /** sessionStorage key of the resume record (see "Resume" at the top of this file). */
  const RESUME_KEY = 'qrlink.resume';
  /** Used when config.json does not say (an older gateway, or config.json unreadable). */
  const DEFAULT_RESUME_GRACE_SECS = 120;
  /** Reconnect delays after a drop; then RECONNECT_EVERY_MS until the grace has passed. */
  const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000];
  const RECONNECT_EVERY_MS = 5000;
  /**
   * ±15 % on each delay: after a gateway restart (1012) every page reconnects at once, and
   * the jitter spreads them out.
   */
  const RECONNECT_JITTER = 0.15;
  /** A resume socket that has not opened by then is given up and the next one tried. */
  const RECONNECT_OPEN_TIMEOUT_MS = 10000;
  /** Another tab or window resumed this attempt (protocol v1.1). */
  const CLOSE_RESUMED_ELSEWHERE = 4000;
  /**
   * Closes that reconnecting cannot help: our own protocol errors (1003, 1007, 1009) and
   * policy (1008: bad token, unknown provider, or a resume token the gateway refused).
   */
  const FINAL_CLOSE_CODES = new Set([1003, 1007, 1008, 1009]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: $('app'),
    title: $('title'),
    headerIcon: $('header-icon'),
    banner: $('demo-banner'),
    providerList: $('provider-list'),
    pickerNote: $('picker-note'),
    qr: $('qr'),
    meterFill: $('meter-fill'),
    rotation: $('rotation'),
    countdown: $('countdown'),
    expiryLabel: $('expiry-label'),
    simulate: $('simulate-scan'),
    steps: $('steps'),
    demoTwofaHint: $('demo-twofa-hint'),
    checkpointIntro: $('checkpoint-intro'),
    twofaForm: $('twofa-form'),
    twofaLabel: $('twofa-label'),
    twofaCode: $('twofa-code'),
    twofaHelp: $('twofa-help'),
    twofaDemo: $('twofa-demo'),
    twofaInvalid: $('twofa-invalid'),
    twofaSubmit: $('twofa-submit'),
    accountName: $('account-name'),
    accountProvider: $('account-provider'),
    accountIdRow: $('account-id-row'),
    accountId: $('account-id'),
    linkAnother: $('link-another'),
    successNext: $('success-next'),
    errorMessage: $('error-message'),
    errorHint: $('error-hint'),
    errorDetails: $('error-details'),
    errorFacts: $('error-facts'),
    retry: $('retry'),
    reconnecting: $('reconnecting'),
    reconnectingText: $('reconnecting-text'),
    elsewhereMessage: $('elsewhere-message'),
    continueHere: $('continue-here'),
    status: $('status'),
    chooseAnother: $('choose-another'),
    chooseAnotherNav: $('choose-another').parentElement,
    views: Array.from(document.querySelectorAll('[data-view]')),
  };

  const params = new URLSearchParams(window.location.search);
  /** The connect token: from the URL, or in embedded mode from the host's `start` message. */
  let token = params.get('token');
  const hostOrigin = parseOrigin(params.get('origin'));
  /** Embedded mode: framed by qrlink.js (see "Embedded mode" at the top of this file). */
  const embedded = params.get('embed') === '1' && hostOrigin !== null && window.parent !== window;
  /** In embedded mode, the provider the host asked for: then there is no picker to go back to. */
  const fixedProvider = embedded ? params.get('provider') : null;
  const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)');

  let config = FALLBACK_CONFIG;
  let state = 'idle';
  /** The app of the current or last attempt; Retry starts it again. */
  let provider = null;
  /** The current link attempt (one WebSocket at a time; a resume opens the next), or null. */
  let attempt = null;
  let attemptCount = 0;
  /** While reconnecting: the state whose view stays on screen, dimmed ('qr', 'checkpoint'), or null. */
  let reconnectFrom = null;
  /** Re-attachments that worked in this page (main#app[data-resumes]). */
  let resumeCount = 0;
  /** Embedded mode: whether the host's `start` has arrived (the page waits for it). */
  let embedStarted = false;
  /** The session of the current or last attempt, for the `exited` message. */
  let lastSession = null;
  /** After close 4000: what "Continue here" resumes ({provider, token, session, phase}). */
  let elsewhere = null;

  // ---------------------------------------------------------------- rendering

  /** Shows the view for `next`, sets data-state, and moves focus when the old focus vanished. */
  function render(next, focusTarget) {
    state = next;
    ui.app.dataset.state = next;
    const shown = [next];
    if (next === 'reconnecting' && reconnectFrom) {
      shown.push(reconnectFrom);
      ui.app.dataset.reconnectFrom = reconnectFrom;
    } else {
      delete ui.app.dataset.reconnectFrom;
      ui.qr.classList.remove('is-paused');
    }
    for (const view of ui.views) {
      view.hidden = !view.dataset.view.split(' ').some((v) => shown.includes(v));
    }
    // On the picker it is where you are; on success "Link another account" says it better.
    ui.chooseAnotherNav.hidden = next === 'idle' || next === 'account' || fixedProvider !== null;
    ui.simulate.hidden = !(next === 'qr' && config.demo && config.simulator && ui.qr.dataset.expired !== 'true');
    const active = document.activeElement;
    const focusLost = !active || active === document.body || active.closest('[hidden]') !== null;
    if (focusTarget || focusLost) {
      (focusTarget || ui.title).focus({ preventScroll: next === 'idle' });
    }
  }

  function setTitle(text) {
    ui.title.textContent = text;
    document.title = text + ' — qrlink';
  }

  /** One sentence per state change for screen readers; also visible under the card. */
  function setStatus(text) {
    ui.status.textContent = text;
  }

  function setProvider(p) {
    provider = p;
    if (p) {
      ui.app.dataset.provider = p.id;
    } else {
      delete ui.app.dataset.provider;
    }
    const icon = p && PROVIDERS[p.id] ? 'icon-' + p.id : 'icon-link';
    ui.headerIcon.setAttribute('href', '#' + icon);
    for (const label of document.querySelectorAll('.provider-label')) {
      label.textContent = p ? p.name : '';
    }
  }

  // ---------------------------------------------------------------- views

  function enterIdle(note) {
    stopAttempt();
    elsewhere = null;
    setProvider(null);
    clearQr();
    setTitle('Link an account');
    setStatus(note || '');
    render('idle');
  }

  function enterConnecting(p) {
    fillLinkView(p);
    setStatus('Preparing a secure code for ' + p.name + '…');
    render('connecting');
  }

  /** The QR view for `p`, with no code yet: title, steps, an empty box and a full meter. */
  function fillLinkView(p) {
    setProvider(p);
    clearQr();
    setTitle('Link ' + p.name);
    fillSteps(p);
    ui.rotation.textContent = '';
    ui.countdown.textContent = '–:––';
    ui.expiryLabel.textContent = 'Expires in';
    ui.meterFill.style.setProperty('--fill', '1');
    ui.qr.setAttribute('aria-label', 'QR code for ' + p.name + ' is loading');
    const twofa = config.demo && config.demo_twofa_password && p.id === 'telegram';
    ui.demoTwofaHint.hidden = !twofa;
    if (twofa) {
      ui.demoTwofaHint.textContent = 'Demo: after the scan, Telegram asks for a two-step verification password. It is “' +
        config.demo_twofa_password + '”.';
    }
  }

  function fillSteps(p) {
    const known = PROVIDERS[p.id];
    const steps = known ? known.steps : [
      ['Open ', { b: p.name }, ' on your phone.'],
      ['Find its option to link a device, and point your phone at this code.'],
    ];
    ui.steps.replaceChildren(...steps.map((parts) => {
      const li = document.createElement('li');
      const text = document.createElement('span');
      for (const part of parts) {
        if (typeof part === 'string') {
          text.append(part);
        } else {
          const b = document.createElement('strong');
          b.textContent = part.b;
          text.append(b);
        }
      }
      li.append(text);
      return li;
    }));
  }

  /** A `qr` frame: swap the code in place, restart the countdown. */
  function showQr(a, frame) {
    const svg = parseQrSvg(frame.svg);
    if (!svg) {
      stopAttempt(); // nothing to scan: let the gateway stop polling upstream
      enterFailure('error', {
        code: 'client/bad_qr',
        title: 'Couldn’t show the code',
        message: 'The QR code could not be displayed.',
        hint: 'Try again. If it keeps happening, contact support.',
        retryable: true,
      });
      return;
    }
    const p = a.provider;
    const rotation = Number.isInteger(frame.rotation) && frame.rotation > 0 ? frame.rotation : (a.rotation || 0) + 1;
    const first = !a.rotation;
    const replay = frame.replay === true;
    // A replay repeats the last code exactly; how long it has left is best known from the
    // deadline this page computed when that code first arrived (same rotation), which no
    // clock difference between the gateway and this device can skew.
    const known = replay ? knownDeadlineMs(a, rotation) : null;
    const left = known !== null ? known : Date.parse(frame.expires_at) - Date.now();
    a.rotation = rotation;
    a.intentId = typeof frame.intent_id === 'string' ? frame.intent_id : null;
    a.scanning = false;

    const max = maxRotations(p);
    ui.rotation.textContent = 'Code ' + rotation + (max ? ' of up to ' + max : '');
    resetSimulate();
    if (replay && !(left > 0)) {
      // Replayed after its expiry: never put a dead code on screen. The gateway is already
      // asking for the next one, which arrives as an ordinary qr frame.
      stopCountdown(a);
      a.countdown = null;
      clearQr();
      markExpired(a);
      ui.meterFill.style.setProperty('--fill', '0');
      setStatus('Reconnected. That code has expired; a new code is on its way…');
      render('qr');
      return;
    }

    swapQr(svg);
    startCountdown(a, frame.expires_at, known);
    if (!replay) {
      tellHost({
        type: 'qr',
        provider: p.id,
        session: a.session,
        rotation: rotation,
        expires_at: typeof frame.expires_at === 'string' ? frame.expires_at : null,
      });
    }

    // The label is set once per code, not every second: a screen reader re-reads a changing label.
    ui.qr.setAttribute('aria-label', 'QR code ' + rotation + ' for ' + p.name + ', expires in ' +
      Math.max(1, Math.round((a.countdown.deadline - performance.now()) / 1000)) + ' seconds');
    setStatus(replay
      ? 'Reconnected. The code is ready again: scan it with ' + p.name + ' on your phone.'
      : first
        ? 'Code ready. Scan it with ' + p.name + ' on your phone.'
        : 'New code ready (code ' + rotation + '). The previous one no longer works.');
    render('qr');
  }

  /** Says the code on screen (or the one that would be) no longer works. */
  function markExpired(a) {
    ui.qr.dataset.expired = 'true';
    ui.expiryLabel.textContent = 'Expired, a new code is on its way';
    ui.countdown.textContent = '';
    ui.qr.setAttribute('aria-label', 'QR code ' + a.rotation + ' for ' + a.provider.name + ' has expired; a new code is on its way');
  }

  /** A `checkpoint` frame: the app wants a password or code after the scan. */
  function enterCheckpoint(a, frame) {
    stopCountdown(a);
    clearQr();
    const p = a.provider;
    const cp = frame.checkpoint && typeof frame.checkpoint === 'object' ? frame.checkpoint : {};
    const type = typeof cp.type === 'string' ? cp.type : '';
    const replay = frame.replay === true;
    const input = ui.twofaCode;
    // A replay asks the same question again after a reconnect: what was typed (or sent and
    // lost with the connection) stays, so it only takes Continue.
    const keep = replay && state === 'reconnecting' && reconnectFrom === 'checkpoint';
    if (!keep) input.value = '';
    input.readOnly = false;
    input.removeAttribute('aria-invalid');
    ui.twofaInvalid.hidden = true;
    ui.twofaForm.removeAttribute('aria-busy');
    ui.twofaSubmit.disabled = false;
    ui.twofaSubmit.textContent = 'Continue';
    const help = [];
    if (type === '2FA') {
      a.secret = true;
      setTitle('Enter your ' + p.name + ' password');
      ui.checkpointIntro.textContent = 'Scanned. ' + p.name +
        ' asks for your two-step verification password to finish linking.';
      ui.twofaLabel.textContent = 'Two-step verification password';
      input.type = 'password';
      input.autocomplete = 'off';
      input.removeAttribute('inputmode');
      ui.twofaInvalid.textContent = 'Enter the password first.';
      const known = PROVIDERS[p.id];
      help.push(known && known.twofaHelp ? known.twofaHelp : 'It is the password you chose for two-step verification.');
    } else {
      // OTP and the other checkpoint types are answered with a short code.
      a.secret = false;
      setTitle('Enter the code');
      ui.checkpointIntro.textContent = p.name + ' needs a code to finish linking. Check your phone or messages for it.';
      ui.twofaLabel.textContent = 'Code';
      input.type = 'text';
      input.autocomplete = 'one-time-code';
      input.setAttribute('inputmode', 'text');
      ui.twofaInvalid.textContent = 'Enter the code first.';
    }
    ui.twofaHelp.textContent = help.join(' ');
    ui.twofaHelp.hidden = help.length === 0;
    const demo = config.demo && config.demo_twofa_password;
    ui.twofaDemo.hidden = !demo;
    ui.twofaDemo.textContent = demo ? 'Demo mode: the simulator’s password is “' + config.demo_twofa_password + '”.' : '';
    // The same checkpoint again with an `error`: the last answer was wrong. Say so in the form
    // and let the person try again; the gateway ends the attempt after too many wrong answers.
    // A replay repeats the last frame; its `error` was about an answer given before the
    // connection was lost, possibly followed by another one that never arrived: ask afresh.
    const retry = !replay && frame.error && typeof frame.error === 'object';
    if (!replay) tellHost({ type: 'checkpoint', provider: p.id, session: a.session, kind: type || null });
    if (replay) {
      setStatus('Reconnected. ' + p.name + ' still needs one more step.');
    } else if (retry) {
      ui.twofaInvalid.textContent = (type === '2FA' ? 'That password is not correct.' : 'That code is not correct.') +
        ' Check it and try again.';
      ui.twofaInvalid.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', 'twofa-invalid twofa-help');
      setStatus(ui.twofaInvalid.textContent);
    } else {
      setStatus('Scanned. ' + p.name + ' needs one more step.');
    }
    render('checkpoint', input);
  }

  /** An `account` frame: linked. */
  function enterAccount(a, frame) {
    clearQr();
    const account = frame.account && typeof frame.account === 'object' ? frame.account : {};
    const p = providerById(typeof account.provider === 'string' ? account.provider.toLowerCase() : '') || a.provider;
    const name = nonEmpty(account.name) || nonEmpty(account.id) || 'Your account';
    setTitle(p.name + ' is linked');
    ui.accountName.textContent = name;
    ui.accountProvider.textContent = p.name;
    const showId = nonEmpty(account.id) && name !== account.id;
    ui.accountIdRow.hidden = !showId;
    ui.accountId.textContent = showId ? account.id : '';
    // Said to whoever is looking: a popup can be closed; a framed page belongs to its host.
    ui.successNext.textContent = window.parent !== window ? 'All done.' :
      window.opener ? 'All done. You can close this window.' : 'All done. You can close this page.';
    setStatus('Linked: ' + name + ' (' + p.name + ').');
    render('account', ui.title);
    notifyHost({
      type: 'account',
      provider: a.provider.id,
      session: a.session,
      account: account,
      state: typeof frame.state === 'string' ? frame.state : null,
      result: typeof frame.result === 'string' ? frame.result : null,
    });
  }

  /**
   * timeout, error and disconnected share one view: a sentence, a hint, Retry when it can help.
   * `info`: {code, title, message, hint, retryable, retryLabel, facts}
   */
  function enterFailure(kind, info) {
    clearQr();
    const p = provider;
    setTitle(info.title || (kind === 'timeout' ? 'The code expired' : 'Couldn’t link ' + (p ? p.name : 'the account')));
    ui.errorMessage.textContent = info.message;
    ui.errorHint.textContent = info.hint || '';
    ui.errorHint.hidden = !info.hint;
    ui.retry.hidden = !info.retryable;
    ui.retry.textContent = info.retryLabel || 'Try again';
    const facts = (info.facts || []).filter((f) => nonEmpty(f[1]));
    ui.errorFacts.replaceChildren(...facts.flatMap(([k, v]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      return [dt, dd];
    }));
    ui.errorDetails.hidden = facts.length === 0;
    ui.errorDetails.open = false;
    setStatus(info.message);
    render(kind, info.retryable ? ui.retry : ui.title);
  }

  /** The attempt can no longer be resumed: the gateway said so, or the grace ran out. */
  function expiredInfo(a, frame) {
    const info = frame
      ? errorInfo(a, frame)
      : {
          code: 'session/expired',
          title: 'Link attempt expired',
          message: 'The connection could not be restored in time, so this link attempt has ended.',
          hint: 'Start again to get a new code.',
          retryLabel: 'Start again',
          facts: [['Session', a.session]],
        };
    info.retryable = true;
    info.retryLabel = 'Start again';
    return info;
  }

  /** Close 4000: this attempt goes on in another tab or window, which resumed it. */
  function enterElsewhere(a) {
    clearQr();
    elsewhere = a.resume ? { provider: a.provider, token: a.resume, session: a.session, phase: a.phase } : null;
    setTitle('Continued in another window');
    ui.elsewhereMessage.textContent = 'This ' + a.provider.name + ' link attempt continued in another tab or window.';
    ui.continueHere.hidden = !elsewhere;
    setStatus('This link attempt continued in another tab or window.');
    render('elsewhere', ui.title);
  }

  function timeoutInfo(frame) {
    const n = Number.isInteger(frame.rotations) ? frame.rotations : null;
    return {
      message: 'Nobody scanned the code in time' + (n && n > 1 ? ' (' + n + ' codes were shown).' : '.'),
      hint: 'Get a new code when your phone is ready.',
      retryable: true,
      retryLabel: 'Show a new code',
    };
  }

  function errorInfo(a, frame) {
    const code = typeof frame.code === 'string' ? frame.code : '';
    const fill = (text) => text && text.replace(/\{app\}/g, a.provider.name);
    const known = Object.prototype.hasOwnProperty.call(ERRORS, code) ? ERRORS[code] : null;
    const info = known
      ? { message: fill(known[0]), hint: fill(known[1]), title: known[2], retryLabel: known[3] }
      : { message: nonEmpty(frame.message) || 'The link attempt failed.', hint: frame.retryable ? 'Try again in a moment.' : '' };
    info.code = code;
    info.retryable = frame.retryable === true;
    if (code === 'api/already_exists' && nonEmpty(frame.detail)) {
      info.hint = 'There is nothing more to do (existing account: ' + frame.detail + '). To link it again, remove the existing link first.';
    }
    info.facts = [
      ['Error code', code],
      ['Detail', typeof frame.detail === 'string' ? frame.detail : ''],
      ['Request', typeof frame.req_id === 'string' ? frame.req_id : ''],
      ['Session', a.session],
    ];
    return info;
  }

  /** The socket closed without a terminal frame, or never opened. */
  function disconnectedInfo(a, closeEvent) {
    const facts = [['Close code', String(closeEvent.code)], ['Session', a.session]];
    if (!a.opened) {
      return {
        title: 'Can’t reach the link service',
        message: 'This page could not connect to the link service.',
        hint: navigator.onLine === false
          ? 'You seem to be offline. Check your connection, then try again.'
          : 'Check your connection and try again. If it keeps happening, the service may be down.',
        retryable: true,
        facts: facts,
      };
    }
    switch (closeEvent.code) {
      case 1001:
      case 1012:
        return { title: 'Connection lost', message: 'The link service is restarting.', hint: 'Try again in a few seconds.', retryable: true, facts: facts };
      case 1008:
        return { title: 'Link not valid', message: 'The link service refused this link.', hint: 'Ask for a new link.', retryable: false, facts: facts };
      case 1013:
        return { title: 'Connection lost', message: 'The link service is busy right now.', hint: 'Try again in a minute.', retryable: true, facts: facts };
      default:
        return {
          title: 'Connection lost',
          message: 'The connection was lost before linking finished.',
          hint: 'The code that was on screen no longer works. Start again to get a new one.',
          retryable: true,
          facts: facts,
        };
    }
  }

  // ---------------------------------------------------------------- the link attempt

  function newAttempt(p) {
    return {
      id: ++attemptCount,
      provider: p,
      ws: null,
      session: null,
      /** Whether any of its sockets ever opened. */
      opened: false,
      done: false,
      rotation: 0,
      intentId: null,
      countdown: null,
      slowTimer: 0,
      /** The type of the last qr or checkpoint frame: what a resume comes back to. */
      phase: null,
      /** The resume token, once a frame carried one (protocol v1.1). */
      resume: null,
      /** The stored record this attempt was resumed from (after a reload), or null. */
      stored: null,
      /** While reconnecting: {droppedAt (epoch ms), deadline (performance.now ms), tries, timer, openTimer}. */
      reconnect: null,
    };
  }

  function start(p) {
    stopAttempt();
    elsewhere = null;
    const a = newAttempt(p);
    attempt = a;
    enterConnecting(p);
    a.slowTimer = window.setTimeout(() => {
      if (attempt === a && state === 'connecting') setStatus('Still preparing the code for ' + p.name + '…');
    }, SLOW_START_MS);
    openSocket(a, socketUrl(p.id));
  }

  /**
   * Resumes a detached attempt from its record ({token, provider, session, phase, rotation,
   * qr_deadline}): after a reload, a return from the back/forward cache, or "Continue here".
   * `leftMs` is what is left of the grace.
   */
  function resumeAttempt(p, record, droppedAt, leftMs) {
    stopAttempt();
    elsewhere = null;
    const a = newAttempt(p);
    a.resume = record.token;
    a.session = typeof record.session === 'string' ? record.session : null;
    a.phase = record.phase === 'checkpoint' ? 'checkpoint' : 'qr';
    a.rotation = Number.isInteger(record.rotation) ? record.rotation : 0;
    a.stored = record;
    a.reconnect = { droppedAt: droppedAt, deadline: performance.now() + leftMs, tries: 0, timer: 0, openTimer: 0 };
    attempt = a;
    // Written again at once: a reload during this reconnect must find it too.
    storeResume(a);
    fillLinkView(p);
    // Nothing of the old page is left to keep on screen; the QR box (empty, with its
    // spinner) keeps the layout of the code that is coming back.
    reconnectFrom = a.phase === 'qr' ? 'qr' : null;
    if (reconnectFrom === 'qr') {
      ui.expiryLabel.textContent = 'Reconnecting…';
      ui.countdown.textContent = '';
    }
    ui.reconnectingText.textContent = 'Picking up your ' + p.name + ' link attempt where you left it.';
    setStatus('Reconnecting to your ' + p.name + ' link attempt…');
    render('reconnecting');
    tryResume(a);
  }

  /** Opens one socket for the attempt; its frames and its close count while it is the current one. */
  function openSocket(a, url) {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      // Only a malformed URL throws here; treat it like a socket that never opened.
      socketLost(a, { code: 0 });
      return;
    }
    a.ws = ws;
    const current = () => attempt === a && a.ws === ws;
    ws.onopen = () => {
      if (current()) a.opened = true;
    };
    ws.onmessage = (event) => {
      if (current()) onFrame(a, event.data);
    };
    ws.onclose = (event) => {
      if (!current()) return;
      a.ws = null;
      if (a.done) {
        finish(a);
        return;
      }
      socketLost(a, event);
    };
    // onerror carries no detail and is always followed by onclose, which decides.
    ws.onerror = () => {};
  }

  /** The socket closed without a terminal frame, or never opened. */
  function socketLost(a, closeEvent) {
    if (a.reconnect) window.clearTimeout(a.reconnect.openTimer);
    if (closeEvent.code === CLOSE_RESUMED_ELSEWHERE) {
      finish(a);
      forgetResume();
      enterElsewhere(a);
      return;
    }
    if (a.resume && graceMs() > 0 && !FINAL_CLOSE_CODES.has(closeEvent.code)) {
      reconnectLater(a);
      return;
    }
    const wasResuming = a.reconnect !== null;
    finish(a);
    forgetResume();
    if (wasResuming) {
      // The gateway refused the resume without saying why in a frame (e.g. 1008): the
      // attempt cannot come back.
      enterFailure('expired', expiredInfo(a, null));
    } else {
      enterFailure('disconnected', disconnectedInfo(a, closeEvent));
    }
  }

  /** Schedules the next resume, or the end once the grace since the drop has passed. */
  function reconnectLater(a) {
    let r = a.reconnect;
    if (!r) {
      r = a.reconnect = { droppedAt: Date.now(), deadline: performance.now() + graceMs(), tries: 0, timer: 0, openTimer: 0 };
      storeResume(a);
      enterReconnecting(a);
    }
    window.clearTimeout(r.timer);
    const left = r.deadline - performance.now();
    const base = r.tries < RECONNECT_DELAYS_MS.length ? RECONNECT_DELAYS_MS[r.tries] : RECONNECT_EVERY_MS;
    const delay = Math.round(base * (1 - RECONNECT_JITTER + Math.random() * 2 * RECONNECT_JITTER));
    r.tries += 1;
    if (delay < left) {
      r.timer = window.setTimeout(() => tryResume(a), delay);
    } else {
      r.timer = window.setTimeout(() => expireAttempt(a), Math.max(0, left));
    }
  }

  /** One resume: a socket with ?resume=; the gateway answers with the replayed frame. */
  function tryResume(a) {
    const r = a.reconnect;
    if (attempt !== a || a.done || !r || a.ws) return;
    window.clearTimeout(r.timer);
    r.timer = 0;
    if (performance.now() >= r.deadline) {
      expireAttempt(a);
      return;
    }
    openSocket(a, resumeUrl(a.provider.id, a.resume));
    const ws = a.ws;
    if (!ws) return;
    // A socket that hangs while opening (a half-dead network) would stall the retries.
    r.openTimer = window.setTimeout(() => {
      if (a.ws === ws && ws.readyState === WebSocket.CONNECTING) ws.close();
    }, RECONNECT_OPEN_TIMEOUT_MS);
  }

  /** Reconnects at once when the network or the page comes back, instead of at the next try. */
  function retryResumeNow() {
    const a = attempt;
    if (a && a.reconnect && !a.ws && !a.done) tryResume(a);
  }

  /** The grace has passed without a resume: the gateway has ended the attempt. */
  function expireAttempt(a) {
    if (attempt !== a || a.done) return;
    const ws = a.ws;
    a.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000);
    }
    finish(a);
    forgetResume();
    enterFailure('expired', expiredInfo(a, null));
  }

  /**
   * The connection dropped mid-attempt: a calm state, not an error. The code stays on screen
   * but dimmed, so nobody scans it while its attempt is detached; a checkpoint form stays, its
   * button disabled until the gateway asks again.
   */
  function enterReconnecting(a) {
    reconnectFrom = state === 'qr' || state === 'checkpoint' ? state : null;
    stopCountdown(a);
    if (reconnectFrom === 'qr') {
      ui.qr.classList.add('is-paused');
      if (ui.qr.dataset.expired !== 'true') {
        ui.expiryLabel.textContent = 'Reconnecting…';
        ui.countdown.textContent = '';
        ui.qr.setAttribute('aria-label', 'QR code ' + a.rotation + ' for ' + a.provider.name +
          ' is on hold while the page reconnects; do not scan it now');
      }
      ui.reconnectingText.textContent = 'The connection was interrupted. The code comes back in a moment; keep this page open.';
    } else if (reconnectFrom === 'checkpoint') {
      ui.twofaCode.readOnly = false;
      ui.twofaForm.removeAttribute('aria-busy');
      ui.twofaSubmit.disabled = true;
      ui.twofaSubmit.textContent = 'Continue';
      ui.reconnectingText.textContent = 'The connection was interrupted. You can continue in a moment; keep this page open.';
    } else {
      ui.reconnectingText.textContent = 'The connection was interrupted. Keep this page open.';
    }
    setStatus('Connection lost. Reconnecting…');
    render('reconnecting');
  }

  function onFrame(a, data) {
    if (typeof data !== 'string' || a.done) return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (err) {
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    if (typeof frame.session === 'string') a.session = frame.session;
    if (a.session) lastSession = a.session;
    window.clearTimeout(a.slowTimer);
    if (a.reconnect) {
      // The first frame on a resumed socket: the attempt is attached again.
      window.clearTimeout(a.reconnect.timer);
      window.clearTimeout(a.reconnect.openTimer);
      a.reconnect = null;
      if (frame.replay === true) {
        resumeCount += 1;
        ui.app.dataset.resumes = String(resumeCount);
        tellHost({
          type: 'resumed',
          provider: a.provider.id,
          session: a.session,
          phase: frame.type === 'checkpoint' ? 'checkpoint' : 'qr',
        });
      }
    }
    if ((frame.type === 'qr' || frame.type === 'checkpoint') && typeof frame.resume === 'string' && frame.resume) {
      a.resume = frame.resume;
    }
    switch (frame.type) {
      case 'qr':
        a.phase = 'qr';
        showQr(a, frame);
        storeResume(a);
        break;
      case 'checkpoint':
        a.phase = 'checkpoint';
        enterCheckpoint(a, frame);
        storeResume(a);
        break;
      case 'account':
        finish(a);
        forgetResume();
        enterAccount(a, frame);
        break;
      case 'timeout':
        finish(a);
        forgetResume();
        enterFailure('timeout', timeoutInfo(frame));
        notifyHost({
          type: 'timeout',
          provider: a.provider.id,
          session: a.session,
          rotations: Number.isInteger(frame.rotations) ? frame.rotations : null,
        });
        break;
      case 'error':
        finish(a);
        forgetResume();
        if (frame.code === 'session/expired') {
          enterFailure('expired', expiredInfo(a, frame));
        } else {
          enterFailure('error', errorInfo(a, frame));
        }
        notifyHost({
          type: 'error',
          provider: a.provider.id,
          session: a.session,
          code: typeof frame.code === 'string' ? frame.code : null,
          message: typeof frame.message === 'string' ? frame.message : null,
          retryable: frame.retryable === true,
          detail: typeof frame.detail === 'string' ? frame.detail : null,
          req_id: typeof frame.req_id === 'string' ? frame.req_id : null,
        });
        break;
      default:
        // Unknown frame types are ignored, as the protocol asks of both sides.
        break;
    }
  }

  /** Marks the attempt over: timers stop, and a later close of its socket is not a "drop". */
  function finish(a) {
    a.done = true;
    stopCountdown(a);
    window.clearTimeout(a.slowTimer);
    if (a.reconnect) {
      window.clearTimeout(a.reconnect.timer);
      window.clearTimeout(a.reconnect.openTimer);
    }
  }

  /**
   * Leaves the current attempt and ends it: `cancel` on its socket, so the gateway stops
   * upstream work at once (a plain close would only detach it, protocol v1.1).
   */
  function stopAttempt() {
    const a = attempt;
    attempt = null;
    if (!a) return;
    const live = !a.done;
    finish(a);
    if (live) forgetResume();
    const ws = a.ws;
    const attached = ws !== null && ws.readyState === WebSocket.OPEN;
    // Detached (reconnecting), or its resume socket still opening: cancel it through a socket
    // of its own rather than leave it waiting out the grace.
    if (live && a.resume && !attached) abandon(a.provider.id, a.resume);
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (attached && live) {
      try {
        ws.send(JSON.stringify({ type: 'cancel' }));
      } catch (err) {
        // The socket is going away anyway.
      }
    }
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) {
      ws.close(1000);
    }
  }

  /**
   * Leaving the page (a reload, a link, the back/forward cache): a resumable attempt is
   * detached, not cancelled, so the page that comes next finds it again; the gateway aborts
   * the upstream poll all the same. Without a resume token it ends as before.
   */
  function detachForUnload() {
    const a = attempt;
    if (!a || a.done || !a.resume || graceMs() === 0) {
      stopAttempt();
      return;
    }
    attempt = null;
    if (!a.reconnect) a.reconnect = { droppedAt: Date.now(), deadline: 0, tries: 0, timer: 0, openTimer: 0 };
    storeResume(a);
    finish(a);
    const ws = a.ws;
    a.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000);
  }

  /** Cancels a detached attempt: resume it and send `cancel` at once; nothing is shown. */
  function abandon(providerId, resumeToken) {
    let ws;
    try {
      ws = new WebSocket(resumeUrl(providerId, resumeToken));
    } catch (err) {
      return;
    }
    const timer = window.setTimeout(() => ws.close(), RECONNECT_OPEN_TIMEOUT_MS);
    ws.onopen = () => {
      try {
        ws.send(JSON.stringify({ type: 'cancel' }));
      } catch (err) {
        // Then the attempt ends when its grace does.
      }
    };
    ws.onclose = () => window.clearTimeout(timer);
  }

  /** ws/link/{provider} on this page's host, without a query. */
  function linkUrl(providerId) {
    const url = new URL('ws/link/' + encodeURIComponent(providerId), window.location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = '';
    url.hash = '';
    return url;
  }

  function socketUrl(providerId) {
    const url = linkUrl(providerId);
    if (token) url.searchParams.set('token', token);
    return url.href;
  }

  /** The resume token is the credential: no connect token (it may have expired meanwhile). */
  function resumeUrl(providerId, resumeToken) {
    const url = linkUrl(providerId);
    url.searchParams.set('resume', resumeToken);
    return url.href;
  }

  // ---------------------------------------------------------------- resume record

  /** The gateway's grace for a detached attempt; 0 = resume disabled. */
  function graceMs() {
    const secs = config.resume_grace_secs;
    return (typeof secs === 'number' && Number.isFinite(secs) && secs >= 0 ? secs : DEFAULT_RESUME_GRACE_SECS) * 1000;
  }

  /**
   * Which link this page was opened with: a short hash of the connect token (never the token
   * itself), so a tab reused for someone else's link does not resume the previous attempt.
   */
  const linkId = (function () {
    if (!token) return '';
    let h = 0x811c9dc5;
    for (let i = 0; i < token.length; i++) {
      h ^= token.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h.toString(36);
  })();

  /** Writes the attempt's resume record (sessionStorage: this tab only, gone with it). */
  function storeResume(a) {
    if (attempt !== a && !(a.reconnect && a.reconnect.droppedAt)) return;
    if (!a.resume || a.done) return;
    const c = a.countdown;
    const known = a.stored && a.stored.session === a.session && a.stored.rotation === a.rotation &&
      Number.isFinite(a.stored.qr_deadline) ? a.stored.qr_deadline : null;
    const record = {
      v: 1,
      token: a.resume,
      provider: a.provider.id,
      session: a.session,
      link: linkId,
      stored_at: Date.now(),
      dropped_at: a.reconnect ? a.reconnect.droppedAt : null,
      phase: a.phase,
      rotation: a.rotation,
      // The code's end in this device's time, so a replay after a reload can tell whether it
      // still works without trusting the clocks to agree.
      qr_deadline: c && c.rotation === a.rotation ? Math.round(Date.now() + c.deadline - performance.now()) : known,
    };
    try {
      window.sessionStorage.setItem(RESUME_KEY, JSON.stringify(record));
    } catch (err) {
      // Storage disabled or full: resuming after a drop still works, after a reload not.
    }
  }

  function forgetResume() {
    try {
      window.sessionStorage.removeItem(RESUME_KEY);
    } catch (err) {
      // Nothing stored, then.
    }
  }

  /** The stored record and what is left of its grace, or null (then it is forgotten). */
  function readResume() {
    let record = null;
    try {
      record = JSON.parse(window.sessionStorage.getItem(RESUME_KEY) || 'null');
    } catch (err) {
      record = null;
    }
    if (!record) return null;
    const valid = record.v === 1 && nonEmpty(record.token) && nonEmpty(record.provider) && record.link === linkId;
    const droppedAt = Number.isFinite(record.dropped_at) ? record.dropped_at : record.stored_at;
    const left = graceMs() - (Date.now() - droppedAt);
    if (!valid || !Number.isFinite(left) || left <= 0) {
      forgetResume();
      return null;
    }
    return { record: record, droppedAt: droppedAt, left: Math.min(left, graceMs()) };
  }

  /** Milliseconds left on a replayed code, from this page's own deadline for it; null if unknown. */
  function knownDeadlineMs(a, rotation) {
    const c = a.countdown;
    if (c && c.rotation === rotation) return c.deadline - performance.now();
    const r = a.stored;
    if (r && r.session === a.session && r.rotation === rotation && Number.isFinite(r.qr_deadline)) {
      return r.qr_deadline - Date.now();
    }
    return null;
  }

  /**
   * At start: an attempt this tab left within the grace is resumed at once (its provider's
   * flow, no picker), unless the URL asks for another app.
   */
  function resumeFromStorage() {
    const found = readResume();
    if (!found) return false;
    const r = found.record;
    const asked = new URLSearchParams(window.location.search).get('provider');
    const p = providerById(r.provider);
    if (!p || graceMs() === 0 || (asked && asked !== r.provider)) {
      forgetResume();
      if (p && graceMs() > 0) abandon(p.id, r.token);
      return false;
    }
    resumeAttempt(p, r, found.droppedAt, found.left);
    return true;
  }

  // ---------------------------------------------------------------- countdown

  /**
   * Counts down to expires_at. The gateway's clock and this device's may disagree; when the
   * time left is impossible (negative, or far longer than the provider's QR lifetime) the
   * provider's lifetime from now is used instead. Deadlines use performance.now(), which
   * does not jump when the device's clock is changed.
   */
  function startCountdown(a, expiresAt, knownLeft) {
    stopCountdown(a);
    const ttl = ttlMs(a.provider);
    let left = Date.parse(expiresAt) - Date.now();
    if (Number.isFinite(knownLeft)) {
      left = knownLeft; // a replayed code: this page's own deadline for it (see showQr)
    } else if (!Number.isFinite(left) || left <= 0 || left > ttl * 2) {
      left = ttl;
    }
    const c = {
      rotation: a.rotation,
      deadline: performance.now() + left,
      // A code that arrived late shows a part-drained bar: the lifetime is the whole.
      total: Math.max(left, ttl),
      shown: null,
      expired: false,
      timer: 0,
    };
    a.countdown = c;
    ui.qr.classList.remove('is-stale');
    delete ui.qr.dataset.expired;
    ui.expiryLabel.textContent = 'Expires in';
    const tick = () => {
      const ms = Math.max(0, c.deadline - performance.now());
      const secs = Math.ceil(ms / 1000);
      if (secs !== c.shown) {
        c.shown = secs;
        ui.countdown.textContent = Math.floor(secs / 60) + ':' + String(secs % 60).padStart(2, '0');
        ui.app.classList.toggle('is-ending', secs <= 10);
      }
      ui.meterFill.style.setProperty('--fill', (ms / c.total).toFixed(4));
      if (ms === 0 && !c.expired) {
        // The gateway sends the next code (or a timeout) on its own; until then, say so
        // and dim this one so nobody scans a code that no longer works.
        c.expired = true;
        ui.qr.classList.add('is-stale');
        markExpired(a);
        setStatus('This code has expired. Getting a new one…');
      }
    };
    tick();
    c.timer = window.setInterval(tick, TICK_MS);
  }

  function stopCountdown(a) {
    if (a && a.countdown) {
      window.clearInterval(a.countdown.timer);
    }
    ui.app.classList.remove('is-ending');
  }

  function ttlMs(p) {
    const secs = Number(p.qr_ttl_secs);
    return (Number.isFinite(secs) && secs > 0 ? secs : 60) * 1000;
  }

  /** "of up to N" only when the gateway says how many codes a provider shows. */
  function maxRotations(p) {
    const n = Number(p.max_rotations || p.qr_rotations);
    return Number.isInteger(n) && n > 0 ? n : null;
  }

  // ---------------------------------------------------------------- the QR code

  /** Parses the gateway's SVG without ever handing the string to innerHTML. */
  function parseQrSvg(text) {
    if (typeof text !== 'string' || text.length === 0 || text.length > MAX_SVG_CHARS) return null;
    const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
    const root = doc.documentElement;
    if (!root || root.namespaceURI !== SVG_NS || root.localName !== 'svg') return null;
    if (doc.getElementsByTagNameNS('*', 'parsererror').length > 0) return null;
    sanitizeSvg(root);
    if (!root.hasAttribute('viewBox')) {
      const w = parseFloat(root.getAttribute('width'));
      const h = parseFloat(root.getAttribute('height'));
      if (!(w > 0 && h > 0)) return null;
      root.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    }
    root.removeAttribute('width');
    root.removeAttribute('height');
    root.setAttribute('shape-rendering', 'crispEdges');
    root.setAttribute('aria-hidden', 'true');
    root.setAttribute('focusable', 'false');
    return document.importNode(root, true);
  }

  function sanitizeSvg(node) {
    for (const attr of Array.from(node.attributes)) {
      const keep = SVG_ATTRIBUTES.has(attr.name) && !/url\s*\(/i.test(attr.value);
      if (!keep && attr.name !== 'xmlns') node.removeAttribute(attr.name);
    }
    for (const child of Array.from(node.children)) {
      if (child.namespaceURI === SVG_NS && SVG_ELEMENTS.has(child.localName) && child.localName !== 'svg') {
        sanitizeSvg(child);
      } else {
        child.remove();
      }
    }
  }

  /**
   * Puts the new code on top of the old one in the same grid cell and fades it in, then
   * drops the old one: the box never empties, so nothing flashes or jumps.
   */
  function swapQr(svg) {
    const layer = document.createElement('div');
    layer.className = 'qr-layer is-entering';
    layer.append(svg);
    const old = Array.from(ui.qr.querySelectorAll('.qr-layer:not(.is-leaving)'));
    ui.qr.querySelector('.qr-placeholder')?.remove();
    ui.qr.append(layer);
    snapQr(layer);
    void layer.offsetWidth; // commit the transparent start so the opacity change animates
    layer.classList.remove('is-entering');
    for (const o of old) {
      o.classList.add('is-leaving');
      window.setTimeout(() => o.remove(), reducedMotion.matches ? 0 : FADE_MS + 50);
    }
  }

  /** Removes any code from the page: a code that no longer works must not stay visible. */
  function clearQr() {
    ui.qr.classList.remove('is-stale', 'is-paused');
    delete ui.qr.dataset.expired;
    if (ui.qr.querySelector('.qr-placeholder') && !ui.qr.querySelector('.qr-layer')) return;
    const placeholder = document.createElement('div');
    placeholder.className = 'qr-placeholder';
    placeholder.setAttribute('aria-hidden', 'true');
    const spinner = document.createElement('span');
    spinner.className = 'spinner';
    placeholder.append(spinner);
    ui.qr.replaceChildren(placeholder);
  }

  /**
   * When the viewBox counts modules (one unit per module), sizes the SVG to a whole number of
   * device pixels per module, so every module has the same width and edges stay sharp.
   */
  function snapQr(layer) {
    const svg = layer.querySelector('svg');
    if (!svg) return;
    const vb = (svg.getAttribute('viewBox') || '').trim().split(/[\s,]+/).map(Number);
    const modules = vb[2];
    const box = ui.qr.clientWidth;
    if (!(modules > 0 && modules <= MAX_MODULE_VIEWBOX) || box === 0) {
      svg.style.removeProperty('--qr-px');
      return;
    }
    const dpr = window.devicePixelRatio || 1;
    const perModule = Math.floor((box * dpr) / modules);
    if (perModule < 1) return;
    svg.style.setProperty('--qr-px', (perModule * modules) / dpr + 'px');
  }

  // ---------------------------------------------------------------- demo: simulate scan

  function resetSimulate() {
    ui.simulate.disabled = false;
    ui.simulate.textContent = 'Simulate scan';
  }

  async function simulateScan() {
    const a = attempt;
    if (!a || !a.intentId || !config.simulator || a.scanning) return;
    a.scanning = true;
    ui.simulate.disabled = true;
    ui.simulate.textContent = 'Scanning…';
    let problem = null;
    try {
      const base = String(config.simulator).replace(/\/+$/, '');
      const url = new URL(base + '/scan/' + encodeURIComponent(a.intentId), window.location.href);
      const res = await fetch(url.href, { method: 'POST', credentials: 'same-origin', cache: 'no-store' });
      const body = await res.json().catch(() => null);
      if (!res.ok || !body || body.ok !== true) problem = 'the simulator answered ' + res.status;
    } catch (err) {
      problem = 'the simulator could not be reached';
    }
    if (attempt !== a || state !== 'qr') return;
    if (problem) {
      a.scanning = false;
      resetSimulate();
      setStatus('Simulated scan failed: ' + problem + '. The code may have just changed; try again.');
    } else {
      // Stays disabled: the gateway's next frame (checkpoint or account) moves the page on.
      ui.simulate.textContent = 'Scanned';
      setStatus('Simulated scan sent. Waiting for ' + a.provider.name + ' to confirm…');
    }
  }

  // ---------------------------------------------------------------- checkpoint answer

  function submitCode(event) {
    event.preventDefault();
    const a = attempt;
    if (!a || state !== 'checkpoint' || ui.twofaForm.getAttribute('aria-busy') === 'true') return;
    // Passwords are sent as typed (spaces can be part of one); short codes are trimmed.
    const code = a.secret ? ui.twofaCode.value : ui.twofaCode.value.trim();
    if (code === '') {
      ui.twofaCode.setAttribute('aria-invalid', 'true');
      ui.twofaCode.setAttribute('aria-describedby', 'twofa-invalid twofa-help');
      ui.twofaInvalid.hidden = false;
      ui.twofaCode.focus();
      return;
    }
    ui.twofaCode.removeAttribute('aria-invalid');
    ui.twofaCode.setAttribute('aria-describedby', 'twofa-help');
    ui.twofaInvalid.hidden = true;
    if (!a.ws || a.ws.readyState !== WebSocket.OPEN) return; // onclose shows the drop
    a.ws.send(JSON.stringify({ type: 'code', code: code }));
    // Read-only rather than disabled: the field keeps focus and its value while checking.
    ui.twofaCode.readOnly = true;
    ui.twofaSubmit.disabled = true;
    ui.twofaSubmit.textContent = 'Checking…';
    ui.twofaForm.setAttribute('aria-busy', 'true');
    setStatus('Checking…');
  }

  // ---------------------------------------------------------------- messages to the host

  /** See "Messages to the host" at the top of this file. */
  function notifyHost(message) {
    const targets = [];
    if (window.opener && !window.opener.closed) targets.push(window.opener);
    if (window.parent && window.parent !== window && !targets.includes(window.parent)) targets.push(window.parent);
    if (targets.length === 0) return;
    const data = Object.assign({ source: 'qrlink', version: 1 }, message);
    if (!hostOrigin) {
      if (data.account) {
        data.account = {
          id: data.account.id ?? null,
          provider: data.account.provider ?? null,
          name: data.account.name ?? null,
        };
      }
      delete data.state;
      delete data.result;
      delete data.detail;
      delete data.req_id;
    }
    for (const target of targets) {
      try {
        target.postMessage(data, hostOrigin || '*');
      } catch (err) {
        // A host that went away or cannot receive this is not the page's problem.
      }
    }
  }

  /**
   * The messages of embedded mode (`ready`, `qr`, `checkpoint`, `resumed`, `exited`,
   * `close`): only to the framing host named by `origin`, never to "*", and never to a
   * popup's opener (which has only ever been told the outcome). See "Messages to the host".
   */
  function tellHost(message) {
    if (embedded) notifyHost(message);
  }

  /**
   * Embedded mode: what the host (qrlink.js) says, accepted only from the frame's parent at
   * the origin named in the URL. See "Embedded mode" at the top of this file.
   */
  function onHostMessage(event) {
    if (event.source !== window.parent || event.origin !== hostOrigin) return;
    const m = event.data;
    if (!m || typeof m !== 'object' || m.source !== 'qrlink-host' || m.version !== 1) return;
    switch (m.type) {
      case 'start':
        if (embedStarted) return;
        embedStarted = true;
        if (typeof m.token === 'string' && m.token) token = m.token;
        noteMissingToken();
        route();
        break;
      case 'exit':
        // The host closes the modal: end the attempt (cancel), not detach it.
        stopAttempt();
        tellHost({ type: 'exited', provider: provider ? provider.id : null, session: lastSession });
        break;
      case 'focus':
        focusEdge(m.at === 'last');
        break;
      default:
        break;
    }
  }

  /** Says so under the picker when the gateway wants a connect token and none came. */
  function noteMissingToken() {
    if (!config.token_required || token) return;
    ui.pickerNote.hidden = false;
    ui.pickerNote.textContent = 'This page needs a personal link to work. If linking fails, ask for a new link.';
  }

  /** Focuses the first or last control on screen (the host's focus trap wraps into the frame). */
  function focusEdge(last) {
    const all = Array.from(document.querySelectorAll('a[href], button, input, summary, [tabindex="0"]'))
      .filter((el) => !el.disabled && el.closest('[hidden]') === null && el.getClientRects().length > 0);
    const target = last ? all[all.length - 1] : all[0];
    (target || ui.title).focus();
  }

  /** Accepts only a bare http(s) origin such as https://app.example.com. */
  function parseOrigin(value) {
    if (!value) return null;
    try {
      const url = new URL(value);
      if ((url.protocol === 'https:' || url.protocol === 'http:') && url.origin === value.replace(/\/$/, '')) {
        return url.origin;
      }
    } catch (err) {
      // fall through
    }
    return null;
  }

  // ---------------------------------------------------------------- config and navigation

  async function loadConfig() {
    try {
      const res = await fetch('config.json', { cache: 'no-store', credentials: 'same-origin' });
      if (!res.ok) throw new Error('HTTP ' + res.status);
      const c = await res.json();
      if (!c || !Array.isArray(c.providers) || c.providers.length === 0) throw new Error('no providers');
      if (c.protocol !== 1) console.warn('qrlink: gateway speaks protocol', c.protocol, '; this page speaks 1');
      const providers = c.providers
        .filter((p) => p && typeof p.id === 'string' && p.id)
        .map((p) => Object.assign({}, p, { name: nonEmpty(p.name) || (PROVIDERS[p.id] || {}).name || p.id }));
      return Object.assign({}, FALLBACK_CONFIG, c, { providers: providers });
    } catch (err) {
      console.warn('qrlink: config.json unavailable, using defaults:', err);
      return FALLBACK_CONFIG;
    }
  }

  function providerById(id) {
    return config.providers.find((p) => p.id === id) || null;
  }

  function buildPicker() {
    // The built-in buttons already match (the usual case): keep them, and the focus on them.
    const shown = Array.from(ui.providerList.querySelectorAll('button[data-provider]'), (b) => b.dataset.provider);
    if (shown.join() === config.providers.map((p) => p.id).join() &&
        config.providers.every((p) => p.name === (PROVIDERS[p.id] || {}).name)) return;
    ui.providerList.replaceChildren(...config.providers.map((p) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'provider-button';
      button.dataset.provider = p.id;
      const badge = document.createElement('span');
      badge.className = 'provider-badge';
      badge.setAttribute('aria-hidden', 'true');
      badge.append(iconSvg(PROVIDERS[p.id] ? 'icon-' + p.id : 'icon-link'));
      const name = document.createElement('span');
      name.className = 'provider-name';
      name.textContent = p.name;
      const chevron = document.createElement('span');
      chevron.className = 'chevron';
      chevron.setAttribute('aria-hidden', 'true');
      chevron.textContent = '›';
      button.append(badge, name, chevron);
      li.append(button);
      return li;
    }));
  }

  function iconSvg(symbol) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('width', '22');
    svg.setAttribute('height', '22');
    svg.setAttribute('focusable', 'false');
    const use = document.createElementNS(SVG_NS, 'use');
    use.setAttribute('href', '#' + symbol);
    svg.append(use);
    return svg;
  }

  /** The page's URL with `provider` set or removed; token and origin are kept. */
  function pageUrl(providerId) {
    const url = new URL(window.location.href);
    if (providerId) {
      url.searchParams.set('provider', providerId);
    } else {
      url.searchParams.delete('provider');
    }
    return url.pathname + url.search;
  }

  /** Starts from the URL: `?provider=` links at once, otherwise the picker. */
  function route() {
    const id = new URLSearchParams(window.location.search).get('provider');
    if (!id) {
      enterIdle();
      return;
    }
    const p = providerById(id);
    if (!p) {
      enterIdle('“' + id + '” cannot be linked here. Choose one of these apps.');
      return;
    }
    start(p);
  }

  function choose(id) {
    const p = providerById(id);
    if (!p) return;
    // A history entry per choice, so the Back button returns to the picker.
    // Embedded, the frame's entries would be the host's Back button: replaced instead.
    window.history[embedded ? 'replaceState' : 'pushState']({ provider: id }, '', pageUrl(id));
    start(p);
  }

  function backToPicker() {
    stopAttempt();
    if (new URLSearchParams(window.location.search).has('provider')) {
      window.history[embedded ? 'replaceState' : 'pushState']({}, '', pageUrl(null));
    }
    enterIdle();
    ui.providerList.querySelector('button')?.focus();
  }

  function nonEmpty(value) {
    return typeof value === 'string' && value.trim() !== '' ? value : null;
  }

  async function init() {
    ui.chooseAnother.href = pageUrl(null);
    // The picker's built-in buttons work at once: a click before config.json has arrived is
    // acted on when it has (after the page has set itself up with it).
    const configured = loadConfig().then((c) => {
      config = c;
    });
    ui.providerList.addEventListener('click', (event) => {
      const button = event.target.closest('button[data-provider]');
      if (button) configured.then(() => choose(button.dataset.provider));
    });
    await configured;
    ui.banner.hidden = !config.demo;
    buildPicker();
    if (embedded) {
      // The host's modal has its own Close; after success it closes, so "Link another" would
      // never be seen; the dashboard is the operator's, not for a framed page.
      document.documentElement.classList.add('is-embedded');
      ui.linkAnother.hidden = true;
      ui.banner.querySelector('a')?.remove();
    }
    // Embedded, the token comes with the host's `start`: said then.
    if (!embedded) noteMissingToken();

    ui.retry.addEventListener('click', () => {
      if (provider) start(provider);
    });
    ui.continueHere.addEventListener('click', () => {
      const e = elsewhere;
      if (!e) return;
      // Takes the attempt back: the other tab or window gets close 4000 in turn.
      // Back to the view it left (a password step must not come back through a QR box).
      resumeAttempt(e.provider, { token: e.token, session: e.session, phase: e.phase }, Date.now(), graceMs());
    });
    ui.linkAnother.addEventListener('click', backToPicker);
    ui.chooseAnother.addEventListener('click', (event) => {
      event.preventDefault();
      backToPicker();
    });
    ui.simulate.addEventListener('click', simulateScan);
    ui.twofaForm.addEventListener('submit', submitCode);
    ui.twofaCode.addEventListener('input', () => {
      if (!ui.twofaInvalid.hidden && ui.twofaCode.value !== '') {
        ui.twofaInvalid.hidden = true;
        ui.twofaCode.removeAttribute('aria-invalid');
      }
    });
    window.addEventListener('popstate', route);
    // The code's box changes with the viewport, the orientation and the zoom: snap again each
    // time its size changes (a ResizeObserver runs before paint, unlike a debounced resize).
    const resnap = () => {
      const layer = ui.qr.querySelector('.qr-layer:not(.is-leaving)');
      if (layer) snapQr(layer);
    };
    if ('ResizeObserver' in window) new ResizeObserver(resnap).observe(ui.qr);
    else window.addEventListener('resize', resnap);
    // Leaving the page detaches a resumable attempt (a reload finds it again) and ends any
    // other at once; either way the gateway aborts the upstream poll.
    // Embedded, the page goes away when the host closes or destroys the modal: that ends the
    // attempt (cancel), since nothing would come back to resume it.
    window.addEventListener('pagehide', embedded ? stopAttempt : detachForUnload);
    // Back from the back/forward cache: the socket was closed on the way out, so the attempt
    // is resumed within the grace, and otherwise starts again with a fresh code.
    window.addEventListener('pageshow', (event) => {
      if (!event.persisted) return;
      if (resumeFromStorage()) return;
      if (provider && ['connecting', 'qr', 'checkpoint', 'reconnecting'].includes(state)) start(provider);
    });
    // While reconnecting, a network or a page (a phone's browser coming back to the front)
    // that returns is tried at once rather than at the next step of the backoff.
    window.addEventListener('online', retryResumeNow);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') retryResumeNow();
    });

    if (embedded) {
      window.addEventListener('message', onHostMessage);
      // Esc closes the host's modal wherever the focus is, inside the frame too.
      document.addEventListener('keydown', (event) => {
        if (event.key === 'Escape' && !event.defaultPrevented) {
          event.preventDefault();
          tellHost({ type: 'close', provider: provider ? provider.id : null, session: lastSession });
        }
      });
      // Nothing starts before the host's `start` (it brings the connect token), and a
      // reload does not resume: the host's modal is a fresh start each time.
      tellHost({ type: 'ready', provider: fixedProvider, session: null, demo: config.demo === true, token_required: config.token_required === true });
    } else if (!resumeFromStorage()) {
      route();
    }
    ui.app.dataset.ready = 'true';
  }

  init();
})();
