//! Unit tests of the intent state machine, driven with explicit instants (no waiting).

use std::time::Duration;

use super::*;

const TTL: Duration = Duration::from_secs(60);

fn intent(provider: ProviderSim, twofa: Option<&str>) -> (Intent, Minter) {
    let minter = Minter::new(None);
    let intent = Intent::new(
        "acc_test".to_owned(),
        provider,
        None,
        twofa.map(str::to_owned),
        &minter,
    );
    (intent, minter)
}

fn whatsapp(count: u32) -> ProviderSim {
    ProviderSim::new("whatsapp", TTL, count)
}

fn telegram() -> ProviderSim {
    let mut provider = ProviderSim::new("telegram", TTL, 5);
    provider.twofa_password = Some("demo".to_owned());
    provider
}

fn answer(step: Step) -> Reply {
    match step {
        Step::Answer(reply) => reply,
        Step::WaitUntil(at) => panic!("expected an answer, got a wait until {at:?}"),
    }
}

#[test]
fn a_poll_before_expiry_waits_until_the_qr_expires() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    let (step, changed) = intent.poll(t0, t0, 1, "", &minter);
    assert!(
        matches!(step, Step::WaitUntil(at) if at == t0 + TTL),
        "got {step:?}"
    );
    assert!(!changed);
}

#[test]
fn an_expired_qr_is_replaced_by_a_fresh_one() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    let (step, changed) = intent.poll(t0 + TTL, t0, 1, "", &minter);
    let reply = answer(step);
    assert!(changed);
    assert_eq!(reply.label, "AuthenticationQrCode");
    assert_eq!(intent.qrs.len(), 2);
    assert_ne!(intent.qrs[0].qr, intent.qrs[1].qr);
    assert!(reply.body.contains(&intent.qrs[1].qr));
}

#[test]
fn a_poll_that_waited_while_another_rotated_gets_the_new_qr() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    let _ = intent.poll(t0 + TTL, t0, 1, "", &minter);
    let (step, _) = intent.poll(t0 + TTL, t0, 1, "", &minter);
    assert_eq!(intent.qrs.len(), 2, "the second poll must not rotate again");
    assert!(answer(step).body.contains(&intent.qrs[1].qr));
}

#[test]
fn the_last_qr_expiring_times_the_intent_out_then_later_polls_get_404() {
    let (mut intent, minter) = intent(whatsapp(1), None);
    let t0 = intent.qrs[0].issued_at;
    let (step, _) = intent.poll(t0 + TTL, t0, 1, "", &minter);
    let reply = answer(step);
    assert_eq!(reply.status.as_u16(), 504);
    assert_eq!(reply.label, "Error:provider/timeout");
    let later = t0 + TTL * 2;
    let (step, _) = intent.poll(later, later, 1, "", &minter);
    assert_eq!(answer(step).status.as_u16(), 404);
}

#[test]
fn a_scan_links_the_account_on_the_next_poll() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    intent.scan(t0, None, &minter).expect("scan");
    let (step, changed) = intent.poll(t0, t0, 1, "", &minter);
    let reply = answer(step);
    assert!(changed);
    assert_eq!(reply.label, "Account");
    assert!(reply.body.contains("acc_test"));
}

#[test]
fn a_relinked_account_keeps_its_id() {
    let minter = Minter::new(None);
    let mut intent = Intent::new(
        "acc_new".to_owned(),
        whatsapp(5),
        Some("acc_old".to_owned()),
        None,
        &minter,
    );
    let t0 = intent.qrs[0].issued_at;
    intent.scan(t0, None, &minter).expect("scan");
    let body: Value =
        serde_json::from_str(&answer(intent.poll(t0, t0, 1, "", &minter).0).body).expect("json");
    assert_eq!(body["id"], "acc_old");
}

#[test]
fn scanning_an_expired_or_stale_qr_fails() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    assert_eq!(
        intent.scan(t0 + TTL, None, &minter),
        Err(ScanError::Expired)
    );
    assert_eq!(
        intent.scan(t0, Some("stale"), &minter),
        Err(ScanError::Expired)
    );
    let code = intent.qrs[0].code.clone();
    assert_eq!(intent.scan(t0, Some(&code), &minter), Ok(()));
    assert_eq!(
        intent.scan(t0, None, &minter),
        Err(ScanError::NotWaitingForScan)
    );
}

#[test]
fn telegram_with_2fa_asks_for_the_password_and_checks_it() {
    let (mut intent, minter) = intent(telegram(), None);
    let t0 = intent.qrs[0].issued_at;
    intent.scan(t0, None, &minter).expect("scan");
    let (step, _) = intent.poll(t0, t0, 1, "", &minter);
    let reply = answer(step);
    assert_eq!(reply.label, "AuthenticationCheckpoint");
    assert!(reply.body.contains(r#""type":"2FA""#), "got {}", reply.body);
    let (step, _) = intent.poll(t0, t0, 1, "wrong", &minter);
    assert_eq!(answer(step).label, "Error:provider/invalid_checkpoint_code");
    let (step, _) = intent.poll(t0, t0, 1, "demo", &minter);
    assert_eq!(answer(step).label, "Account");
}

#[test]
fn telegram_with_the_right_twofa_in_the_intent_links_at_once() {
    let (mut intent, minter) = intent(telegram(), Some("demo"));
    let t0 = intent.qrs[0].issued_at;
    intent.scan(t0, None, &minter).expect("scan");
    assert_eq!(
        answer(intent.poll(t0, t0, 1, "", &minter).0).label,
        "Account"
    );
}

#[test]
fn a_code_while_waiting_for_a_scan_is_invalid() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    let reply = answer(intent.poll(t0, t0, 1, "1234", &minter).0);
    assert_eq!(reply.status.as_u16(), 400);
}

#[test]
fn a_timed_out_intent_reports_expired_to_scans() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    intent.time_out(t0);
    assert_eq!(intent.phase_name(), "timed_out");
    assert_eq!(intent.scan(t0, None, &minter), Err(ScanError::Expired));
}
