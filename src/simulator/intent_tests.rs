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
        Step::Answer(reply) | Step::Final(reply) => reply,
        Step::WaitUntil(at) => panic!("expected an answer, got a wait until {at:?}"),
    }
}

/// The reply of a step that must be the intent's final answer.
fn final_answer(step: Step) -> Reply {
    match step {
        Step::Final(reply) => reply,
        other => panic!("expected the final answer, got {other:?}"),
    }
}

/// A poll that starts at `at` (a re-poll, or one that was waiting since `at`).
fn poll_at(intent: &mut Intent, minter: &Minter, at: Instant, code: &str) -> Step {
    let start_qr = intent.qrs.len();
    intent.poll(at, at, start_qr, code, minter).0
}

/// A poll that started at `t0` and was abandoned: the caller hung up while it waited.
fn abandoned_poll(intent: &mut Intent, minter: &Minter, t0: Instant) {
    let step = poll_at(intent, minter, t0, "");
    assert!(matches!(step, Step::WaitUntil(_)), "got {step:?}");
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
    // The HTTP layer reports that the timeout reached a caller that did not hang up.
    intent.delivered();
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
    // The fault's own answer told its caller, so the timeout is not handed out again.
    let reply = answer(poll_at(&mut intent, &minter, t0 + TTL, ""));
    assert_eq!(reply.label, "Error:api/resource_not_found");
}

// Polling again after a poll was abandoned (UNIPILE.md): one test per rule of the simulator's
// guess. Each starts with a poll that waited and was abandoned, then polls again later.

#[test]
fn rule_1_an_unwatched_intent_times_out_when_its_last_qr_would_have_expired() {
    let (mut intent, minter) = intent(whatsapp(3), None);
    let t0 = intent.qrs[0].issued_at;
    abandoned_poll(&mut intent, &minter, t0);
    let reply = final_answer(poll_at(&mut intent, &minter, t0 + TTL * 3, ""));
    assert_eq!(reply.label, "Error:provider/timeout");
    assert_eq!(reply.status.as_u16(), 504);
    assert_eq!(intent.qrs.len(), 3, "the provider issued its QRs unwatched");
}

#[test]
fn rule_1_an_unwatched_intent_stays_alive_until_then_and_rotates_on_its_own_clock() {
    let (mut intent, minter) = intent(whatsapp(3), None);
    let t0 = intent.qrs[0].issued_at;
    abandoned_poll(&mut intent, &minter, t0);
    let just_before_the_end = t0 + TTL * 3 - Duration::from_millis(1);
    let reply = answer(poll_at(&mut intent, &minter, just_before_the_end, ""));
    assert_eq!(reply.label, "AuthenticationQrCode");
    assert_eq!(intent.qrs.len(), 3);
    assert!(reply.body.contains(&intent.qrs[2].qr));
    // The QR that is current in real time, with the lifetime it has left in real time.
    assert_eq!(intent.qrs[1].issued_at, t0 + TTL);
    assert_eq!(intent.qrs[2].issued_at, t0 + TTL * 2);
    assert_eq!(intent.current_expiry(), Some(t0 + TTL * 3));
    let reply = answer(poll_at(&mut intent, &minter, t0 + TTL * 3, ""));
    assert_eq!(reply.label, "Error:provider/timeout");
}

#[test]
fn rule_2_a_repoll_after_the_shown_qr_expired_answers_a_new_qr_at_once() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    abandoned_poll(&mut intent, &minter, t0);
    let back = t0 + TTL + TTL / 2;
    let (step, changed) = intent.poll(back, back, 1, "", &minter);
    let reply = answer(step);
    assert!(changed, "waiting polls must see the rotation");
    assert_eq!(reply.label, "AuthenticationQrCode");
    assert_eq!(intent.qrs.len(), 2, "one rotation");
    assert_ne!(intent.qrs[0].qr, intent.qrs[1].qr);
    assert!(reply.body.contains(&intent.qrs[1].qr));
    // It came up when the shown one expired, not when the caller came back.
    assert_eq!(intent.current_expiry(), Some(t0 + TTL * 2));
}

#[test]
fn rule_2_a_poll_that_waited_through_the_expiry_rotates_when_it_wakes() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    let woke = t0 + TTL + Duration::from_millis(5);
    let reply = answer(intent.poll(woke, t0, 1, "", &minter).0);
    assert!(reply.body.contains(&intent.qrs[1].qr));
    assert_eq!(intent.qrs[1].issued_at, woke, "a watched rotation is live");
}

#[test]
fn rule_2_no_new_qr_once_the_intent_ran_out_of_qrs_in_real_time() {
    let (mut intent, minter) = intent(whatsapp(2), None);
    let t0 = intent.qrs[0].issued_at;
    abandoned_poll(&mut intent, &minter, t0);
    let reply = final_answer(poll_at(&mut intent, &minter, t0 + TTL * 2, ""));
    assert_eq!(reply.label, "Error:provider/timeout");
}

