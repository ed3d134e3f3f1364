//! Property tests of resume tokens: whatever a client sends as `?resume=`, only the exact token
//! of a live session resumes it, and a refusal leaves the session waiting as it was.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::parse_resume_token;
use crate::link::protocol::{QrFrame, ServerFrame};
use crate::link::{Cursor, LinkRequest, QrFormats, Resume};
use crate::store::{Phase, ResumeRefused, Store, StoreConfig};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_string_parses_to_its_own_two_halves_or_to_nothing(s in any::<String>()) {
        if let Some((id, secret)) = parse_resume_token(&s) {
            prop_assert_eq!(format!("{id}.{secret}"), s.clone());
            prop_assert!(id.starts_with("ses_") && !id.contains('.') && !secret.is_empty(), "{s:?}");
        }
    }

    #[test]
    fn a_token_of_the_gateways_shape_parses_to_its_id_and_secret(
        id in "ses_[A-Za-z0-9]{0,30}",
        secret in "[A-Za-z0-9]{1,40}",
    ) {
        let token = format!("{id}.{secret}");
        prop_assert_eq!(parse_resume_token(&token), Some((id.as_str(), secret.as_str())));
    }
}

/// Tokens near `token`, and far from it.
fn not_quite(token: String) -> impl Strategy<Value = String> {
    let (id, secret) = token
        .split_once('.')
        .map(|(i, s)| (i.to_owned(), s.to_owned()))
        .unwrap();
    let len = token.len();
    prop_oneof![
        any::<String>(),
        "ses_[A-Za-z0-9]{20}\\.[A-Za-z0-9]{24}",
        "[A-Za-z0-9]{24}".prop_map({
            let id = id.clone();
            move |s| format!("{id}.{s}")
        }),
        "ses_[A-Za-z0-9]{20}".prop_map({
            let secret = secret.clone();
            move |i| format!("{i}.{secret}")
        }),
        (0..len, any::<char>()).prop_map({
            let t = token.clone();
            move |(i, c)| {
                let mut chars: Vec<char> = t.chars().collect();
                chars[i] = c;
                chars.into_iter().collect()
            }
        }),
        (0..len).prop_map({
            let t = token.clone();
            move |n| t[..n].to_owned()
        }),
        "[ -~]{1,8}".prop_map({
            let t = token.clone();
            move |tail| format!("{t}{tail}")
        }),
        Just(token.to_uppercase()),
        Just(format!("{secret}.{id}")),
        Just(format!(" {token}")),
        Just(format!("{id}..{secret}")),
    ]
}

#[test]
fn only_the_exact_token_resumes_a_live_session_and_refusals_leave_it_waiting() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let store = Store::memory(
        StoreConfig {
            resume_grace: Duration::from_secs(600),
            max_sessions: 10,
            max_sessions_per_ip: 10,
            sessions_per_ip_per_minute: 10,
            notifier: crate::notify::Notifier::disabled(),
        },
        TaskTracker::new(),
        CancellationToken::new(),
    );
    let attachment = store.open(
        "127.0.0.1:1".parse().unwrap(),
        LinkRequest {
            provider: "whatsapp".into(),
            account_id: None,
            state: None,
            proxy: None,
            formats: QrFormats::default(),
            qr_ttl: Duration::from_secs(60),
        },
    );
    let token = attachment
        .record(ServerFrame::Qr(QrFrame {
            rotation: 1,
            intent_id: "acc_1".into(),
            expires_at: "2026-11-28T10:00:00.000Z".into(),
            svg: None,
            text: None,
            raw: Some("2@payload".into()),
        }))
        .resume
        .expect("a resume token while resume is on");
    attachment.detach(Cursor {
        rotation: 1,
        next: Resume::Poll {
            intent_id: "acc_1".into(),
            shown: None,
        },
    });

    let mut runner = TestRunner::new(Config::with_cases(512));
    runner
        .run(&not_quite(token.clone()), |bad| {
            prop_assume!(bad != token);
            let refused = rt.block_on(store.resume(&bad, "whatsapp", None));
            prop_assert!(
                matches!(refused, Err(ResumeRefused::Expired)),
                "{bad:?} was not refused as expired: {:?}",
                refused.map(|r| r.replay)
            );
            prop_assert_eq!(store.snapshot()[0].phase, Phase::Detached);
            Ok(())
        })
        .unwrap();

    let resumed = rt
        .block_on(store.resume(&token, "whatsapp", None))
        .expect("the exact token resumes");
    resumed.attachment.end();
}
