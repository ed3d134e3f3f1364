//! The rendered QR codes scan: each SVG is rasterized with resvg and each text rendering is
//! turned back into pixels, then decoded with rqrr, and must give back the exact payload.

#[path = "../../src/qr/sample.rs"]
mod sample;

use crate::common::scan::{scan_svg, scan_text};
use qrlink::qr::{self, QUIET_ZONE, QrError};
use sample::base64_noise;

/// A WhatsApp-like payload: `2@`, a reference, then three comma-separated base64 keys, 225
/// characters in all.
fn whatsapp_like() -> String {
    let mut payload = String::from("2@");
    payload.push_str(&base64_noise(0x2545_f491_4f6c_dd1d, 88));
    for seed in [1, 2, 3] {
        payload.push(',');
        payload.push_str(&base64_noise(seed, 44));
    }
    payload.truncate(225);
    assert_eq!(payload.len(), 225);
    payload
}

fn telegram() -> String {
    format!(
        "tg://login?token={}",
        base64_noise(7, 43).replace(['+', '/'], "_")
    )
}

fn google_messages() -> String {
    format!(
        "https://support.google.com/messages/?p=web_computer#?c={}",
        base64_noise(11, 140)
    )
}

fn demo() -> String {
    "http://127.0.0.1:3000/simulator/scan/acc_7Hq2mZ9xKp4Lw1Ns?c=Yb3dQ8vRt6Jk0PfWs5Xe".to_owned()
}

/// Decodes the single QR code in a greyscale image.
fn assert_svg_round_trips(payload: &str) {
    let svg = qr::render_svg(payload).expect("the payload is encodable");
    assert_eq!(scan_svg(&svg), payload, "the SVG decoded to something else");
}

fn assert_text_round_trips(payload: &str) {
    let text = qr::render_text(payload).expect("the payload is encodable");
    assert_eq!(
        scan_text(&text),
        payload,
        "the text decoded to something else"
    );
}

#[test]
fn a_whatsapp_svg_scans_back_to_its_225_characters() {
    assert_svg_round_trips(&whatsapp_like());
}

#[test]
fn a_telegram_login_svg_scans_back_to_its_url() {
    assert_svg_round_trips(&telegram());
}

#[test]
fn a_google_messages_svg_scans_back_to_its_url() {
    assert_svg_round_trips(&google_messages());
}

#[test]
fn a_demo_simulator_svg_scans_back_to_its_url() {
    assert_svg_round_trips(&demo());
}

#[test]
fn short_and_long_payloads_scan_back_from_svg() {
    for payload in ["x".to_owned(), "HELLO 123".to_owned(), base64_noise(5, 600)] {
        assert_svg_round_trips(&payload);
    }
}

#[test]
fn a_whatsapp_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&whatsapp_like());
}

#[test]
fn a_telegram_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&telegram());
}

#[test]
fn a_google_messages_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&google_messages());
}

#[test]
fn a_demo_simulator_text_rendering_scans_back_on_a_dark_terminal() {
    assert_text_round_trips(&demo());
}

#[test]
fn the_svg_and_text_renderings_show_the_same_modules() {
    let matrix = qr::encode(&whatsapp_like()).expect("encodable");
    let text = matrix.to_text();
    let size = matrix.width() + 2 * QUIET_ZONE;
    for (line_index, line) in text.lines().enumerate() {
        for (x, c) in line.chars().enumerate() {
            for (half, y) in [(0, 2 * line_index), (1, 2 * line_index + 1)] {
                if y >= size {
                    continue;
                }
                let light_shown = matches!((c, half), ('█', _) | ('▀', 0) | ('▄', 1));
                let dark = matrix.is_dark(x.wrapping_sub(QUIET_ZONE), y.wrapping_sub(QUIET_ZONE));
                assert_eq!(light_shown, !dark, "module ({x}, {y})");
            }
        }
    }
}

#[test]
fn a_payload_too_long_for_any_qr_code_is_an_error_not_a_panic() {
    let payload = "y".repeat(5000);
    let svg = qr::render_svg(&payload);
    assert!(
        matches!(svg, Err(QrError::TooLong)),
        "expected TooLong, got {svg:?}"
    );
    let text = qr::render_text(&payload);
    assert!(
        matches!(text, Err(QrError::TooLong)),
        "expected TooLong, got {text:?}"
    );
    assert!(qr::encode(&payload).is_err());
}