#[test]
fn rule_3_a_scan_while_nobody_polled_is_answered_at_once_by_the_next_poll() {
    let (mut intent, minter) = intent(whatsapp(2), None);
    let t0 = intent.qrs[0].issued_at;
    abandoned_poll(&mut intent, &minter, t0);
    intent.scan(t0 + TTL / 2, None, &minter).expect("scan");
    // Long after the QRs would have run out: a scanned intent no longer depends on them.
    let reply = final_answer(poll_at(&mut intent, &minter, t0 + TTL * 10, ""));
    assert_eq!(reply.label, "Account");
    assert!(reply.body.contains("acc_test"));
}

#[test]
fn rule_3_a_scan_needing_2fa_while_nobody_polled_answers_the_checkpoint_at_once() {
    let (mut intent, minter) = intent(telegram(), None);
    let t0 = intent.qrs[0].issued_at;
    abandoned_poll(&mut intent, &minter, t0);
    intent.scan(t0 + TTL / 2, None, &minter).expect("scan");
    let step = poll_at(&mut intent, &minter, t0 + TTL * 10, "");
    assert!(matches!(step, Step::Answer(_)), "not final: {step:?}");
    let reply = answer(step);
    assert_eq!(reply.label, "AuthenticationCheckpoint");
    assert!(reply.body.contains(r#""type":"2FA""#), "got {}", reply.body);
}

#[test]
fn rule_4_an_account_nobody_received_goes_to_the_next_poll_then_404() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    intent.scan(t0, None, &minter).expect("scan");
    let first = final_answer(poll_at(&mut intent, &minter, t0, ""));
    // Its caller hung up: `delivered` is never called.
    let later = t0 + TTL * 2;
    let again = final_answer(poll_at(&mut intent, &minter, later, ""));
    assert_eq!(again.label, "Account");
    assert_eq!(again.body, first.body, "the same Account, not a new one");
    intent.delivered();
    let reply = answer(poll_at(&mut intent, &minter, later, ""));
    assert_eq!(reply.status.as_u16(), 404);
    assert_eq!(reply.label, "Error:api/resource_not_found");
}

#[test]
fn rule_4_a_timeout_nobody_received_goes_to_the_next_poll_then_404() {
    let (mut intent, minter) = intent(whatsapp(1), None);
    let t0 = intent.qrs[0].issued_at;
    let reply = final_answer(intent.poll(t0 + TTL, t0, 1, "", &minter).0);
    assert_eq!(reply.label, "Error:provider/timeout");
    let later = t0 + TTL * 5;
    let reply = final_answer(poll_at(&mut intent, &minter, later, ""));
    assert_eq!(reply.label, "Error:provider/timeout");
    intent.delivered();
    let reply = answer(poll_at(&mut intent, &minter, later, ""));
    assert_eq!(reply.label, "Error:api/resource_not_found");
}

#[test]
fn rule_4_a_2fa_solve_whose_caller_hung_up_leaves_the_account_to_the_next_empty_poll() {
    let (mut intent, minter) = intent(telegram(), None);
    let t0 = intent.qrs[0].issued_at;
    intent.scan(t0, None, &minter).expect("scan");
    assert_eq!(
        answer(poll_at(&mut intent, &minter, t0, "")).label,
        "AuthenticationCheckpoint"
    );
    let solved = final_answer(poll_at(&mut intent, &minter, t0, "demo"));
    assert_eq!(solved.label, "Account");
    let later = t0 + TTL;
    let reply = final_answer(poll_at(&mut intent, &minter, later, ""));
    assert_eq!(reply.label, "Account");
    intent.delivered();
    let reply = answer(poll_at(&mut intent, &minter, later, ""));
    assert_eq!(reply.label, "Error:api/resource_not_found");
}

#[test]
fn rule_4_polls_that_waited_since_before_the_end_still_get_a_delivered_answer() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    intent.scan(t0, None, &minter).expect("scan");
    let end = t0 + Duration::from_millis(10);
    final_answer(poll_at(&mut intent, &minter, end, ""));
    intent.delivered();
    let waited_since_t0 = final_answer(intent.poll(end, t0, 1, "", &minter).0);
    assert_eq!(waited_since_t0.label, "Account");
}

#[test]
fn rule_5_a_repoll_before_the_shown_qr_expired_waits_as_usual() {
    let (mut intent, minter) = intent(whatsapp(5), None);
    let t0 = intent.qrs[0].issued_at;
    abandoned_poll(&mut intent, &minter, t0);
    let step = poll_at(&mut intent, &minter, t0 + TTL / 2, "");
    assert!(
        matches!(step, Step::WaitUntil(at) if at == t0 + TTL),
        "got {step:?}"
    );
    assert_eq!(intent.qrs.len(), 1);
}
